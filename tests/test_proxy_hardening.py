"""The proxy against hostile or broken peers: bounded memory, no desync, no spoofing."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

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
    within,
)
from tests.test_proxy_loopback import OK, Proxy, get, started, stop_all, through_proxy


def buffered(connection: Any) -> int:
    """Bytes Twisted holds for a TCP transport that the kernel has not taken yet."""
    transport = connection.transport
    return int(transport._tempDataLen + len(transport.dataBuffer) - transport.offset)


# --- bounded memory ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_endless_response_head_is_cut_with_502() -> None:
    """A preview that sends header lines forever gets a 502 once past max_head."""

    def endless(connection: ScriptedUpstream, data: bytes) -> None:
        if getattr(connection, "started", False):
            return
        connection.started = True  # type: ignore[attr-defined]
        connection.transport.write(b"HTTP/1.1 200 OK\r\n")  # type: ignore[union-attr]
        for _ in range(100):
            connection.transport.write(b"X-Pad: " + b"a" * 1000 + b"\r\n")  # type: ignore[union-attr]

    proxy, upstream, client = await through_proxy(
        endless, "app.test", settings=ProxySettings(max_head=16 * 1024)
    )
    client.send(get(b"app.test"))
    data = await client.wait_for(lambda d: b"</html>" in d)
    assert data.startswith(b"HTTP/1.1 502 ")
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_endless_request_trailers_get_431() -> None:
    """Trailers count against max_head like headers do."""
    proxy = Proxy(ProxySettings(max_head=8 * 1024))
    client = await connect_raw(proxy.port)
    client.send(b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.send(b"1\r\na\r\n0\r\n")
    for _ in range(30):
        client.send(b"X-T: " + b"b" * 1000 + b"\r\n")
    data = await client.wait_for(lambda d: b"431 " in d, seconds=5)
    assert b"HTTP/1.1 431 " in data
    await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_is_not_read_either() -> None:
    """Pipelined requests whose answers are not read: prevu stops reading, buffers stay small."""
    proxy = Proxy()
    client = await connect_raw(proxy.port)
    client.transport.pauseProducing()  # type: ignore[union-attr]  # never read answers
    request = get(b"nowhere.test")
    for _ in range(200):
        client.send(request * 500)  # 200 x 500 pipelined 404s, ~20 MB of requests
    await sleep(1.0)
    [connection] = proxy.factory.connections
    assert "write" in connection.holds
    assert buffered(connection) < 4 * 1024 * 1024
    client.transport.abortConnection()  # type: ignore[union-attr]
    await proxy.stop()


def test_a_closing_connection_whose_client_never_reads_is_aborted() -> None:
    """After the last answer, a client has idle_timeout to take it and close."""
    reactor = MemoryReactorClock()
    factory = ProxyFactory(reactor, RouteRegistry(), ProxySettings(timeouts=Timeouts(idle=10.0)))
    factory.doStart()
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")  # no Host: 400 and close
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert protocol.closed
    reactor.advance(11)
    assert transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_upload_while_connecting_is_held_back() -> None:
    """Body bytes for an upstream not connected yet: reading pauses past 64 KiB."""
    reactor = MemoryReactorClock()
    routes = RouteRegistry()
    routes.put("static", Route("app.test", Upstream("10.0.0.9", 80)))
    factory = ProxyFactory(reactor, routes, ProxySettings())
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000000\r\n\r\n")
    protocol.dataReceived(b"x" * 100_000)
    assert transport.producerState == "paused"
    upstream = reactor.tcpClients[0][2].buildProtocol(None)
    upstream.makeConnection(StringTransport())
    assert transport.producerState == "producing"


# --- no desync, no smuggling ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bytes_after_a_refused_upgrade_never_reach_the_upstream() -> None:
    """Upgrade answered 200: the request pipelined behind it is dropped, not smuggled."""
    proxy, upstream, client = await through_proxy(answer_each_head(OK), "app.test")
    client.send(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /admin HTTP/1.1\r\nHost: app.test\r\nX-Prevu-User: root\r\n\r\n"
    )
    await within(client.closed, 5)
    assert client.received.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in client.received
    assert b"/admin" not in upstream.received
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_an_unrequested_101_is_a_502() -> None:
    """A preview cannot turn a client's connection into a tunnel it did not ask for."""
    proxy, upstream, client = await through_proxy(
        answer_each_head(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
        ),
        "evil.test",
    )
    client.send(get(b"evil.test"))
    data = await client.wait_for(lambda d: b"</html>" in d)
    assert data.startswith(b"HTTP/1.1 502 ")
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_a_pipelined_request_body_arriving_later_is_read() -> None:
    """GET then a POST whose body comes in a later packet: the POST is answered."""

    def script(connection: ScriptedUpstream, data: bytes) -> None:
        buffer = connection.buffer
        if buffer.startswith(b"GET") and b"\r\n\r\n" in buffer:
            connection.buffer = buffer.split(b"\r\n\r\n", 1)[1]
            connection.transport.write(OK)  # type: ignore[union-attr]
        if connection.buffer.startswith(b"POST") and connection.buffer.endswith(b"helloworld"):
            connection.buffer = b""
            connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npost")  # type: ignore[union-attr]

    proxy, upstream, client = await through_proxy(script, "app.test")
    client.send(
        get(b"app.test") + b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nhello"
    )
    await sleep(0.3)
    client.send(b"world")
    data = await client.wait_for(lambda d: d.endswith(b"post"))
    assert [status for status, _, _ in split_responses(data)] == [200, 200]
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_expect_continue_answered_locally_closes_the_connection() -> None:
    """The client's unsent body cannot be mistaken for its next request."""
    proxy = Proxy()
    client = await connect_raw(proxy.port)
    client.send(
        b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 20\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    await within(client.closed, 5)
    assert client.received.startswith(b"HTTP/1.1 404 ") and b"Connection: close" in client.received
    await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_requests_after_a_closing_answer_are_not_forwarded() -> None:
    proxy, upstream, client = await through_proxy(answer_each_head(OK), "app.test")
    client.send(b"GET / HTTP/1.1\r\n\r\n" + b"DELETE /b HTTP/1.1\r\nHost: app.test\r\n\r\n")
    await within(client.closed, 5)
    assert client.received.startswith(b"HTTP/1.1 400 ")
    await sleep(0.1)
    assert upstream.received == b""
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_a_pipelined_upload_over_the_limit_gets_413_after_the_earlier_answer() -> None:
    proxy, upstream, client = await through_proxy(
        answer_each_head(OK), "app.test", settings=ProxySettings(max_body=1000)
    )
    client.send(
        get(b"app.test", b"/first")
        + b"POST /big HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"800\r\n"
        + b"x" * 0x800
        + b"\r\n"
    )
    await within(client.closed, 5)
    statuses = [status for status, _, _ in split_responses(bytes(client.received))]
    assert statuses == [200, 413]
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_a_malformed_chunk_mid_body_is_400_at_once() -> None:
    proxy, upstream, client = await through_proxy(
        lambda c, d: None, "app.test", settings=ProxySettings(timeouts=Timeouts(response=30))
    )
    client.send(
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    await sleep(0.2)
    client.send(b"zz\r\n")
    await within(client.closed, 3)
    assert client.received.startswith(b"HTTP/1.1 400 ")
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_head_from_an_http10_upstream_is_not_pooled() -> None:
    """A HEAD answered by an HTTP/1.0 upstream leaves no dead connection in the pool."""

    def http10(connection: ScriptedUpstream, data: bytes) -> None:
        if b"\r\n\r\n" in connection.buffer:
            head = connection.buffer
            connection.buffer = b""
            body = b"" if head.startswith(b"HEAD") else b"0123456789"
            connection.transport.write(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n" + body)  # type: ignore[union-attr]
            connection.transport.loseConnection()  # type: ignore[union-attr]

    proxy, upstream, client = await through_proxy(http10, "app.test")
    client.send(b"HEAD / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    await client.wait_for(lambda d: d.endswith(b"\r\n\r\n"))
    client.take()
    client.send(b"POST /submit HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi")
    data = await client.wait_for(lambda d: d.endswith(b"0123456789"))
    assert data.startswith(b"HTTP/1.1 200 ")
    await stop_all(proxy, upstream)


def test_post_gets_the_response_timeout_once_its_body_is_sent() -> None:
    reactor = MemoryReactorClock()
    routes = RouteRegistry()
    routes.put("static", Route("app.test", Upstream("10.0.0.9", 80)))
    factory = ProxyFactory(reactor, routes, ProxySettings(timeouts=Timeouts(response=2, idle=60)))
    factory.doStart()
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi")
    reactor.tcpClients[0][2].buildProtocol(None).makeConnection(StringTransport())
    reactor.advance(3)
    assert transport.value().startswith(b"HTTP/1.1 504 ")


# --- relaying what the upstream sends (spoofing and Host rules: test_proxy_policy.py) ---


@pytest_twisted.ensureDeferred
async def test_a_reason_phrase_split_across_reads_is_kept_whole() -> None:
    def split(connection: ScriptedUpstream, data: bytes) -> None:
        if b"\r\n\r\n" in connection.buffer:
            connection.buffer = b""
            connection.transport.write(b"HTTP/1.1 200 All Fi")  # type: ignore[union-attr]
            reactor_().callLater(
                0.05, connection.transport.write, b"ne\r\nContent-Length: 2\r\n\r\nok"
            )

    proxy, upstream, client = await through_proxy(split, "app.test")
    client.send(get(b"app.test"))
    data = await client.wait_for(lambda d: d.endswith(b"ok"))
    assert data.startswith(b"HTTP/1.1 200 All Fine\r\n")
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_an_idle_websocket_is_closed_after_the_idle_timeout() -> None:
    """Traffic keeps a tunnel open; silence both ways for timeouts.idle closes it."""
    from tests.support.net import websocket_echo, ws_frame, ws_parse

    proxy, upstream, client = await through_proxy(
        websocket_echo, "ws.test", settings=ProxySettings(timeouts=Timeouts(idle=2.0))
    )
    client.send(
        b"GET / HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    await client.wait_for(lambda d: b"\r\n\r\n" in d)
    client.take()
    for _ in range(3):  # 3 s of traffic, every second: stays open
        client.send(ws_frame(b"ping", mask=b"\x01\x02\x03\x04"))
        await client.wait_for(lambda d: ws_parse(d) is not None)
        client.take()
        await sleep(1.0)
    assert not client.is_closed
    await within(client.closed, 5)  # then silence: closed by the sweep
    await stop_all(proxy, upstream)


@pytest_twisted.ensureDeferred
async def test_a_preview_cannot_set_prevus_own_cookies() -> None:
    """Set-Cookie: prevu_session from a preview is dropped; the control app's passes."""
    response = (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: prevu_session=attacker; Domain=test\r\n"
        b"Set-Cookie: PREVU_csrf=x\r\nSet-Cookie: theme=dark\r\nContent-Length: 2\r\n\r\nok"
    )
    proxy, upstream, client = await through_proxy(answer_each_head(response), "pr-1.test")
    control = ScriptedServer(answer_each_head(response))
    (control_port,) = await started(control)
    proxy.route("prevu.test", control_port, trusted=True)
    client.send(get(b"pr-1.test"))
    data = await client.wait_for(lambda d: d.endswith(b"ok"))
    [(_, headers, _)] = split_responses(data)
    assert headers[b"set-cookie"] == [b"theme=dark"]
    client.take()
    client.send(get(b"prevu.test"))
    data = await client.wait_for(lambda d: d.endswith(b"ok"))
    [(_, headers, _)] = split_responses(data)
    assert len(headers[b"set-cookie"]) == 3
    await stop_all(proxy, upstream, control)
