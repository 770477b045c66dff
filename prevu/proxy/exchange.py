"""
One request and its response, relayed between a client and an upstream.

An `Exchange` is created by the client connection when a request head has
been parsed. It forwards the head and streams the body to an upstream
connection from the pool, then relays the response back: 1xx interim
responses, the head with hop-by-hop headers removed, the body re-framed for
the client (Content-Length kept, chunked re-chunked, close-delimited turned
into chunked for HTTP/1.1 clients), and trailers. Backpressure goes both
ways through Twisted's producer/consumer interfaces. No Deferreds and no log
events on the happy path: this is the proxy's hot path.
"""

from __future__ import annotations

import httptools
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.logger import Logger
from twisted.python.failure import Failure

from prevu.proxy.admission import Forward
from prevu.proxy.contracts import ClientSide, UpstreamLink
from prevu.proxy.forwarding import HeaderPieces, without_headers
from prevu.proxy.framing import Framing, delimited_by_close, response_framing
from prevu.proxy.http import (
    HOP_BY_HOP,
    LAST_CHUNK,
    chunk,
    connection_tokens,
    page,
    reason,
    simple_response,
)
from prevu.proxy.pages import crashed_page, robots
from prevu.proxy.upstream import HeadResponseDone, ResponseTooLarge

log = Logger()

# Methods that may be sent again on a fresh connection when a pooled one
# turns out to be closed before any response byte arrived (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Response headers the proxy frames itself.
_RESPONSE_OWN = HOP_BY_HOP | {b"content-length", b"trailer"}
_OWN_LENGTHS = frozenset(len(name) for name in (*_RESPONSE_OWN, b"set-cookie"))


