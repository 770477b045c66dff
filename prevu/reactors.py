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

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol


class ReactorTime(Protocol):
    """The clock of `IReactorTime`: `seconds()` is the current time in seconds (float)."""

    def seconds(self) -> float: ...


class DelayedCall(Protocol):
    """What `callLater` returns (`IDelayedCall`), as far as prevu uses it."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class ReactorTimers(ReactorTime, Protocol):
    """`IReactorTime`: the clock and `callLater(delay_seconds, function, *args)`."""

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> DelayedCall: ...


class ReactorProcess(Protocol):
    """`IReactorProcess`: start a child process attached to a `ProcessProtocol`."""

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> object: ...


class ReactorFromThreads(Protocol):
    """`IReactorFromThreads`: hand a result back to the reactor thread."""

    def callFromThread(self, callable: Callable[..., object], *args: object, **kw: object) -> None:
        ...


class GitReactor(ReactorTimers, ReactorProcess, ReactorFromThreads, Protocol):
    """What the git adapter needs: timers for deadlines, processes, and thread hand-back."""
