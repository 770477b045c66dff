"""The proxy's protocols driven with Twisted's doubles: MemoryReactorClock, StringTransport."""

from __future__ import annotations

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from prevu.proxy.deadlines import Timeouts
from prevu.proxy.server import ClientConnection, ProxyFactory, ProxySettings
from prevu.routing import Route, RouteRegistry, Upstream


def make_proxy(**settings: float) -> tuple[MemoryReactorClock, ProxyFactory]:
    reactor = MemoryReactorClock()
    routes = RouteRegistry()
    routes.put("static", Route("app.test", Upstream("10.9.9.9", 8080)))
    # `idle_timeout=20.0` sets `Timeouts.idle` (prevu.proxy.deadlines), and so on.
    timeouts = {
        name.removesuffix("_timeout"): settings.pop(name)
        for name in list(settings)
        if name.endswith("_timeout")
    }
    proxy_settings = ProxySettings(timeouts=Timeouts(**timeouts), **settings)  # type: ignore[arg-type]
    factory = ProxyFactory(reactor, routes, proxy_settings)
    factory.doStart()
    return reactor, factory


def connect(factory: ProxyFactory) -> tuple[ClientConnection, StringTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_request_connects_to_the_routed_upstream_with_the_connect_timeout() -> None:
    reactor, factory = make_proxy(connect_timeout=3.0)
    client, _ = connect(factory)
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    [(host, port, _, timeout, _)] = reactor.tcpClients
    assert (host, port, timeout) == ("10.9.9.9", 8080, 3.0)


def test_connect_timeout_is_504_and_refused_is_502() -> None:
    for error, status in ((TimeoutError(), b"504"), (ConnectionRefusedError(), b"502")):
        reactor, factory = make_proxy()
        client, transport = connect(factory)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        upstream_factory = reactor.tcpClients[0][2]
        upstream_factory.clientConnectionFailed(None, Failure(error))
        assert transport.value().startswith(b"HTTP/1.1 " + status)
        assert b"app.test" in transport.value()
        assert transport.disconnecting


def test_forwarded_head_and_relayed_response() -> None:
    reactor, factory = make_proxy()
    client, client_transport = connect(factory)
    client.dataReceived(b"GET /a HTTP/1.1\r\nHost: app.test\r\nAccept: */*\r\n\r\n")
    upstream = reactor.tcpClients[0][2].buildProtocol(None)
    upstream_transport = StringTransport()
    upstream.makeConnection(upstream_transport)
    head = upstream_transport.value()
    assert head.startswith(b"GET /a HTTP/1.1\r\nHost: app.test\r\nAccept: */*\r\n")
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in head
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert client_transport.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    assert factory.pool.idle_count(("10.9.9.9", 8080)) == 1


def test_response_timeout_from_the_sweep_is_504() -> None:
    reactor, factory = make_proxy(response_timeout=10.0)
    client, transport = connect(factory)
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    upstream = reactor.tcpClients[0][2].buildProtocol(None)
    upstream_transport = StringTransport()
    upstream.makeConnection(upstream_transport)
    reactor.advance(9)
    assert transport.value() == b""
    reactor.advance(2)
    assert transport.value().startswith(b"HTTP/1.1 504 ")
    assert upstream_transport.disconnecting or upstream_transport.disconnected


def test_idle_keep_alive_connection_is_closed_and_slow_head_gets_408() -> None:
    reactor, factory = make_proxy(idle_timeout=20.0, head_timeout=5.0)
    _, idle_transport = connect(factory)
    slow, slow_transport = connect(factory)
    slow.dataReceived(b"GET / HTTP/1.1\r\nHost: app")
    reactor.advance(6)
    assert slow_transport.value().startswith(b"HTTP/1.1 408 ")
    assert not idle_transport.disconnecting
    reactor.advance(15)
    assert idle_transport.disconnecting


def test_connection_limit_per_client_address_spares_trusted_proxies() -> None:
    import ipaddress

    _, factory = make_proxy(max_connections_per_client=2)
    connect(factory)
    connect(factory)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is None
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1)) is not None
    _, trusting = make_proxy(max_connections_per_client=1)
    trusting.settings = attrs.evolve(
        trusting.settings, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),)
    )
    for _ in range(3):
        assert trusting.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is not None
