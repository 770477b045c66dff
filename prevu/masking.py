"""
Secret masking of log lines: every secret value prevu holds is replaced by
`***` before a line is stored or shown (PR comments, the API, the dashboard).

Exact-value masking, best-effort by design: a value that appears encoded
(base64, URL-quoted, JSON-escaped), split across lines or transformed in any
way is NOT caught. Values shorter than `MIN_LENGTH` characters are ignored,
since masking every "1" or "ab" in a log would destroy it and such values are
not secrets worth the name. Multi-line values (a PEM key) are masked line by
line as well, so that a key printed line by line is still hidden.

Pure: standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

MASK = "***"
MIN_LENGTH = 6
"""Shorter values are not masked (see the module docstring)."""

Masker = Callable[[str], str]


def _values(secrets: Iterable[str | None]) -> list[str]:
    found: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        for value in (secret, secret.strip(), *secret.splitlines()):
            value = value.strip()
            if len(value) >= MIN_LENGTH:
                found.add(value)
    # Longest first, so that a secret containing another is masked whole.
    return sorted(found, key=lambda value: (-len(value), value))


def masker(secrets: Iterable[str | None]) -> Masker:
    """
    A function that masks every value of `secrets` (None and short values are
    skipped) in a line; the identity when there is nothing to mask.
    """
    values = _values(secrets)
    if not values:
        return lambda line: line
    pattern = re.compile("|".join(re.escape(value) for value in values))
    return lambda line: pattern.sub(MASK, line)


def mask(line: str, secrets: Iterable[str | None]) -> str:
    """`line` with every value of `secrets` replaced by `***` (see `masker`)."""
    return masker(secrets)(line)
