"""
Pull request feedback (issue 9) and `/preview` commands (issue 16): the
sticky comment, the commit status and the deployment (environment) of each
preview, on GitHub and GitLab, and the commands maintainers write there.

Pure: `view` (the visible-state rule and the status/deployment mappings),
`comment` (the comment's Markdown and marker). I/O: `memory` (what was
wanted and published, in state_dir), `publisher` (converges, one per forge),
`commands` (runs `/preview` commands: permission, verb, acknowledgement),
`wiring`.
"""
