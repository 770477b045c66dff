"""The proxy against real upstream servers on loopback: behaviour and edge cases."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import pytest_twisted
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from prevu.proxy.deadlines import Timeouts
from prevu.proxy.server import ProxyFactory, ProxySettings
from prevu.routing import Route, RouteRegistry, Upstream
from tests.support.net import (
    ScriptedServer,
    ScriptedUpstream,
    answer_each_head,
    connect_raw,
    reactor_,
    sleep,
    split_responses,
    websocket_echo,
    within,
    ws_frame,
    ws_parse,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Proxy:
    """A ProxyFactory listening on 127.0.0.1 with a RouteRegistry to fill."""

    def __init__(self, settings: ProxySettings | None = None, **kwargs: Any) -> None:
        self.routes = RouteRegistry()
        self.factory = ProxyFactory(reactor_(), self.routes, settings or ProxySettings(), **kwargs)
        self.listening = reactor_().listenTCP(0, self.factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    def route(self, host: str, port: int, **kwargs: Any) -> None:
        self.routes.put("static", Route(host, Upstream("127.0.0.1", port), **kwargs))

    async def stop(self) -> None:
        for connection in list(self.factory.connections):
            connection.close()
        await self.listening.stopListening()


async def started(*servers: ScriptedServer) -> list[int]:
    return [server.listen() for server in servers]


async def through_proxy(
    script: Any, host: str = "app.test", settings: ProxySettings | None = None, **kwargs: Any
) -> tuple[Proxy, ScriptedServer, Any]:
    """An upstream running `script`, a proxy routing `host` to it, and a client connected."""
    upstream = ScriptedServer(script)
    (port,) = await started(upstream)
    proxy = Proxy(settings, **kwargs)
    proxy.route(host, port)
    client = await connect_raw(proxy.port)
    return proxy, upstream, client


async def stop_all(*things: Any) -> None:
    for thing in things:
        await thing.stop()


def get(host: bytes, path: bytes = b"/", extra: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n"


# --- headers (request header and routing policy: test_proxy_policy.py) ---------


@pytest_twisted.ensureDeferred
async def test_repeated_response_headers_are_all_kept() -> None:
    """Two Set-Cookie headers both reach the client; hop-by-hop response headers do not."""
    proxy, upstream, client = await through_proxy(
        answer_each_head(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: X-Secret\r\n"
            b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok"
        ),
        "app.test",
    )
    client.send(get(b"app.test"))
    data = await client.wait_for(lambda d: d.endswith(b"ok"))
    [(status, headers, body)] = split_responses(data)
    assert status == 200 and body == b"ok"
    assert headers[b"set-cookie"] == [b"a=1", b"b=2"]
    assert b"x-secret" not in headers and b"keep-alive" not in headers
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_unknown_host_is_404_refused_is_502_and_stuck_is_504() -> None:
    """Error codes: unknown host 404, refused upstream 502, silent upstream 504."""
    silent = ScriptedServer(lambda connection, data: None)
    (silent_port,) = await started(silent)
    closed = ScriptedServer(lambda c, d: None)
    (closed_port,) = await started(closed)
    await closed.stop()  # nothing listens there now
    proxy = Proxy(ProxySettings(timeouts=Timeouts(response=1.0)))
    proxy.route("refused.test", closed_port)
    proxy.route("silent.test", silent_port)

    for host, status in ((b"nowhere.test", 404), (b"refused.test", 502), (b"silent.test", 504)):
        client = await connect_raw(proxy.port)
        client.send(get(host))
        data = await client.wait_for(lambda d: b"</html>" in d, seconds=5)
        assert data.startswith(b"HTTP/1.1 %d " % status), data[:80]
        assert host.decode().encode() in data  # the page names the host
        assert b"Traceback" not in data
    await stop_all(proxy, silent)


# --- keep-alive, pooling, pipelining --------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_hundred_requests_on_one_connection_reuse_upstream_connections() -> None:
    """200 keep-alive requests from one client use one pooled upstream connection."""
    proxy, upstream, client = await through_proxy(answer_each_head(OK), "app.test")
    for _ in range(200):
        client.send(get(b"app.test"))
        await client.wait_for(lambda d: d.endswith(b"ok"))
        client.take()
    assert len(upstream.connections) == 1
    assert proxy.factory.pool.connects == 1
    assert not client.is_closed
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order() -> None:
    """Three pipelined requests to two upstreams come back in request order."""
    slow = ScriptedServer(
        lambda c, d: reactor_().callLater(
            0.2, c.transport.write, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
        )
    )
    fast = ScriptedServer(answer_each_head(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast"))
    slow_port, fast_port = await started(slow, fast)
    proxy = Proxy()
    proxy.route("slow.test", slow_port)
    proxy.route("fast.test", fast_port)
    client = await connect_raw(proxy.port)
    client.send(get(b"slow.test") + get(b"fast.test") + get(b"nowhere.test"))
    data = await client.wait_for(lambda d: d.count(b"HTTP/1.1 ") == 3 and d.endswith(b"</html>\n"))
    bodies = [(status, body[:4]) for status, _, body in split_responses(data)]
    assert bodies == [(200, b"slow"), (200, b"fast"), (404, b"<!do")]
    await stop_all(proxy, slow, fast)


@pytest_twisted.ensureDeferred
async def test_http10_client_gets_a_close_delimited_answer() -> None:
    """An HTTP/1.0 client gets the body and the connection closed after it."""
    proxy, upstream, client = await through_proxy(
        answer_each_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        "app.test",
    )
    client.send(b"GET / HTTP/1.0\r\nHost: app.test\r\n\r\n")
    await within(client.closed, 5)
    head, _, body = bytes(client.received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" not in head.lower()
    assert body == b"hello"
    assert b"HTTP/1.1\r\n" in upstream.received  # spoken upstream as HTTP/1.1
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_head_204_and_304_have_no_body_and_the_connection_is_reused() -> None:
    """HEAD, 204 and 304 answers carry no body; both connections stay in use."""

    def script(connection: ScriptedUpstream, data: bytes) -> None:
        while b"\r\n\r\n" in connection.buffer:
            head, _, connection.buffer = connection.buffer.partition(b"\r\n\r\n")
            if head.startswith(b"HEAD"):
                connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif b" /204 " in head:
                connection.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif b" /304 " in head:
                connection.transport.write(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
            else:
                connection.transport.write(OK)

    proxy, upstream, client = await through_proxy(script, "app.test")
    client.send(b"HEAD / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    data = await client.wait_for(lambda d: d.endswith(b"\r\n\r\n"))
    assert data.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 1000" in data
    for path, status in ((b"/204", 204), (b"/304", 304)):
        client.take()
        client.send(get(b"app.test", path))
        data = await client.wait_for(lambda d: d.endswith(b"\r\n\r\n"))
        assert data.startswith(b"HTTP/1.1 %d " % status)
    client.take()
    client.send(get(b"app.test"))
    await client.wait_for(lambda d: d.endswith(b"ok"))
    assert len(upstream.connections) == 1
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_stale_pooled_connection_is_retried_for_idempotent_requests() -> None:
    """A pooled connection the upstream closed is replaced, and the GET still succeeds."""

    def close_after_answer(connection: ScriptedUpstream, data: bytes) -> None:
        if b"\r\n\r\n" in connection.buffer:
            connection.buffer = b""
            connection.transport.write(OK)
            # Close silently later, as a server's idle timeout would, racing the next request.
            reactor_().callLater(0.05, connection.transport.loseConnection)

    proxy, upstream, client = await through_proxy(close_after_answer, "app.test")
    client.send(get(b"app.test"))
    await client.wait_for(lambda d: d.endswith(b"ok"))
    client.take()
    # Make the pool think the connection is still fine when the close arrives.
    await sleep(0.2)
    client.send(get(b"app.test"))
    data = await client.wait_for(lambda d: d.endswith(b"ok"))
    assert data.startswith(b"HTTP/1.1 200 ")
    assert len(upstream.connections) == 2
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_stale_connection_without_response_retries_get_but_not_post() -> None:
    """A reused connection dropped before answering: GET is retried, POST gets 502."""
    state = {"n": 0}

    def drop_second_request(connection: ScriptedUpstream, data: bytes) -> None:
        if b"\r\n\r\n" not in connection.buffer:
            return
        state["n"] += 1
        connection.buffer = b""
        if state["n"] in (2, 4):
            connection.transport.loseConnection()
        else:
            connection.transport.write(OK)

    proxy, upstream, client = await through_proxy(drop_second_request, "app.test")
    client.send(get(b"app.test"))
    await client.wait_for(lambda d: d.endswith(b"ok"))
    client.take()
    client.send(get(b"app.test"))  # dropped once (n=2), retried (n=3)
    data = await client.wait_for(lambda d: d.endswith(b"ok"))
    assert data.startswith(b"HTTP/1.1 200 ")
    client.take()
    client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi")  # n=4
    data = await client.wait_for(lambda d: b"</html>" in d)
    assert data.startswith(b"HTTP/1.1 502 ")
    assert state["n"] == 4
    await stop_all(proxy, upstream)


# --- bodies and framing --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_chunked_bodies_both_ways_keep_trailers() -> None:
    """A chunked upload and a chunked answer pass through with their trailers."""

    def script(connection: ScriptedUpstream, data: bytes) -> None:
        if connection.buffer.endswith(b"\r\n\r\n") and b"0\r\n" in connection.buffer:
            connection.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                b"3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n"
            )

    proxy, upstream, client = await through_proxy(script, "app.test")
    client.send(
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Checksum: 7\r\n\r\n"
    )
    data = await client.wait_for(lambda d: d.endswith(b"X-Sum: 42\r\n\r\n"))
    assert b"Transfer-Encoding: chunked" in data and b"3\r\nabc\r\n" in data
    body = upstream.received.split(b"\r\n\r\n", 1)[1]
    assert body == b"4\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Checksum: 7\r\n\r\n"
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_interim_responses_and_expect_continue_are_passed_on() -> None:
    """Expect: 100-continue reaches the upstream; its 100 and a 103 reach the client."""

    def script(connection: ScriptedUpstream, data: bytes) -> None:
        if b"\r\n\r\n" in connection.buffer and not getattr(connection, "continued", False):
            connection.continued = True  # type: ignore[attr-defined]
            connection.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        elif connection.buffer.endswith(b"hello"):
            connection.transport.write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK
            )

    proxy, upstream, client = await through_proxy(script, "app.test")
    client.send(
        b"PUT / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    await client.wait_for(lambda d: d.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"))
    client.send(b"hello")
    data = await client.wait_for(lambda d: d.endswith(b"ok"))
    assert b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" in data
    assert b"Expect: 100-continue" in upstream.received
    await stop_all(proxy, upstream)


@pytest.mark.parametrize(
    "request_",
    [
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.test\r\nBad Header: x\r\n\r\n",
    ],
    ids=["cl-and-te", "two-cl", "te-not-chunked", "two-hosts", "no-host", "bad-header"],
)
@pytest_twisted.ensureDeferred
async def test_ambiguous_requests_are_refused_and_never_forwarded(request_: bytes) -> None:
    """Smuggling shapes get a 4xx/5xx and the connection is closed; nothing goes upstream."""
    proxy, upstream, client = await through_proxy(answer_each_head(OK), "app.test")
    client.send(request_)
    await within(client.closed, 5)
    status = int(bytes(client.received)[9:12])
    assert status in (400, 501)
    assert upstream.received == b""
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_oversized_heads_and_targets_are_refused() -> None:
    """A too-long target gets 414 and too-large headers 431."""
    proxy = Proxy(ProxySettings(max_head=4096, max_target=1024))
    client = await connect_raw(proxy.port)
    client.send(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a.test\r\n\r\n")
    await within(client.closed, 5)
    assert client.received.startswith(b"HTTP/1.1 414 ")
    client = await connect_raw(proxy.port)
    client.send(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: " + b"b" * 8000 + b"\r\n\r\n")
    await within(client.closed, 5)
    assert client.received.startswith(b"HTTP/1.1 431 ")
    await proxy.stop()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTPP/1.1 200 OK\r\n\r\n",
    ],
    ids=["te-and-cl", "bad-status", "bad-version"],
)
@pytest_twisted.ensureDeferred
async def test_invalid_upstream_responses_become_502(response: bytes) -> None:
    """An upstream that answers with an ambiguous or invalid head yields 502."""
    proxy, upstream, client = await through_proxy(answer_each_head(response), "app.test")
    client.send(get(b"app.test"))
    data = await client.wait_for(lambda d: b"</html>" in d)
    assert data.startswith(b"HTTP/1.1 502 ")
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_body_over_the_limit_is_413() -> None:
    """A declared or streamed body over max_body is refused with 413."""
    proxy, upstream, client = await through_proxy(
        lambda c, d: None, "app.test", settings=ProxySettings(max_body=1000)
    )
    client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5000\r\n\r\n")
    await within(client.closed, 5)
    assert client.received.startswith(b"HTTP/1.1 413 ")
    client = await connect_raw(proxy.port)
    client.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.send(b"800\r\n" + b"x" * 0x800 + b"\r\n")
    await within(client.closed, 5)
    assert client.received.startswith(b"HTTP/1.1 413 ")
    await stop_all(proxy, upstream)


# --- streaming ---------------------------------------------------------------


class _Streams(Resource):
    """A twisted.web upstream: SSE that stays open, uploads hashed, large downloads."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.sse_requests: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/events":
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b"data: first\n\n")
            self.sse_requests.append(request)
            return NOT_DONE_YET
        return b"hello"

    def render_POST(self, request: Any) -> bytes:
        digest = hashlib.sha256()
        size = 0
        while chunk := request.content.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return b"%d %s" % (size, digest.hexdigest().encode())


