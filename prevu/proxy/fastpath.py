"""
Two fast paths that rely on Twisted internals, each with the public path as fallback.

Measured on this kind of machine (docs/benchmarks.md), they save about a quarter
of the proxy's CPU per small request:

- `direct_writer`: when a plain TCP transport has nothing buffered, send the
  bytes with one `socket.send` right away instead of buffering them and asking
  epoll for writability first. Anything not sent (or any error) goes through
  `transport.write`, which then owns buffering, backpressure and error
  handling exactly as before. Never used for TLS transports.
- `install_fast_poll`: an epoll loop without the per-event
  `log.callWithLogger` wrapper (which builds a log context for every socket
  event). Exceptions are still caught and logged per event.

Both check that the internals they touch exist (`supported()`); on another
Twisted version they switch themselves off. `tests/test_proxy_fastpath.py`
covers both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger

log = Logger()

_TCP_TYPES = (tcp.Server, tcp.Client)
_TRANSPORT_ATTRIBUTES = (
    "_tempDataLen", "dataBuffer", "offset", "connected", "disconnecting", "_writeDisconnected",
    "socket",
)  # fmt: skip


def supported(transport: Any) -> bool:
    """Whether `transport` is a plain TCP transport with the internals direct writes use."""
    return type(transport) in _TCP_TYPES and all(
        hasattr(transport, name) for name in _TRANSPORT_ATTRIBUTES
    )


def direct_writer(transport: Any) -> Callable[[bytes], None]:
    """A `write(data)` for `transport` that skips Twisted's buffer when it is empty."""
    if not supported(transport):
        return transport.write  # type: ignore[no-any-return]
    send = transport.socket.send
    buffered_write = transport.write

    def write(data: bytes) -> None:
        if (
            transport._tempDataLen
            or len(transport.dataBuffer) != transport.offset
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnected
            or getattr(transport, "_aborting", False)
        ):
            buffered_write(data)
            return
        try:
            sent = send(data)
        except OSError:
            # EAGAIN, or a broken connection: Twisted's own path handles both.
            buffered_write(data)
            return
        if sent < len(data):
            buffered_write(data[sent:])

    return write


def install_fast_poll(reactor: Any) -> bool:
    """Replace an epoll reactor's poll step by one without log contexts; True if done."""
    from twisted.internet.epollreactor import EPollReactor

    if not isinstance(reactor, EPollReactor):
        return False
    if not all(hasattr(reactor, n) for n in ("_poller", "_selectables", "_doReadOrWrite")):
        return False
    import errno

    poller = reactor._poller
    selectables = reactor._selectables
    do_read_or_write = reactor._doReadOrWrite

    def do_poll(timeout: float | None) -> None:
        try:
            events = poller.poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                do_read_or_write(selectable, fd, event)
            except BaseException:
                log.failure("error handling an event on {selectable}", selectable=selectable)

    reactor.doIteration = do_poll  # type: ignore[method-assign]  # the point of this module
    reactor.doPoll = do_poll  # type: ignore[method-assign]
    return True
