"""
The reactor capabilities prevu's functions ask for, named (as treq's `_types.py` does).

Twisted describes its reactor with zope interfaces (`IReactorTime`,
`IReactorTCP`, ...), which mypy cannot check without a plugin; these small
`typing.Protocol`s name the part of each interface a function calls, so that a
signature says which capability it needs and both the real reactor and
Twisted's test doubles (`Clock`, `MemoryReactorClock`) satisfy it. Pure:
nothing is imported from Twisted.
"""

from __future__ import annotations

from typing import Protocol


class ReactorTime(Protocol):
    """The clock of `IReactorTime`: `seconds()` is the current time in seconds (float)."""

    def seconds(self) -> float: ...
