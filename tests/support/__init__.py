"""Reusable test helpers (git repositories, a git HTTP server, Docker fixtures, timeouts)."""
