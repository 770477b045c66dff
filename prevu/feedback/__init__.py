"""
Pull request feedback (issue 9): the sticky comment, the commit status and
the deployment of each preview, on GitHub.

Pure: `view` (the visible-state rule and the status/deployment mappings),
`comment` (the comment's Markdown and marker). I/O: `memory` (what was
wanted and published, in state_dir), `publisher` (converges), `wiring`.
"""
