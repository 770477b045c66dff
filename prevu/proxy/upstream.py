"""
The upstream side of the proxy: HTTP/1.1 client connections and their pool.

An `UpstreamConnection` carries one exchange at a time. It parses the
upstream's response with llhttp (through httptools) and hands each event to
the exchange that owns it; when the response ends cleanly and both sides
allow it, the connection goes back to the `UpstreamPool` for the next request
to the same host and port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httptools
from twisted.internet.error import ConnectionDone, TimeoutError
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from prevu.proxy.contracts import UpstreamUser
from prevu.proxy.fastpath import direct_writer

log = Logger()


class UpstreamConnection(Protocol):
    """
    One HTTP/1.1 connection to an upstream server.

    The response parser belongs to the exchange using the connection (a new
    llhttp parser per response costs ~0.25 µs and saves a call per header).
    """

    transport: Any  # a TCP transport; typed loosely, as Twisted's interfaces are

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.exchange: UpstreamUser | None = None
        self.max_head = pool.max_head
        self.connected_ = False
        self.reused = False
        self.tunnel = False
        self.last_used = 0.0
        self.connector: Any = None
        self.write: Callable[[bytes], None] = self._buffered_write

    def _buffered_write(self, data: bytes) -> None:
        self.transport.write(data)

    # --- Protocol -----------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ = True
        transport: Any = self.transport
        self.write = direct_writer(transport) if self.pool.direct_write else transport.write
        no_delay = getattr(transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        exchange = self.exchange
        if exchange is None:
            # Its client left while we were connecting.
            transport.abortConnection()
            return
        exchange.upstream_ready(self)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel:
            exchange = self.exchange
            if exchange is not None:
                exchange.tunnel_received(data)
            return
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle pooled connection: it is out of step, drop it.
            self.abort()
            return
        if not exchange.started:
            # Bytes of a response head not complete yet: bounded, however the
            # upstream splits its header lines (llhttp buffers them meanwhile).
            exchange.head_size += len(data)
        try:
            exchange.response_parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            exchange.upstream_upgraded(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, HeadResponseDone):
                exchange.response_complete(reusable=data.endswith(b"\r\n\r\n"))
            else:
                exchange.upstream_invalid(f"upstream response error: {cause or error}")
        except httptools.HttpParserError as error:
            exchange.upstream_invalid(f"invalid upstream response: {error}")
        else:
            if not exchange.started and exchange.head_size > self.max_head:
                exchange.upstream_invalid("response head too large")
                return
            exchange.flush_to_client()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.connected_ = False
        self.pool.forget(self)
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.upstream_lost(self, reason)

    # --- used by the exchange ----------------------------------------------

    def abort(self) -> None:
        """Drop the connection at once (never reused)."""
        self.exchange = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()
        elif self.connector is not None:
            self.connector.stopConnecting()


class HeadResponseDone(Exception):
    """Raised inside the parser to end a response that has no body (HEAD)."""


class ResponseTooLarge(Exception):
    """Raised inside the parser for a response prevu will not relay (head over max_head, ...)."""

    def __init__(self, reason: str = "response head too large") -> None:
        super().__init__(reason)


class _UpstreamFactory(ClientFactory):
    """Connects one UpstreamConnection and reports a failed connect to its exchange."""

    noisy = False  # one log line per upstream connection would drown the log

    def __init__(self, connection: UpstreamConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        return self.connection

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        exchange = self.connection.exchange
        self.connection.exchange = None
        if exchange is not None:
            exchange.upstream_connect_failed(reason.check(TimeoutError) is not None, reason)


class UpstreamPool:
    """
    Idle keep-alive connections per (host, port), most recently used first.

    Connections stay idle for at most `idle_timeout` seconds and at most
    `max_idle` per upstream; `sweep` closes the old ones.
    """

    def __init__(
        self,
        reactor: Any,
        connect_timeout: float,
        idle_timeout: float = 60.0,
        max_idle: int = 512,
        direct_write: bool = True,
        max_head: int = 64 * 1024,
    ) -> None:
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.idle: dict[tuple[str, int], list[UpstreamConnection]] = {}
        self.connects = 0
        self.direct_write = direct_write
        self.max_head = max_head  # bytes of response head (then of trailers) relayed at most

    def acquire(self, key: tuple[str, int], exchange: UpstreamUser) -> UpstreamConnection:
        """A connection for `exchange`: an idle one, or a new one being connected."""
        idle = self.idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.connected_:
                connection.exchange = exchange
                connection.reused = True
                return connection
        connection = UpstreamConnection(self, key)
        connection.exchange = exchange
        self.connects += 1
        connection.connector = self.reactor.connectTCP(
            key[0], key[1], _UpstreamFactory(connection), timeout=self.connect_timeout
        )
        return connection

    def release(self, connection: UpstreamConnection, now: float) -> None:
        """Return a connection whose exchange ended cleanly."""
        connection.exchange = None
        idle = self.idle.setdefault(connection.key, [])
        if len(idle) >= self.max_idle or not connection.connected_:
            connection.abort()
            return
        connection.last_used = now
        idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        """Drop a closed connection from the idle lists."""
        idle = self.idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than `idle_timeout`."""
        limit = now - self.idle_timeout
        for idle in self.idle.values():
            while idle and idle[0].last_used < limit:
                idle.pop(0).abort()

    def close_all(self) -> None:
        """Close every idle connection (service stop)."""
        for idle in list(self.idle.values()):
            for connection in list(idle):
                connection.abort()
        self.idle.clear()

    def idle_count(self, key: tuple[str, int] | None = None) -> int:
        """How many idle connections the pool holds (for one upstream, or all)."""
        if key is not None:
            return len(self.idle.get(key, ()))
        return sum(len(v) for v in self.idle.values())
