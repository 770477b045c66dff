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
import re
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
from prevu.proxy.fastpath import direct_writer, supported
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
_SPECIAL_FIRST = frozenset(
    letter
    for name in (*_SPECIAL, b"host", b"forwarded", b"x-real-ip", b"x-forwarded-", b"x-prevu-")
    for letter in (name[0], name[:1].upper()[0])
)
_NONE: tuple[bytes, ...] = ()
# Never passed on from a client, in any spelling (`_` for `-` included): they
# claim an identity or an origin that only prevu may state.
_SPOOF_PREFIXES = (b"x-forwarded-", b"x-prevu-")
_SPOOF_NAMES = frozenset({b"forwarded", b"x-real-ip"})
_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
# Host: a reg-name, IPv4 or [IPv6] literal, and an optional port (RFC 9110 §7.2).
_HOST = re.compile(rb"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::[0-9]{1,5})?$")


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
        self.max_head = factory.settings.max_head
        self.quiet_limit = 2 * self.max_head
        self.parser = httptools.HttpRequestParser(self)
        self.current: Exchange | None = None  # being answered
        self.receiving: Exchange | None = None  # request body being read
        self.pending: deque[Exchange | _LocalReply] = deque()
        self.tunnel: UpstreamConnection | None = None
        self.upgrading: Exchange | None = None
        self.closed = False
        self.refusing = False  # an answer queued will close: serve no later request
        # Why reading from the client is held back, if it is: "pipeline" (a
        # request waits its turn), "write" (the client does not read its
        # answers), "upload" (the upstream does not take the body),
        # "connecting" (no upstream connection yet for the body), "upgrade"
        # (bytes after an Upgrade head wait for the 101).
        self.holds: set[str] = set()
        self.reading = True
        self.write_blocked = False
        self.upload_producer = _UploadProducer(self)
        self.deadline_kind = ""
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
        # This connection is the producer of everything written to the client:
        # when the client stops reading, it stops reading requests and stops
        # the upstream it relays from.
        transport.registerProducer(self, True)
        self.set_deadline("idle")

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return  # closing: what the client still sends is dropped
        if self.tunnel is not None:
            self.quiet_time = 0.0
            self.tunnel.write(data)
            return
        if self.upgrading is not None:
            self.upgrading.tunnel_data(data)
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
        self.quiet_bytes = 0
        if self.current is None:
            self.set_deadline("head")

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.factory.settings.max_target:
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
        if name[0] in _SPECIAL_FIRST or b"_" in name:
            lower = name.lower()
            if b"_" in lower:
                # Some servers read `_` as `-`: never let X-Prevu_User or
                # Content_Length through in any role.
                normal = lower.replace(b"_", b"-")
                if normal in _SPECIAL or normal == b"host" or _spoofing(normal):
                    return
            elif lower == b"host":
                self.hosts.append(value)
                return
            elif lower in _SPECIAL:
                special = self.special
                if special is None:
                    special = self.special = {}
                special.setdefault(lower, []).append(value)
                return
            elif (lower[:2] == b"x-" or lower in _SPOOF_NAMES) and _spoofing(lower):
                return
        self.headers += (name, b": ", value, b"\r\n")

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A request trailer: bounded, and filtered by the rules of headers."""
        self.trailer_bytes += len(name) + len(value) + 4
        if self.trailer_bytes > self.factory.settings.max_head:
            raise _Refused(
                431, "Request Header Fields Too Large", "The request trailers are too large."
            )
        normal = name.lower().replace(b"_", b"-")
        if normal in _SPECIAL or normal == b"host" or _spoofing(normal):
            return
        self.trailers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.closed or self.refusing:
            # The connection is closing (an answer said so): nothing more is served.
            self._reset_head()
            return
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
            self.hold_reading("pipeline", True)

    def on_body(self, body: bytes) -> None:
        self.quiet_bytes = 0
        exchange = self.receiving
        if exchange is not None and not self.closed and not self.refusing:
            exchange.request_body(body)
            if self.current is exchange:
                self.set_deadline("body")

    def on_message_complete(self) -> None:
        self.quiet_bytes = 0
        exchange = self.receiving
        self.receiving = None
        trailers, self.trailers = self.trailers, []
        self.trailer_bytes = 0
        if exchange is not None and not exchange.finished and not self.closed:
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
        if target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS"):
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
        if not host:
            return self._local(
                400, "Bad Request", "The Host header is not a host name.", "", head_only
            )
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
                return _hook_reply(reply, not self._must_close(), head_only)

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
                return _hook_reply(decision, not self._must_close(), head_only)
            if decision.user is not None:
                user = decision.user.encode("utf-8")
        if route.state != "ready" or route.upstream is None:
            return self._not_ready(route, host, head_only)

        # An upgrade exactly when llhttp treats the request as one, so that the
        # two never disagree about where the HTTP stream ends.
        upgrade = bool(parser.should_upgrade())
        if upgrade and (chunked or content_length):
            # llhttp hands everything after an Upgrade head to the new protocol,
            # so a body here has no safe meaning.
            return self._local(
                400, "Bad Request", "An Upgrade request cannot carry a body.", host, head_only
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
            trusted=route.trusted,
        )

    def _headers_for_hooks(self, raw_host: bytes) -> list[tuple[bytes, bytes]]:
        """
        What interceptors and the gate see, names in lower case: the forwarded
        headers plus Host, cookies, the bypass token and the client's
        X-Forwarded-* (whether to believe those is the hook's call).
        """
        pieces = self.headers
        seen = [(b"host", raw_host)]
        seen += [(pieces[i].lower(), pieces[i + 2]) for i in range(0, len(pieces), 4)]
        for name in (b"cookie", b"x-prevu-bypass", *_FORWARDED):
            seen += [(name, value) for value in self._values(name)]
        return seen

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
            if self.factory.trusts(self.client_ip):
                forwarded_for = self._value(b"x-forwarded-for")
                forwarded_proto = self._value(b"x-forwarded-proto")
                forwarded_host = self._value(b"x-forwarded-host")
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
        close = status != 404 or self._must_close()
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
        close = self._must_close()
        data = simple_response(
            503,
            waiting_page(host, message, retry),
            [(b"Retry-After", b"%d" % retry)],
            close=close,
            head_only=head_only,
        )
        return _LocalReply(data, close)

    def _must_close(self) -> bool:
        """Whether a reply prevu writes itself must close the connection."""
        if not self.parser.should_keep_alive():
            return True
        # The client waits for 100 Continue before sending its body, which will
        # now never be read: only closing keeps the two sides in step.
        expect = self._value(b"expect")
        return expect is not None and b"100-continue" in expect.lower()

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
        reply = _LocalReply(simple_response(413, too_large, close=True), close=True)
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
        self.refusing = True

    def _finish_with_close(self) -> None:
        if self.current is None and not self.pending:
            self.close_after_write()
        else:
            self.pending.append(_LocalReply(b"", close=True))
            self.closed_for_reading()

    def start_tunnel(self, exchange: Exchange, connection: UpstreamConnection) -> None:
        """Switch to splicing raw bytes both ways (after a 101 response)."""
        self.tunnel = connection
        self.upgrading = None
        self.current = None
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

    def close(self) -> None:
        """Drop the connection now (mid-response failures)."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abortConnection()

    def close_after_write(self) -> None:
        """Close once what was written has been sent (or after `idle_timeout` at most)."""
        if not self.closed and self.transport is not None:
            self.closed = True
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
        self.closed = True

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
        if not kind:
            return
        if self.closed:
            if kind == "closing":
                self.quiet_time += elapsed
                if self.quiet_time >= self.factory.settings.idle_timeout:
                    # A client that never reads its last answer, or never closes
                    # its side, keeps nothing alive for long.
                    self.deadline_kind = ""
                    self.transport.abortConnection()
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
                _LocalReply(simple_response(status, page(status, title, message), close=True), True)
            )
            self.closed_for_reading()
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