class Exchange:
    """A request forwarded upstream and its response relayed back."""

    # Defaults live on the class: most exchanges never change most of them,
    # and not setting them per request is measurably cheaper.
    connection: UpstreamLink | None = None
    ready = False
    backlog: list[bytes] | None = None  # request bytes waiting for the upstream connection
    received = 0
    request_done = False
    sent_any_body = False
    retried = False

    status = 0
    reason = b""
    # The response head for the client, as pieces to join.
    response_headers: HeaderPieces
    response_close = False
    connection_listed: frozenset[bytes] | None = None  # headers the upstream's Connection names
    response_length: int | None = None
    response_chunked = False
    trailers: list[tuple[bytes, bytes]] | None = None
    in_trailers = False
    started = False  # response head sent to the client
    framing: Framing = "none"  # prevu.proxy.framing; set with the response head
    until_close = False  # the upstream delimits the body by closing
    complete = False
    reusable = False
    finished = False
    upstream_paused = False  # the client's backpressure paused the upstream connection
    head_size = 0  # bytes of response head, then of trailers: bounded by max_head
    tunnel_backlog: list[bytes] | None = None  # client bytes after an Upgrade head, until 101

    def __init__(self, client: ClientSide, forward: Forward) -> None:
        self.client = client
        self.method = method = forward.method
        self.head = forward.head
        self.upstream_address = forward.upstream
        self.host = forward.host
        self.chunked = chunked = forward.chunked
        self.content_length = forward.content_length
        self.keep_alive = forward.keep_alive
        self.client_http11 = forward.client_http11
        self.upgrade = forward.upgrade
        self.trusted = forward.trusted
        self.forward = forward
        self.head_only = method == b"HEAD"
        self.has_body = chunked or bool(forward.content_length)
        self.out: list[bytes] = []
        self.response_parser = httptools.HttpResponseParser(self)

    # --- request side (called by the client connection) ---------------------

    def start(self) -> None:
        """Get an upstream connection and send the head (and any buffered body)."""
        self.client.set_deadline("response")
        self.connection = self.client.acquire_upstream(self.upstream_address.key, self)
        if self.connection.connected_:
            self.upstream_ready(self.connection)

    def upstream_ready(self, connection: UpstreamLink) -> None:
        """The upstream connection is open: write what we have."""
        self.ready = True
        if self.backlog:
            connection.write(b"".join([self.head, *self.backlog]))
            self.backlog = None
        else:
            connection.write(self.head)
        if self.has_body:
            if not self.request_done:
                # Stream the rest of the body with backpressure toward the upstream.
                connection.transport.registerProducer(self.client.upload_producer, True)
            self.client.upstream_opened()

    def request_body(self, data: bytes) -> None:
        """A piece of the request body from the client."""
        self.received += len(data)
        if self.received > self.client.max_body:
            self.client.body_too_large(self)
            return
        framed = chunk(data) if self.chunked else data
        self.sent_any_body = True
        if self.ready and self.connection is not None:
            self.connection.write(framed)
        else:
            self._hold(framed)
            # Not connected yet: keep at most a little of the body in memory.
            self.client.hold_reading("connecting", self.received > 65536)

    def request_complete(self, trailers: list[bytes]) -> None:
        """The client's request ended (with trailer pieces for a chunked body)."""
        self.request_done = True
        if self.chunked:
            self._to_upstream(b"0\r\n" + b"".join(trailers) + b"\r\n" if trailers else LAST_CHUNK)
        if (
            self.has_body
            and self.ready
            and self.connection is not None
            and self.connection.transport is not None
        ):
            self.connection.transport.unregisterProducer()
            self.client.hold_reading("upload", False)
        if self.has_body and self.status == 0:
            # The whole body is out: from now on the upstream owes a response.
            self.client.set_deadline("response")

    def tunnel_data(self, data: bytes) -> None:
        """
        Bytes the client sent after an Upgrade request head.

        They are only spliced once the upstream has answered 101: until then
        they are held (and the client not read), and a refusal drops them.
        """
        if self.connection is not None and self.connection.tunnel:
            self.connection.write(data)
            return
        if self.tunnel_backlog is None:
            self.tunnel_backlog = []
        self.tunnel_backlog.append(data)
        self.client.hold_reading("upgrade", True)

    def _to_upstream(self, data: bytes) -> None:
        if self.ready and self.connection is not None:
            self.connection.write(data)
        else:
            self._hold(data)

    def _hold(self, data: bytes) -> None:
        if self.backlog is None:
            self.backlog = [data]
        else:
            self.backlog.append(data)

    # --- response side (called by the upstream connection's parser) ---------

    def on_status(self, text: bytes) -> None:
        if self.complete:
            # A second response on the same read: the upstream is out of step.
            self.reusable = False
            return
        if self.status and not self.response_headers:
            # The status line arrived in pieces: llhttp calls on_status per piece.
            self.reason += text
            return
        status = self.status = self.response_parser.get_status_code()
        self.reason = text or reason(status)
        self.response_headers = []
        self.connection_listed = None
        self.response_close = False
        self.response_length = None
        self.response_chunked = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_trailers or self.complete:
            self._late_header(name, value)
            return
        # Only names of these lengths can be headers the proxy frames itself:
        # most headers skip the lower-casing.
        if len(name) in _OWN_LENGTHS:
            lower = name.lower()
            if lower in _RESPONSE_OWN:
                self._own_header(lower, name, value)
                return
            if (
                lower == b"set-cookie"
                and not self.trusted
                and value.lstrip()[:6].lower() == b"prevu_"
            ):
                # A preview may not set prevu's own cookies (session fixation,
                # forced logout): only prevu's control app does.
                return
        self.response_headers += (name, b": ", value, b"\r\n")

    def _late_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.client.max_head:
            raise ResponseTooLarge("response trailers too large")
        if self.trailers is None:
            self.trailers = []
        self.trailers.append((name, value))

    def _own_header(self, lower: bytes, name: bytes, value: bytes) -> None:
        if lower == b"content-length":
            self.response_length = int(value)
        elif lower == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                # Another coding would be lost in re-chunking: refuse to relay it.
                raise ResponseTooLarge("transfer coding other than chunked")
            self.response_chunked = True
        elif lower == b"connection":
            token = value.lower()
            if token == b"keep-alive":
                return
            if token == b"close":
                self.response_close = True
                return
            tokens = connection_tokens([value])
            if b"close" in tokens:
                self.response_close = True
            listed = tokens - {b"close", b"keep-alive", b"upgrade"}
            if listed:
                self.connection_listed = (self.connection_listed or frozenset()) | listed
        elif lower == b"upgrade" and self.upgrade:
            self.response_headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self.status
        headers = self.response_headers
        if self.connection_listed:
            headers = without_headers(headers, self.connection_listed)
        self.head_size = 0  # from here on it counts trailers (see UpstreamConnection)
        if status < 200 and status != 101:
            # Interim response (100 Continue, 103 Early Hints): pass it on, wait for more.
            if self.client_http11:
                self.out.append(_head(status, self.reason, headers))
            self.client.set_deadline("response")
            return
        if status == 101:
            if not self.upgrade:
                # A 101 nobody asked for would turn the client's connection into a tunnel.
                raise ResponseTooLarge("101 to a request that did not ask to upgrade")
            headers.append(b"Connection: Upgrade\r\n")
            self.out.append(_head(101, self.reason, headers))
            return
        if self.upgrade:
            # The upstream refused the upgrade: the client's stream is in an unknown state.
            self.keep_alive = False
        length = self.response_length
        framing = self.framing = response_framing(
            self.head_only, status, length, self.response_chunked, self.client_http11
        )
        self.until_close = delimited_by_close(framing, length, self.response_chunked)
        if framing == "chunked":
            headers.append(b"Transfer-Encoding: chunked\r\n")
        elif framing == "close":
            self.keep_alive = False
        elif length is not None:  # "length", or "none" with the representation's length
            headers.append(b"Content-Length: %d\r\n" % length)
        # b"X-Robots-Tag: noindex\r\n" for a noindex route, else b"": encoded
        # when the route was installed (prevu.routing.Route.response_headers).
        route_headers = self.forward.route.response_headers
        if route_headers:
            headers.append(route_headers)
        if not self.keep_alive or (not self.request_done and not self.upgrade):
            headers.append(b"Connection: close\r\n")
            self.keep_alive = False
        elif not self.client_http11:
            headers.append(b"Connection: keep-alive\r\n")
        self.out.append(_head(status, self.reason, headers))
        self.started = True
        self.client.set_deadline("body")
        self.in_trailers = self.response_chunked
        if self.head_only:
            self.on_response_complete(self.response_parser.should_keep_alive())
            raise HeadResponseDone()

    def on_body(self, data: bytes) -> None:
        if self.complete or not data:
            return
        if self.framing == "chunked":
            self.out.append(chunk(data))
        elif self.framing != "none":
            self.out.append(data)

    def on_message_complete(self) -> None:
        self.on_response_complete(self.response_parser.should_keep_alive())

    def on_response_complete(self, upstream_keep_alive: bool) -> None:
        if self.complete:
            return
        if self.status < 200:
            if self.status != 101:  # interim: the final response follows
                self.status = 0
            return
        if self.framing == "chunked":
            if self.trailers:
                self.out.append(
                    b"0\r\n" + b"".join(b"%s: %s\r\n" % t for t in self.trailers) + b"\r\n"
                )
            else:
                self.out.append(LAST_CHUNK)
        self.complete = True
        self.reusable = (
            upstream_keep_alive
            and not self.response_close
            and self.request_done
            and not self.upgrade
        )

    def flush_to_client(self) -> None:
        """Write what the parser produced; finish the exchange if the response ended."""
        out = self.out
        if out:
            self.out = []
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
            if self.client.write_blocked and not self.complete:
                # The client is not keeping up: stop reading the upstream until it does.
                self.pause_upstream()
        if self.complete:
            self._finish_response()
        elif self.started:
            # Only bytes after the head count as progress: an endless head is no
            # answer (and is cut at max_head).
            self.client.set_deadline("body")

    def response_complete(self, reusable: bool) -> None:
        """A HEAD response ended (the parser was reset)."""
        self.reusable = self.reusable and reusable
        self.flush_to_client()

    def pause_upstream(self) -> None:
        """The client's buffer is full: stop reading the upstream (backpressure)."""
        connection = self.connection
        if connection is not None and connection.transport is not None and not self.upstream_paused:
            self.upstream_paused = True
            connection.transport.pauseProducing()

    def resume_upstream(self) -> None:
        """The client caught up: read the upstream again."""
        connection = self.connection
        if self.upstream_paused and connection is not None and connection.transport is not None:
            self.upstream_paused = False
            connection.transport.resumeProducing()

    def _finish_response(self) -> None:
        connection = self.connection
        if self.upstream_paused:
            self.resume_upstream()  # an idle pooled connection must read
        self.connection = None
        if connection is not None:
            if self.reusable and connection.connected_:
                self.client.release_upstream(connection)
            else:
                connection.abort()
        self.finished = True
        self.client.exchange_finished(self, self.keep_alive)

    # --- upgrades -------------------------------------------------------------

    def upstream_upgraded(self, rest: bytes) -> None:
        """The upstream answered 101: splice the two connections."""
        connection = self.connection
        if connection is None:
            return
        self.flush_to_client()
        connection.tunnel = True
        backlog, self.tunnel_backlog = self.tunnel_backlog, None
        self.client.start_tunnel(self, connection)
        if rest:
            self.client.write(rest)
        for data in backlog or ():
            connection.write(data)

    def tunnel_received(self, data: bytes) -> None:
        """Bytes from the upgraded upstream: relayed to the client as they come."""
        self.client.tunnel_activity()
        self.client.write(data)

    # --- failures -------------------------------------------------------------

    def upstream_connect_failed(self, timed_out: bool, reason_: Failure) -> None:
        self.connection = None
        if timed_out:
            self.fail(504, "Gateway Timeout", "The preview did not accept a connection in time.")
        elif self.forward.route.preview is not None:
            # A preview's container that refuses (or vanished): its app stopped
            # or crashed. Say so, as the route table knows it is a preview.
            self.fail_with_page()
        elif reason_.check(ConnectionRefusedError):
            self.fail(502, "Bad Gateway", "The preview refused the connection.")
        else:
            self.fail(502, "Bad Gateway", "The preview could not be reached.")

    def upstream_invalid(self, why: str) -> None:
        log.warn(
            "bad response from {upstream} for {host}: {why}",
            upstream=self.upstream_address,
            host=self.host,
            why=why,
        )
        connection = self.connection
        self.connection = None
        if connection is not None:
            connection.abort()
        self.fail(502, "Bad Gateway", "The preview sent an invalid response.")

    def upstream_lost(self, connection: UpstreamLink, why: Failure) -> None:
        """The upstream connection closed while this exchange used it."""
        if self.finished or connection is not self.connection:
            return
        self.connection = None
        if connection.tunnel:
            self.client.close()
            return
        if self.started and self.until_close:
            # A close-delimited response ends here.
            self.on_response_complete(False)
            self.flush_to_client()
            return
        if (
            not self.status
            and connection.reused
            and not self.retried
            and (
                self.method in IDEMPOTENT
                and not self.sent_any_body
                and self.content_length in (None, 0)
                and not self.chunked
            )
        ):
            # A stale pooled connection: send the request again on a fresh one.
            self.retried = True
            self.ready = False
            self.response_parser = httptools.HttpResponseParser(self)
            self.start()
            return
        if self.started:
            # Mid-body: the client cannot be told; cut its connection too.
            self.client.close()
            return
        if why.check(ConnectionDone) is None:
            self.fail(502, "Bad Gateway", "The preview closed the connection.")
        else:
            self.fail(502, "Bad Gateway", "The preview closed the connection without answering.")

    def timed_out(self) -> None:
        """The response (or its next byte) did not come in time."""
        connection = self.connection
        self.connection = None
        if connection is not None:
            connection.abort()
        if self.started:
            self.client.close()
        else:
            self.fail(504, "Gateway Timeout", "The preview did not answer in time.")

    def fail(self, status: int, title: str, message: str) -> None:
        """Answer the client with an error page instead of the upstream's response."""
        if self.finished:
            return
        if self.started:
            # Part of the response is out: the client can only learn of it by a cut.
            self.abort()
            self.client.close()
            return
        self.finished = True
        body = page(status, title, message, self.host)
        headers = robots(self.forward.route)
        self.client.write(
            simple_response(status, body, headers, close=True, head_only=self.head_only)
        )
        self.client.exchange_finished(self, False)

    def fail_with_page(self) -> None:
        """Answer with the honest 503 of a preview whose app does not answer (`pages`)."""
        if self.finished or self.started:
            self.fail(502, "Bad Gateway", "The preview could not be reached.")
            return
        self.finished = True
        forward = self.forward
        reply = crashed_page(forward.route, self.host, forward.user, self.client.links)
        self.client.write(
            simple_response(
                reply.status, reply.body, reply.headers, close=True, head_only=self.head_only
            )
        )
        self.client.exchange_finished(self, False)

    def abort(self) -> None:
        """The client went away: cancel the upstream request."""
        self.finished = True
        connection = self.connection
        self.connection = None
        if connection is not None:
            connection.abort()


def _head(status: int, text: bytes, pieces: HeaderPieces) -> bytes:
    """A response head from its status and the header pieces (name, ": ", value, CRLF...)."""
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, text, b"".join(pieces))


class UploadProducer:
    """
    Registered on an upstream transport while a request body streams to it:
    a slow upstream holds back reading the client (backpressure).
    """

    def __init__(self, client: ClientSide) -> None:
        self.client = client

    def pauseProducing(self) -> None:
        self.client.hold_reading("upload", True)

    def resumeProducing(self) -> None:
        self.client.hold_reading("upload", False)

    def stopProducing(self) -> None:
        # The upstream connection is going away; the exchange handles that.
        self.client.hold_reading("upload", False)
