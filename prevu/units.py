"""Parsing of the human units used in config files: durations and sizes."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(text: str | int | float) -> float:
    """
    Seconds in a duration such as ``90s``, ``30m``, ``12h``, ``7d`` or ``0``.

    A bare number means seconds. Raises ValueError with a readable reason.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like '90s', '30m', '12h' or '7d', got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return float(text)
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"expected a duration like '90s', '30m', '12h' or '7d', got {text!r}")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit or "s"]


def parse_size(text: str | int) -> int:
    """
    Bytes in a size such as ``512m``, ``2g``, ``64k`` or a bare byte count.

    Units are binary (``1k`` = 1024). Raises ValueError with a readable reason.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a size like '512m' or '2g', got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"expected a size like '512m' or '2g', got {text!r}")
    number, unit, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for messages and docs."""
    for unit in ("w", "d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