def _spoofing(lower: bytes) -> bool:
    """A client header that claims an identity or origin only prevu may state."""
    return lower in _SPOOF_NAMES or lower.startswith(_SPOOF_PREFIXES)


class _UploadProducer:
    """Registered on an upstream transport: a slow upstream holds back reading the client."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client

    def pauseProducing(self) -> None:
        self.client.hold_reading("upload", True)

    def resumeProducing(self) -> None:
        self.client.hold_reading("upload", False)

    def stopProducing(self) -> None:
        # The upstream connection is going away; the exchange handles that.
        self.client.hold_reading("upload", False)


class _Refused(Exception):
    """Raised inside the parser to refuse a request with a status."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def _origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """Split an absolute-form target (http://host/path?q) into origin form and host."""
    lower = target[:8].lower()
    for prefix in (b"http://", b"https://"):
        if lower.startswith(prefix):
            rest = target[len(prefix) :]
            end = min(
                (i for i in (rest.find(c) for c in (b"/", b"?", b"#")) if i != -1),
                default=len(rest),
            )
            host, path = rest[:end], rest[end:]
            if path[:1] != b"/":
                path = b"/" + path
            return path.partition(b"#")[0], host or None
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
        """
        The route lookup key for a Host value, "" when it is not a host name.

        Cached: clients repeat themselves, and this runs for every request.
        """
        host = self.host_names.get(raw_host)
        if host is None:
            if len(self.host_names) >= 4096:
                self.host_names.clear()
            valid = _HOST.match(raw_host) is not None
            host = normalize_host(raw_host.decode("latin-1")) if valid else ""
            self.host_names[raw_host] = host
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
