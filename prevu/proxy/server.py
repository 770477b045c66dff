"""
The client side of the proxy: accepts connections, parses requests, answers in order.

`ClientConnection` parses requests with llhttp (through httptools), which
refuses smuggling shapes such as Content-Length with Transfer-Encoding or
duplicate Content-Length. Requests are answered strictly in order: a
pipelined request waits (with reading paused) until the one before it has
been answered. What happens to each parsed head is decided by
`prevu.proxy.admission.admit` (routing, the gate, the checks, the head sent
upstream); this module carries the decision out: an `Exchange` for a
request to forward, the bytes of a `LocalReply` otherwise.

Timeouts are enforced by one sweep per second over all connections rather
than a timer per request, which keeps the per-request cost down; how long
each kind of wait may last is `prevu.proxy.deadlines`' table.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal

import httptools
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from prevu.proxy.admission import (
    SPECIAL,
    SPECIAL_FIRST,
    SPOOF_NAMES,
    Forward,
    LocalReply,
    admit,
    dropped_in_any_spelling,
    spoofing,
)
from prevu.proxy.contracts import UpstreamLink, UpstreamUser
from prevu.proxy.deadlines import DeadlineKind, limits
from prevu.proxy.exchange import Exchange, UploadProducer
from prevu.proxy.fastpath import direct_writer, supported
from prevu.proxy.forwarding import HeaderPieces
from prevu.proxy.hooks import AccessGate, Interceptor, NoWaker, OpenGate, Waker
from prevu.proxy.http import page, simple_response
from prevu.proxy.settings import ProxySettings
from prevu.proxy.upstream import UpstreamPool
from prevu.routing import Route, RouteRegistry

__all__ = ["ClientConnection", "ProxyFactory", "ProxySettings"]

log = Logger()

SWEEP_INTERVAL = 1.0  # seconds between two timeout sweeps

ConnectionState = Literal["http", "last", "upgrading", "tunnel", "closing", "closed"]
_ENDED: Final = ("closing", "closed")


class ClientConnection(Protocol):
    """
    One client's connection to the proxy.

    Its phase is `_state`, one of (transitions in brackets):

    - "http": requests are read, admitted and answered in order: waiting
      for a head, reading one, exchanges or local replies in flight,
      pipelined ones queued in `pending`. The initial state.
    - "last": an answer queued will close the connection; later requests
      are still parsed (to stay in step) but never served
      [http -> last: `closed_for_reading`].
    - "upgrading": an Upgrade request was admitted (`upgrading`); what the
      client sends after its head waits for the upstream's 101
      [http -> upgrading: `on_headers_complete`].
    - "tunnel": after the 101, bytes are spliced both ways unparsed with
      `tunnel` [upgrading -> tunnel: `start_tunnel`].
    - "closing": the last answer is written; the connection half-closes and
      drops what the client still sends until it closes, for the "closing"
      deadline at most [any of the above -> closing: `close_after_write`].
    - "closed": aborted or lost [any -> closed: `close`, `connectionLost`].

    Between requests the connection also satisfies `forwarding.ParsedHead`
    (the head being parsed) and `contracts.ClientSide` (for its exchanges).
    """

    factory: ProxyFactory
    transport: Any  # a TCP or TLS transport; typed loosely, as Twisted's interfaces are
    # The head being parsed (`forwarding.ParsedHead`); the four below are set
    # once the head is complete. Class defaults: nothing to store per request.
    method = b""
    version = ""
    keep_alive = False
    upgrade = False

    def __init__(self, factory: ProxyFactory, client_ip: str) -> None:
        self.factory = factory
        self.client_ip = client_ip
        self.client_ip_bytes = client_ip.encode()
        settings = factory.settings
        self.max_head = settings.max_head
        self.max_body = settings.max_body
        self.max_target = settings.max_target
        self.quiet_limit = 2 * self.max_head
        self.policy = factory.policy
        self.links = factory.policy.links
        self.limits = factory.limits
        self.acquire_upstream: Callable[[tuple[str, int], UpstreamUser], UpstreamLink] = (
            factory.pool.acquire
        )
        self.parser = httptools.HttpRequestParser(self)
        self._state: ConnectionState = "http"
        self.current: Exchange | None = None  # being answered
        self.receiving: Exchange | None = None  # request body being read
        self.pending: deque[Exchange | LocalReply] = deque()
        self.tunnel: UpstreamLink | None = None  # in "tunnel"
        self.upgrading: Exchange | None = None  # in "upgrading"
        # Why reading from the client is held back, if it is: "pipeline" (a
        # request waits its turn), "write" (the client does not read its
        # answers), "upload" (the upstream does not take the body),
        # "connecting" (no upstream connection yet for the body), "upgrade"
        # (bytes after an Upgrade head wait for the 101).
        self.holds: set[str] = set()
        self.reading = True
        self.write_blocked = False
        self.upload_producer = UploadProducer(self)
        self.deadline_kind: DeadlineKind | None = None
        self.quiet_time = 0.0
        self.write: Callable[[bytes], None] = self._buffered_write
        self.in_head = False
        self.head_bytes = 0
        self.head_raw = 0
        self.quiet_bytes = 0  # bytes read since the parser last reported progress
        self.trailers: list[bytes] = []
        self.trailer_bytes = 0
        self._reset_head()

    def _buffered_write(self, data: bytes) -> None:
        self.transport.write(data)

    def _reset_head(self) -> None:
        self.url = b""
        # Forwarded headers, passed on as they are.
        self.headers: HeaderPieces = []
        self.hosts: list[bytes] = []
        # Headers the proxy handles itself, by lower-case name; None when the
        # request had none (the common case costs one store to reset).
        self.special: dict[bytes, list[bytes]] | None = None

    @property
    def state(self) -> ConnectionState:
        """The connection's phase (see the class docstring)."""
        return self._state

    @property
    def closed(self) -> bool:
        """Whether the connection is closing or closed: nothing more is served."""
        return self._state in _ENDED

    # --- Protocol -----------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.write = (
            direct_writer(transport) if self.factory.settings.direct_write else transport.write
        )
        no_delay = getattr(transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        # This connection is the producer of everything written to the client:
        # when the client stops reading, it stops reading requests and stops
        # the upstream it relays from.
        transport.registerProducer(self, True)
        self.set_deadline("idle")

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        # One comparison for the common case ("http"); "last" parses too.
        if state != "http" and state != "last":
            if state == "tunnel" and self.tunnel is not None:
                self.quiet_time = 0.0
                self.tunnel.write(data)
            elif state == "upgrading" and self.upgrading is not None:
                self.upgrading.tunnel_data(data)
            # "closing", "closed": what the client still sends is dropped
            return
        self.quiet_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            exchange = self.upgrading
            rest = data[upgrade.args[0] :]
            if exchange is None:
                # Refused before reaching an upstream; the parser cannot go on.
                self._finish_with_close()
            elif rest:
                exchange.tunnel_data(rest)
            return
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, cause.title, cause.message)
                return
            log.failure(
                "proxy error for {client}", failure=Failure(cause or error), client=self.client_ip
            )
            self._refuse(500, "Internal Server Error", "The proxy failed on this request.")
            return
        except httptools.HttpParserError as error:
            self._refuse(400, "Bad Request", f"The request could not be parsed: {error}")
            return
        if self.quiet_bytes > self.quiet_limit:
            # A head, trailer or chunk-size line still being received is not
            # counted by the callbacks yet; this bounds what llhttp buffers.
            self._refuse(431, "Request Header Fields Too Large", "The request head is too large.")

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._state = "closed"
        self.factory.forget(self)
        for exchange in (self.current, self.receiving, self.upgrading):
            if exchange is not None and not exchange.finished:
                exchange.abort()
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.abort()
        self.pending.clear()

    # --- httptools callbacks (request parser) ---------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_bytes = 0
        self.quiet_bytes = 0
        if self.current is None:
            self.set_deadline("head")

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_target:
            raise _Refused(414, "URI Too Long", "The request target is too long.")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            self._trailer(name, value)
            return
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.max_head:
            raise _Refused(431, "Request Header Fields Too Large", "The request head is too large.")
        # Only names starting like a special one, or with an underscore, can be
        # special: most headers (Accept*, Referer, Sec-*, ...) skip lower().
        # The rules are admission's (SPECIAL, spoofing); the filters are here.
        if name[0] in SPECIAL_FIRST or b"_" in name:
            lower = name.lower()
            if b"_" in lower:
                # Some servers read `_` as `-`: never let X-Prevu_User or
                # Content_Length through in any role.
                if dropped_in_any_spelling(lower):
                    return
            elif lower == b"host":
                self.hosts.append(value)
                return
            elif lower in SPECIAL:
                special = self.special
                if special is None:
                    special = self.special = {}
                special.setdefault(lower, []).append(value)
                return
            elif (lower[:2] == b"x-" or lower in SPOOF_NAMES) and spoofing(lower):
                return
        self.headers += (name, b": ", value, b"\r\n")

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A request trailer: bounded, and filtered by the rules of headers."""
        self.trailer_bytes += len(name) + len(value) + 4
        if self.trailer_bytes > self.max_head:
            raise _Refused(
                431, "Request Header Fields Too Large", "The request trailers are too large."
            )
        if dropped_in_any_spelling(name.lower()):
            return
        self.trailers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self._state != "http":
            # The connection is closing (an answer said so): nothing more is served.
            self._reset_head()
            return
        parser = self.parser
        self.method = parser.get_method()
        self.version = parser.get_http_version()
        self.keep_alive = bool(parser.should_keep_alive())
        self.upgrade = bool(parser.should_upgrade())
        decision = admit(self, self.policy)
        self._reset_head()
        item: Exchange | LocalReply
        if isinstance(decision, Forward):
            self.factory.seen(decision.route)
            item = self.receiving = Exchange(self, decision)
            if item.upgrade:
                self.upgrading = item
                self._state = "upgrading"
        else:
            item = decision
            if decision.wake is not None:
                self.factory.waker.wake(decision.wake)
        if self.current is None and not self.pending:
            self._begin(item)
        else:
            self.pending.append(item)
            self.hold_reading("pipeline", True)

    def on_body(self, body: bytes) -> None:
        self.quiet_bytes = 0
        exchange = self.receiving
        if exchange is not None and self._state == "http":
            exchange.request_body(body)
            if self.current is exchange:
                self.set_deadline("body")

    def on_message_complete(self) -> None:
        self.quiet_bytes = 0
        exchange = self.receiving
        self.receiving = None
        trailers, self.trailers = self.trailers, []
        self.trailer_bytes = 0
        if exchange is not None and not exchange.finished and self._state not in _ENDED:
            exchange.request_complete(trailers)

    # --- request handling ---------------------------------------------------

    def _begin(self, item: Exchange | LocalReply) -> None:
        if isinstance(item, Exchange):
            self.current = item
            item.start()
            return
        self.current = None
        if item.data:
            self.write(item.data)
        if item.close:
            self.close_after_write()
        else:
            self._next()

    # --- called by exchanges -------------------------------------------------

    def exchange_finished(self, exchange: Exchange, keep_alive: bool) -> None:
        """The response to `exchange` has been written."""
        if exchange is not self.current:
            return
        self.current = None
        if self._state in _ENDED:
            return
        if not keep_alive or exchange is self.upgrading:
            self.close_after_write()
            return
        self._next()

    def _next(self) -> None:
        if self.write_blocked:
            self.hold_reading("write", True)
        if self.pending:
            item = self.pending.popleft()
            if not self.pending:
                self.hold_reading("pipeline", False)
            self._begin(item)
            return
        if "pipeline" in self.holds:
            self.hold_reading("pipeline", False)
        self.set_deadline("head" if self.in_head else "idle")

    def body_too_large(self, exchange: Exchange) -> None:
        """The request body went over `max_body`."""
        self.receiving = None
        if exchange is self.current:
            exchange.fail(413, "Content Too Large", "The request body is too large.")
            exchange.abort()
            return
        # A pipelined request: its 413 takes its place in the queue, then we close.
        exchange.abort()
        too_large = page(413, "Content Too Large", "The request body is too large.", exchange.host)
        reply = LocalReply(simple_response(413, too_large, close=True), close=True)
        queue = list(self.pending)
        self.pending.clear()
        for item in queue:
            if item is exchange:
                self.pending.append(reply)
                break
            self.pending.append(item)
        self.closed_for_reading()

    def closed_for_reading(self) -> None:
        """Read nothing more from this client (an answer will close the connection)."""
        self.hold_reading("closing", True)
        if self._state == "http":
            self._state = "last"

    def _finish_with_close(self) -> None:
        if self.current is None and not self.pending:
            self.close_after_write()
        else:
            self.pending.append(LocalReply(b"", close=True))
            self.closed_for_reading()

    def start_tunnel(self, exchange: Exchange, connection: UpstreamLink) -> None:
        """Switch to splicing raw bytes both ways (after a 101 response)."""
        self.tunnel = connection
        self.upgrading = None
        self.current = None
        if self._state == "upgrading":
            self._state = "tunnel"
        # A tunnel idle in both directions for timeouts.idle is closed (like
        # nginx's proxy_read_timeout; WebSocket apps ping to stay open).
        self.set_deadline("tunnel")
        # Each side slows the other down when it cannot keep up: this
        # connection (the client transport's producer) pauses the tunnel, the
        # upload producer pauses reading the client.
        connection.transport.registerProducer(self.upload_producer, True)
        self.hold_reading("upgrade", False)
        if self.write_blocked:
            connection.transport.pauseProducing()

    def tunnel_activity(self) -> None:
        """Bytes came from the upstream of the tunnel: it is not idle."""
        self.quiet_time = 0.0

    def release_upstream(self, connection: UpstreamLink) -> None:
        """Give a cleanly finished upstream connection back to the pool."""
        factory = self.factory
        factory.pool.release(connection, factory.reactor.seconds())  # type: ignore[arg-type]

    def close(self) -> None:
        """Drop the connection now (mid-response failures)."""
        if self._state not in _ENDED and self.transport is not None:
            self._state = "closed"
            self.transport.abortConnection()

    def close_after_write(self) -> None:
        """Close once what was written has been sent (or after the "closing" deadline)."""
        if self._state not in _ENDED and self.transport is not None:
            self._state = "closing"
            # Read (and drop) whatever the client still sends until the close:
            # closing with unread bytes makes the kernel reset the connection,
            # which can destroy the answer just written.
            self.holds.clear()
            self.write_blocked = False
            self.hold_reading("closing", False)
            # TLS waits for its producer to go away before it shuts down.
            self.transport.unregisterProducer()
            # Half-close where the transport can (plain TCP): our FIN goes out
            # after the answer, and we go on reading until the client closes.
            half_close = getattr(self.transport, "loseWriteConnection", None)
            if half_close is not None and supported(self.transport):
                half_close()
            else:
                self.transport.loseConnection()
            self.set_deadline("closing")

    # --- flow control and deadlines -------------------------------------------

    def hold_reading(self, reason: str, hold: bool) -> None:
        """Hold back (or stop holding back) reading from the client for `reason`."""
        if hold:
            self.holds.add(reason)
        else:
            self.holds.discard(reason)
        want = not self.holds
        if want != self.reading and self.transport is not None:
            self.reading = want
            if want:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()

    def upstream_opened(self) -> None:
        """The current exchange has its upstream connection: buffered body bytes are out."""
        if "connecting" in self.holds:
            self.hold_reading("connecting", False)

    # IPushProducer, registered on our own transport: the client stopped or
    # started reading what we write.

    def pauseProducing(self) -> None:
        self.write_blocked = True
        if self.tunnel is not None and self.tunnel.transport is not None:
            self.tunnel.transport.pauseProducing()
        elif self.current is not None and self.current.connection is not None:
            # Stop the upstream we relay from; later requests wait their turn anyway.
            self.current.pause_upstream()
        else:
            # prevu's own answers pile up: stop taking requests.
            self.hold_reading("write", True)

    def resumeProducing(self) -> None:
        self.write_blocked = False
        if "write" in self.holds:
            self.hold_reading("write", False)
        if self.current is not None:
            self.current.resume_upstream()
        if self.tunnel is not None and self.tunnel.transport is not None:
            self.tunnel.transport.resumeProducing()

    def stopProducing(self) -> None:
        # The transport is going away (connectionLost follows): nothing to do.
        self._state = "closed"

    def set_deadline(self, kind: DeadlineKind) -> None:
        """
        Start the clock for a wait of `kind` (its limit: `deadlines.LIMITS`).

        No clock is read here: the sweep adds up how long it found the
        connection quiet, which costs one store per event.
        """
        self.deadline_kind = kind
        self.quiet_time = 0.0

    def check_deadline(self, elapsed: float) -> None:
        """Called by the sweep `elapsed` seconds after the last one: act on an expired deadline."""
        kind = self.deadline_kind
        if kind is None:
            return
        if self._state in _ENDED:
            if kind == "closing":
                self.quiet_time += elapsed
                if self.quiet_time >= self.limits["closing"]:
                    # A client that never reads its last answer, or never closes
                    # its side, keeps nothing alive for long.
                    self.deadline_kind = None
                    self.transport.abortConnection()
            return
        self.quiet_time += elapsed
        if self.quiet_time < self.limits[kind]:
            return
        self.deadline_kind = None
        exchange = self.current
        if exchange is not None and kind in ("response", "body"):
            exchange.timed_out()
            return
        if self.in_head and self.current is None:
            self._refuse(408, "Request Timeout", "The request head took too long.")
            return
        self.close()

    def _refuse(self, status: int, title: str, message: str) -> None:
        """Answer a request that cannot be parsed or accepted, then close."""
        current = self.current
        if current is not None and self.receiving is current:
            # The broken request is the one being answered: its upstream
            # request can never be completed.
            self.receiving = None
            if current.started:
                current.abort()
                self.close()
                return
            current.abort()
            self.current = None
        elif current is not None:
            # An answer is in progress; the broken request follows it by closing.
            self.pending.clear()
            self.pending.append(
                LocalReply(simple_response(status, page(status, title, message), close=True), True)
            )
            self.closed_for_reading()
            return
        self.write(simple_response(status, page(status, title, message), close=True))
        self.close_after_write()


class _Refused(Exception):
    """Raised inside the parser to refuse a request with a status."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class ProxyFactory(Factory):
    """Builds one ClientConnection per accepted connection; holds the shared state."""

    noisy = False

    def __init__(
        self,
        reactor: Any,
        routes: RouteRegistry,
        settings: ProxySettings | None = None,
        gate: AccessGate | None = None,
        interceptors: tuple[Interceptor, ...] = (),
        waker: Waker | None = None,
        activity: dict[str, float] | None = None,
    ) -> None:
        self.reactor = reactor
        self.routes = routes
        self.gate = gate or OpenGate()
        self.interceptors = interceptors
        self.waker = waker or NoWaker()
        self.settings = settings = settings or ProxySettings()
        self.pool = UpstreamPool(
            reactor,
            settings.timeouts.connect,
            idle_timeout=settings.timeouts.pool_idle,
            direct_write=settings.direct_write,
            max_head=settings.max_head,
        )
        self.connections: set[ClientConnection] = set()
        self.per_client: dict[str, int] = {}
        # Preview id -> time of its last proxied request (shared by the http and
        # https proxies; read by prevu.idle).
        self.last_seen: dict[str, float] = activity if activity is not None else {}
        self.requests = 0
        self._sweeper: LoopingCall | None = None

    @property
    def settings(self) -> ProxySettings:
        """The settings; new ones apply to the connections accepted afterwards."""
        return self._settings

    @settings.setter
    def settings(self, settings: ProxySettings) -> None:
        self._settings = settings
        self.policy = settings.policy(self.routes, self.gate, self.interceptors)
        self.limits = limits(settings.timeouts)  # raises if a deadline kind has no row

    def buildProtocol(self, addr: Any) -> ClientConnection | None:  # type: ignore[override]
        client_ip = getattr(addr, "host", "") or "unix"
        settings = self.settings
        count = self.per_client.get(client_ip, 0)
        if len(self.connections) >= settings.max_connections or (
            # A trusted proxy (a load balancer in front) carries many clients.
            count >= settings.max_connections_per_client and not self.policy.trusts(client_ip)
        ):
            log.warn("connection limit reached; refusing {client}", client=client_ip)
            return None
        self.per_client[client_ip] = count + 1
        connection = ClientConnection(self, client_ip)
        self.connections.add(connection)
        return connection

    def forget(self, connection: ClientConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            count = self.per_client.get(connection.client_ip, 1) - 1
            if count > 0:
                self.per_client[connection.client_ip] = count
            else:
                self.per_client.pop(connection.client_ip, None)

    def seen(self, route: Route) -> None:
        """Note activity on a preview (for sleep_after and ttl)."""
        self.requests += 1
        if route.preview is not None:
            self.last_seen[route.preview] = self.reactor.seconds()

    def sweep(self, count: int = 1) -> None:
        """Enforce deadlines on every connection and close stale pooled ones."""
        elapsed = SWEEP_INTERVAL * count  # count > 1 when the reactor was late
        for connection in list(self.connections):
            connection.check_deadline(elapsed)
        self.pool.sweep(self.reactor.seconds())

    def doStart(self) -> None:
        super().doStart()
        if self._sweeper is None:
            self._sweeper = LoopingCall.withCount(self.sweep)
            self._sweeper.clock = self.reactor
            self._sweeper.start(SWEEP_INTERVAL, now=False)

    def doStop(self) -> None:
        super().doStop()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        self.pool.close_all()

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """The proxy's figures for /metrics, labelled with its scheme."""
        labels = {"scheme": self.settings.scheme}
        return [
            ("prevu_proxy_requests_total", labels, float(self.requests)),
            ("prevu_proxy_connections", labels, float(len(self.connections))),
            ("prevu_proxy_upstream_connects_total", labels, float(self.pool.connects)),
            ("prevu_proxy_upstream_idle", labels, float(self.pool.idle_count())),
        ]