@pytest_twisted.ensureDeferred
async def test_sse_first_event_arrives_before_the_upstream_finishes() -> None:
    """text/event-stream is never buffered: the first event is seen while the stream is open."""
    resource = _Streams()
    site = reactor_().listenTCP(0, Site(resource), interface="127.0.0.1")
    proxy = Proxy()
    proxy.route("app.test", site.getHost().port)
    client = await connect_raw(proxy.port)
    client.send(get(b"app.test", b"/events", b"Accept: text/event-stream\r\n"))
    data = await client.wait_for(lambda d: b"data: first\n\n" in d, seconds=5)
    assert b"text/event-stream" in data
    assert len(resource.sse_requests) == 1 and not resource.sse_requests[0].finished
    resource.sse_requests[0].write(b"data: second\n\n")
    await client.wait_for(lambda d: b"data: second\n\n" in d, seconds=5)
    resource.sse_requests[0].finish()
    await client.wait_for(lambda d: d.endswith(b"0\r\n\r\n"), seconds=5)
    await proxy.stop()
    await site.stopListening()


@pytest_twisted.ensureDeferred
async def test_twenty_mib_upload_arrives_whole() -> None:
    """A 20 MiB POST body arrives at the upstream byte for byte."""
    import treq

    resource = _Streams()
    site = reactor_().listenTCP(0, Site(resource), interface="127.0.0.1")
    proxy = Proxy()
    proxy.route("app.test", site.getHost().port)
    body = hashlib.sha256(b"seed").digest() * (20 * 1024 * 1024 // 32)
    response = await within(
        treq.post(f"http://127.0.0.1:{proxy.port}/upload", data=body, headers={"Host": "app.test"}),
        30,
    )
    answer = await within(response.content(), 30)
    assert answer == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    await proxy.stop()
    await site.stopListening()


@pytest_twisted.ensureDeferred
async def test_websocket_echo_through_the_proxy() -> None:
    """An Upgrade: websocket request is spliced after the 101; frames echo both ways."""
    proxy, upstream, client = await through_proxy(websocket_echo, "ws.test")
    client.send(
        b"GET /socket HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    data = await client.wait_for(lambda d: b"\r\n\r\n" in d)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in data
    client.take()
    for text in (b"hello", b"x" * 70000):
        client.send(ws_frame(text, mask=b"\x01\x02\x03\x04"))
        data = await client.wait_for(lambda d: ws_parse(d) is not None)
        payload, rest, _ = ws_parse(client.take())  # type: ignore[misc]
        assert payload == b"echo: " + text and rest == b""
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_download_cancels_upstream_and_pool_stays_healthy() -> None:
    """A client that disconnects mid-body aborts the upstream request; the next one works."""
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"z" * 65536

    def script(connection: ScriptedUpstream, data: bytes) -> None:
        if b"\r\n\r\n" in connection.buffer:
            head, _, connection.buffer = connection.buffer.partition(b"\r\n\r\n")
            connection.transport.write(big if b" /big " in head else OK)

    proxy, upstream, client = await through_proxy(script, "app.test")
    client.send(get(b"app.test", b"/big"))
    await client.wait_for(lambda d: len(d) > 1000)
    client.transport.abortConnection()  # type: ignore[union-attr]
    await sleep(0.1)
    first = upstream.connections[0]
    assert first.transport is None or first.transport.disconnected  # type: ignore[attr-defined]
    assert proxy.factory.pool.idle_count() == 0
    client = await connect_raw(proxy.port)
    client.send(get(b"app.test"))
    await client.wait_for(lambda d: d.endswith(b"ok"))
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_close_delimited_upstream_body_is_rechunked_for_http11_clients() -> None:
    """An upstream body ended by closing is sent chunked so the client keeps its connection."""

    def script(connection: ScriptedUpstream, data: bytes) -> None:
        if b"\r\n\r\n" in connection.buffer:
            connection.buffer = b""
            connection.transport.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close")
            connection.transport.loseConnection()

    proxy, upstream, client = await through_proxy(script, "app.test")
    client.send(get(b"app.test"))
    data = await client.wait_for(lambda d: d.endswith(b"0\r\n\r\n"))
    [(status, headers, body)] = split_responses(data)
    assert (status, body) == (200, b"until-close")
    assert headers[b"transfer-encoding"] == [b"chunked"]
    await stop_all(proxy, upstream)
