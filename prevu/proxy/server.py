"""
The client side of the proxy: accepts connections, parses requests, routes.

`ClientConnection` parses requests with llhttp (through httptools), which
refuses smuggling shapes such as Content-Length with Transfer-Encoding or
duplicate Content-Length. Requests are answered strictly in order: a
pipelined request waits (with reading paused) until the one before it has
been answered. Each request is routed by `Host`, checked by the access gate
when its route is private, rewritten (hop-by-hop headers out, forwarded
headers in, prevu's session cookie removed) and handed to an `Exchange`.

Timeouts are enforced by one sweep per second over all connections rather
than a timer per request, which keeps the per-request cost down.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import httptools
from attrs import frozen
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from prevu.config import Config
from prevu.proxy.exchange import Exchange, without_headers
from prevu.proxy.fastpath import direct_writer
from prevu.proxy.hooks import (
    AccessGate,
    Allow,
    Interceptor,
    NoWaker,
    OpenGate,
    Reply,
    RequestHead,
    Waker,
)
from prevu.proxy.http import (
    HOP_BY_HOP,
    REQUEST_OWN,
    connection_tokens,
    page,
    simple_response,
    strip_session_cookie,
    waiting_page,
)
from prevu.proxy.upstream import UpstreamConnection, UpstreamPool
from prevu.routing import Route, RouteRegistry, normalize_host

log = Logger()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SWEEP_INTERVAL = 1.0  # seconds between two timeout sweeps

# Request headers the proxy reads, rewrites or drops itself (Host aside).
_SPECIAL = (REQUEST_OWN | HOP_BY_HOP) - {b"host"}
_SPECIAL_LENGTHS = frozenset(len(name) for name in (*_SPECIAL, b"host"))
_NONE: tuple[bytes, ...] = ()


@frozen
class ProxySettings:
    """Everything the proxy needs from the config."""

    scheme: str = "http"
    trusted_proxies: tuple[Network, ...] = ()
    max_body: int = 1 << 30
    connect_timeout: float = 5.0
    response_timeout: float = 60.0
    idle_timeout: float = 120.0
    head_timeout: float = 30.0
    max_head: int = 64 * 1024
    max_target: int = 8 * 1024
    max_connections: int = 10_000
    max_connections_per_client: int = 512
    retry_after: int = 5
    direct_write: bool = True  # prevu.proxy.fastpath; off under TLS by construction

    @classmethod
    def from_config(cls, config: Config, scheme: str = "http") -> ProxySettings:
        """Settings for the proxy endpoint that serves `scheme`."""
        server = config.server
        return cls(
            scheme=scheme,
            trusted_proxies=server.trusted_proxies,
            max_body=server.max_body,
            connect_timeout=server.timeouts.connect,
            response_timeout=server.timeouts.response,
            idle_timeout=server.timeouts.idle,
            head_timeout=min(30.0, server.timeouts.idle),
        )


class ClientConnection(Protocol):
    """One client's connection to the proxy."""

    factory: ProxyFactory
    transport: Any  # a TCP or TLS transport; typed loosely, as Twisted's interfaces are

    def __init__(self, factory: ProxyFactory, client_ip: str) -> None:
        self.factory = factory
        self.client_ip = client_ip
        self.client_ip_bytes = client_ip.encode()
        self.parser = httptools.HttpRequestParser(self)
        self.current: Exchange | None = None  # being answered
        self.receiving: Exchange | None = None  # request body being read
        self.pending: deque[Exchange | _LocalReply] = deque()
        self.tunnel: UpstreamConnection | None = None
        self.upgrading: Exchange | None = None
        self.closed = False
        self.paused = False
        self.deadline_kind = ""
        self.quiet_time = 0.0
        self.write: Callable[[bytes], None] = self._buffered_write
        self.in_head = False
        self.head_bytes = 0
        self.head_raw = 0
        self.trailers: list[tuple[bytes, bytes]] = []
        self._reset_head()

    def _buffered_write(self, data: bytes) -> None:
        self.transport.write(data)

    def _reset_head(self) -> None:
        self.url = b""
        # Forwarded headers as pieces to join: name, ": ", value, CRLF, ...
        self.headers: list[bytes] = []
        self.hosts: list[bytes] = []
        # Headers the proxy handles itself, by lower-case name; None when the
        # request had none (the common case costs one store to reset).
        self.special: dict[bytes, list[bytes]] | None = None

    def _values(self, name: bytes) -> Sequence[bytes]:
        special = self.special
        return special.get(name, _NONE) if special is not None else _NONE

    def _value(self, name: bytes) -> bytes | None:
        values = self._values(name)
        return b", ".join(values) if values else None

    # --- Protocol -----------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.write = (
            direct_writer(transport) if self.factory.settings.direct_write else transport.write
        )
        no_delay = getattr(transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self.set_deadline("idle")

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.upgrading is not None:
            self.upgrading.tunnel_data(data)
            return
        if self.closed:
            return
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
            raise
        except httptools.HttpParserError as error:
            self._refuse(400, "Bad Request", f"The request could not be parsed: {error}")
            return
        if self.in_head:
            # A header line still being received is not counted by on_header yet.
            self.head_raw += len(data)
            if self.head_raw > 2 * self.factory.settings.max_head:
                self._refuse(
                    431, "Request Header Fields Too Large", "The request head is too large."
                )

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.closed = True
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
        self.head_raw = 0
        if self.current is None:
            self.set_deadline("head")

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.factory.settings.max_target:
            raise _Refused(414, "URI Too Long", "The request target is too long.")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            self.trailers.append((name, value))
            return
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.factory.settings.max_head:
            raise _Refused(431, "Request Header Fields Too Large", "The request head is too large.")
        # Only names of these lengths can be special: most headers skip lower().
        if len(name) in _SPECIAL_LENGTHS:
            lower = name.lower()
            if lower == b"host":
                self.hosts.append(value)
                return
            if lower in _SPECIAL:
                special = self.special
                if special is None:
                    special = self.special = {}
                special.setdefault(lower, []).append(value)
                return
        self.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.in_head = False
        item = self._exchange_for_head()
        self._reset_head()
        if isinstance(item, Exchange):
            self.receiving = item
            if item.upgrade:
                self.upgrading = item
        if self.current is None and not self.pending:
            self._begin(item)
        else:
            self.pending.append(item)
            self._pause()

    def on_body(self, body: bytes) -> None:
        exchange = self.receiving
        if exchange is not None:
            exchange.request_body(body)
            if self.current is exchange:
                self.set_deadline("body")

    def on_message_complete(self) -> None:
        exchange = self.receiving
        self.receiving = None
        trailers, self.trailers = self.trailers, []
        if exchange is not None and not exchange.finished:
            exchange.request_complete(trailers)

    # --- request handling ---------------------------------------------------

    def _exchange_for_head(self) -> Exchange | _LocalReply:
        """Turn a parsed head into an Exchange, or into the bytes of a local reply."""
        settings = self.factory.settings
        parser = self.parser
        method: bytes = parser.get_method()
        version = parser.get_http_version()
        http11 = version == "1.1"
        keep_alive = bool(parser.should_keep_alive())
        head_only = method == b"HEAD"

        if version not in ("1.1", "1.0"):
            return self._local(505, "HTTP Version Not Supported", "Use HTTP/1.1.", "", head_only)
        if method == b"CONNECT":
            return self._local(
                405, "Method Not Allowed", "CONNECT is not supported.", "", head_only
            )
        target = self.url
        if target[:1] != b"/":
            target, host_from_target = _origin_form(target)
            if host_from_target is None:
                return self._local(400, "Bad Request", "Invalid request target.", "", head_only)
            self.hosts = [host_from_target]
        if len(self.hosts) != 1:
            return self._local(
                400, "Bad Request", "The request needs exactly one Host header.", "", head_only
            )
        raw_host = self.hosts[0]
        host = self.factory.host_name(raw_host)
        chunked = False
        content_length = None
        if self.special is not None:
            transfer_encoding = self._value(b"transfer-encoding")
            if transfer_encoding is not None:
                if transfer_encoding.strip().lower() != b"chunked":
                    return self._local(
                        501,
                        "Not Implemented",
                        "Only the chunked transfer coding is supported.",
                        host,
                        head_only,
                    )
                chunked = True
            length = self._value(b"content-length")
            content_length = int(length) if length is not None else None
            if content_length is not None and content_length > settings.max_body:
                return self._local(
                    413, "Content Too Large", "The request body is too large.", host, head_only
                )

        head = (
            RequestHead(
                method,
                target,
                host,
                settings.scheme,
                self.client_ip,
                self._headers_for_hooks(raw_host),
            )
            if self.factory.interceptors
            else None
        )
        for interceptor in self.factory.interceptors:
            reply = interceptor.intercept(head)  # type: ignore[arg-type]
            if reply is not None:
                return _hook_reply(reply, keep_alive, head_only)

        route = self.factory.routes.table.lookup(host)
        if route is None:
            return self._local(
                404, "Not Found", "No preview or route is served at this address.", host, head_only
            )
        user: bytes | None = None
        if route.access == "private":
            head = head or RequestHead(
                method,
                target,
                host,
                settings.scheme,
                self.client_ip,
                self._headers_for_hooks(raw_host),
            )
            decision = self.factory.gate.check(route, head)
            if not isinstance(decision, Allow):
                return _hook_reply(decision, keep_alive, head_only)
            if decision.user is not None:
                user = decision.user.encode("utf-8")
        if route.state != "ready" or route.upstream is None:
            return self._not_ready(route, host, head_only)

        upgrade = (
            self.special is not None
            and bool(self._values(b"upgrade"))
            and b"upgrade" in connection_tokens(self._values(b"connection"))
        )
        request_head = self._forward_head(
            method, target, raw_host, upgrade, user, content_length, chunked, route.trusted
        )
        self.factory.seen(route)
        return Exchange(
            self,
            method,
            request_head,
            route.upstream,
            host,
            chunked=chunked,
            content_length=content_length,
            keep_alive=keep_alive,
            client_http11=http11,
            upgrade=upgrade,
        )

    def _headers_for_hooks(self, raw_host: bytes) -> list[tuple[bytes, bytes]]:
        """What interceptors and the gate see: the forwarded headers plus Host, cookies, bypass."""
        pieces = self.headers
        return [
            (b"host", raw_host),
            *[(pieces[i], pieces[i + 2]) for i in range(0, len(pieces), 4)],
            *[(b"cookie", c) for c in self._values(b"cookie")],
            *[(b"x-prevu-bypass", v) for v in self._values(b"x-prevu-bypass")],
        ]

    def _forward_head(
        self,
        method: bytes,
        target: bytes,
        raw_host: bytes,
        upgrade: bool,
        user: bytes | None,
        content_length: int | None,
        chunked: bool,
        trusted: bool,
    ) -> bytes:
        """The request head for the upstream: HTTP/1.1, original Host, forwarded headers."""
        parts = [method, b" ", target, b" HTTP/1.1\r\nHost: ", raw_host, b"\r\n"]
        parts += self.headers
        forwarded_for = forwarded_proto = forwarded_host = None
        if self.special is not None:
            connection_values = self._values(b"connection")
            if connection_values:
                listed = connection_tokens(connection_values) - {
                    b"close",
                    b"keep-alive",
                    b"upgrade",
                }
                if listed:
                    parts = parts[:6] + without_headers(self.headers, listed)
            for value in self._values(b"cookie"):
                # Preview code is untrusted: it never sees the reviewer's session.
                # prevu's own control app (a trusted route) needs it.
                kept = value if trusted else strip_session_cookie(value)
                if kept:
                    parts += (b"Cookie: ", kept, b"\r\n")
            if content_length is not None:
                parts.append(b"Content-Length: %d\r\n" % content_length)
            elif chunked:
                parts.append(b"Transfer-Encoding: chunked\r\n")
            expect = self._value(b"expect")
            if expect is not None:
                parts += (b"Expect: ", expect, b"\r\n")
            if upgrade:
                parts += (
                    b"Connection: Upgrade\r\nUpgrade: ",
                    self._value(b"upgrade") or b"",
                    b"\r\n",
                )
            forwarded_for = self._value(b"x-forwarded-for")
            if forwarded_for is not None and self.factory.trusts(self.client_ip):
                forwarded_proto = self._value(b"x-forwarded-proto")
                forwarded_host = self._value(b"x-forwarded-host")
            else:
                forwarded_for = None
        if forwarded_for is not None:
            parts += (b"X-Forwarded-For: ", forwarded_for, b", ", self.client_ip_bytes, b"\r\n")
        else:
            parts += (b"X-Forwarded-For: ", self.client_ip_bytes, b"\r\n")
        parts += (
            b"X-Forwarded-Proto: ",
            forwarded_proto or self.factory.scheme_bytes,
            b"\r\nX-Forwarded-Host: ",
            forwarded_host or raw_host,
            b"\r\n",
        )
        if user is not None:
            parts += (b"X-Prevu-User: ", user, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _local(
        self, status: int, title: str, message: str, host: str, head_only: bool
    ) -> _LocalReply:
        close = status != 404 or not self.parser.should_keep_alive()
        data = simple_response(
            status, page(status, title, message, host), close=close, head_only=head_only
        )
        return _LocalReply(data, close)

    def _not_ready(self, route: Route, host: str, head_only: bool) -> _LocalReply:
        retry = self.factory.settings.retry_after
        if route.state == "sleeping":
            self.factory.waker.wake(route)
            message = "This preview was asleep and is waking up. This page refreshes by itself."
        else:
            message = "This preview is being built. This page refreshes by itself."
        close = not self.parser.should_keep_alive()
        data = simple_response(
            503,
            waiting_page(host, message, retry),
            [(b"Retry-After", b"%d" % retry)],
            close=close,
            head_only=head_only,
        )
        return _LocalReply(data, close)

    def _begin(self, item: Exchange | _LocalReply) -> None:
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
        if self.closed:
            return
        if not keep_alive or exchange is self.upgrading:
            self.close_after_write()
            return
        self._next()

    def _next(self) -> None:
        if self.pending:
            self._begin(self.pending.popleft())
            if not self.pending and self.current is None:
                self._resume()
            return
        self._resume()
        self.set_deadline("head" if self.in_head else "idle")

    def body_too_large(self, exchange: Exchange) -> None:
        """The request body went over `max_body`."""
        self.receiving = None
        if exchange is self.current:
            exchange.fail(413, "Content Too Large", "The request body is too large.")
            exchange.abort()
        self.close_after_write()

    def _finish_with_close(self) -> None:
        if self.current is None and not self.pending:
            self.close_after_write()
        else:
            self.pending.append(_LocalReply(b"", close=True))
            self._pause()

    def start_tunnel(self, exchange: Exchange, connection: UpstreamConnection) -> None:
        """Switch to splicing raw bytes both ways (after a 101 response)."""
        self.tunnel = connection
        self.upgrading = None
        self.current = None
        self.deadline_kind = ""
        client: Any = self.transport
        upstream: Any = connection.transport
        # Each side slows the other down when it cannot keep up.
        if exchange.producing_to_client:
            exchange.producing_to_client = False
            client.unregisterProducer()
        client.registerProducer(upstream, True)
        upstream.registerProducer(client, True)

    def close(self) -> None:
        """Drop the connection now (mid-response failures)."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abortConnection()

    def close_after_write(self) -> None:
        """Close once what was written has been sent."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.loseConnection()

    # --- flow control and deadlines -------------------------------------------

    def _pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read again after the upstream's backpressure let go (unless pipelining holds us)."""
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.resumeProducing()

    def _resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resumeProducing()

    def set_deadline(self, kind: str) -> None:
        """
        Start the clock for `kind` ("idle", "head", "response" or "body").

        No clock is read here: the sweep adds up how long it found the
        connection quiet, which costs one store per event.
        """
        self.deadline_kind = kind
        self.quiet_time = 0.0

    def check_deadline(self, elapsed: float) -> None:
        """Called by the sweep `elapsed` seconds after the last one: act on an expired deadline."""
        kind = self.deadline_kind
        if not kind or self.closed:
            return
        self.quiet_time += elapsed
        settings = self.factory.settings
        if kind == "response":
            timeout = settings.response_timeout
        elif kind == "head":
            timeout = settings.head_timeout
        else:
            timeout = settings.idle_timeout
        if self.quiet_time < timeout:
            return
        self.deadline_kind = ""
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
        if self.current is not None:
            # An answer is in progress; the broken request follows it by closing.
            self.pending.clear()
            self.pending.append(
                _LocalReply(simple_response(status, page(status, title, message), close=True), True)
            )
            self._pause()
            return
        self.write(simple_response(status, page(status, title, message), close=True))
        self.close_after_write()


@frozen
class _LocalReply:
    """A response prevu writes itself, in its turn among pipelined requests."""

    data: bytes
    close: bool


def _hook_reply(reply: Reply, keep_alive: bool, head_only: bool) -> _LocalReply:
    """The answer an interceptor or the gate gave, framed for this connection."""
    data = simple_response(
        reply.status, reply.body, reply.headers, close=not keep_alive, head_only=head_only
    )
    return _LocalReply(data, close=not keep_alive)


class _Refused(Exception):
    """Raised inside the parser to refuse a request with a status."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def _origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """Split an absolute-form target (http://host/path) into path and host."""
    lower = target[:8].lower()
    for prefix in (b"http://", b"https://"):
        if lower.startswith(prefix):
            rest = target[len(prefix) :]
            slash = rest.find(b"/")
            if slash == -1:
                return b"/", rest or None
            return rest[slash:], rest[:slash] or None
    if target == b"*":
        return target, None
    return target, None


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
        self.settings = settings or ProxySettings()
        self.gate = gate or OpenGate()
        self.interceptors = interceptors
        self.waker = waker or NoWaker()
        self.pool = UpstreamPool(
            reactor,
            self.settings.connect_timeout,
            idle_timeout=min(60.0, self.settings.idle_timeout),
            direct_write=self.settings.direct_write,
        )
        self.connections: set[ClientConnection] = set()
        self.per_client: dict[str, int] = {}
        # Preview id -> time of its last proxied request (shared by the http and
        # https proxies; read by prevu.idle).
        self.last_seen: dict[str, float] = activity if activity is not None else {}
        self.host_names: dict[bytes, str] = {}
        self.scheme_bytes = self.settings.scheme.encode()
        self.requests = 0
        self._sweeper: LoopingCall | None = None

    def buildProtocol(self, addr: Any) -> ClientConnection | None:  # type: ignore[override]
        client_ip = getattr(addr, "host", "") or "unix"
        settings = self.settings
        count = self.per_client.get(client_ip, 0)
        if len(self.connections) >= settings.max_connections or (
            # A trusted proxy (a load balancer in front) carries many clients.
            count >= settings.max_connections_per_client and not self.trusts(client_ip)
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

    def host_name(self, raw_host: bytes) -> str:
        """The route lookup key for a Host value (cached: clients repeat themselves)."""
        host = self.host_names.get(raw_host)
        if host is None:
            if len(self.host_names) >= 4096:
                self.host_names.clear()
            host = self.host_names[raw_host] = normalize_host(raw_host.decode("latin-1"))
        return host

    def trusts(self, client_ip: str) -> bool:
        """Whether `client_ip` is a trusted proxy whose X-Forwarded-For is extended."""
        if not self.settings.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(address in network for network in self.settings.trusted_proxies)

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
