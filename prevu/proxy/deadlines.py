"""
How long each kind of wait on a client connection may last: one table.

A client connection is always waiting for something: the next request
("idle"), the rest of a request head ("head"), the upstream's response
("response"), the next piece of a response body ("body"), either side of an
upgraded connection ("tunnel"), or, after its last answer, the client
closing its side ("closing"). Each kind is a `DeadlineKind`; `LIMITS` says
which timeout setting bounds it, and `Timeouts.from_config` reads those
settings from `[server.timeouts]`.

Adding a kind is a change here and, when it needs its own setting, in the
config (see docs/proxy.md): the `Literal`, its row in `LIMITS` and, for a new
setting, a `Timeouts` field read in `from_config`. A kind without a row is
refused when the proxy starts (`limits` raises), and mypy refuses a kind
that is not in the `Literal` wherever a deadline is set.

Pure: no clock is read here (the proxy's sweep adds up quiet time, see
`prevu.proxy.server`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Literal, Protocol, get_args

from attrs import frozen

DeadlineKind = Literal["idle", "head", "response", "body", "tunnel", "closing"]
KINDS: Final[tuple[DeadlineKind, ...]] = get_args(DeadlineKind)

# A request head that takes longer than this is an attack (slowloris), not a
# slow client, whatever the idle timeout says.
HEAD_CAP: Final = 30.0
# An idle pooled upstream connection is closed after at most this long: apps
# commonly close their own keep-alive connections after 60-75 s.
POOL_IDLE_CAP: Final = 60.0


class TimeoutConfig(Protocol):
    """`[server.timeouts]` as `prevu.config` parses it (seconds)."""

    @property
    def connect(self) -> float: ...

    @property
    def response(self) -> float: ...

    @property
    def idle(self) -> float: ...


@frozen
class Timeouts:
    """The proxy's timeout settings, in seconds."""

    connect: float = 5.0
    response: float = 60.0
    idle: float = 120.0
    head: float = HEAD_CAP

    @classmethod
    def from_config(cls, timeouts: TimeoutConfig) -> Timeouts:
        """The settings from `[server.timeouts]`; `head` is the idle timeout, capped."""
        return cls(
            connect=timeouts.connect,
            response=timeouts.response,
            idle=timeouts.idle,
            head=min(HEAD_CAP, timeouts.idle),
        )

    @property
    def pool_idle(self) -> float:
        """How long an idle upstream connection stays in the pool."""
        return min(POOL_IDLE_CAP, self.idle)


# The table: which setting bounds each kind of wait. A deadline restarts at
# every sign of progress (a byte of body, a parsed header), so each limit is
# the longest *quiet* time allowed, not a total.
LIMITS: Final[Mapping[DeadlineKind, Callable[[Timeouts], float]]] = {
    # between two requests on a keep-alive connection
    "idle": lambda timeouts: timeouts.idle,
    # from the first byte of a request head to its end (answered 408)
    "head": lambda timeouts: timeouts.head,
    # from the request (or its body) sent upstream to the response head (504)
    "response": lambda timeouts: timeouts.response,
    # between two pieces of a response body (the connection is cut)
    "body": lambda timeouts: timeouts.idle,
    # an upgraded connection quiet both ways (like nginx's proxy_read_timeout)
    "tunnel": lambda timeouts: timeouts.idle,
    # after the last answer: the client has this long to read it and close
    "closing": lambda timeouts: timeouts.idle,
}


def limits(
    timeouts: Timeouts, table: Mapping[DeadlineKind, Callable[[Timeouts], float]] = LIMITS
) -> dict[DeadlineKind, float]:
    """
    Seconds of quiet allowed per kind, for every kind, from `table`.

    Raises `ValueError` when the table lacks a kind of `DeadlineKind`, so a
    new kind never falls back to another's timeout unnoticed.
    """
    missing = [kind for kind in KINDS if kind not in table]
    if missing:
        raise ValueError(f"no timeout for deadline kinds {missing} in deadlines.LIMITS")
    return {kind: table[kind](timeouts) for kind in KINDS}
