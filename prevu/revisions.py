"""
What a commit id looks like: one pattern for every part of prevu that checks a SHA.

Pure: the standard library only. Git names commits by 40 hex digits (SHA-1) or
64 (SHA-256 repositories); prevu accepts both, lower case, as forges send them.
"""

from __future__ import annotations

import re

SHA_PATTERN = r"^[0-9a-f]{40}([0-9a-f]{24})?$"
"""A full commit id: 40 (SHA-1) or 64 (SHA-256) lower-case hex digits."""

SHA_RE = re.compile(SHA_PATTERN)


def is_sha(value: str) -> bool:
    """True when `value` is a full commit id (see SHA_PATTERN)."""
    return SHA_RE.match(value) is not None
