"""
The forges (GitHub, GitLab): webhook verification, parsing and policy.

Pure core: `events` (typed events), `github` and `gitlab` (verification and
parsing), `policy` (what an event asks of prevu under `[[repos]]`).
"""
