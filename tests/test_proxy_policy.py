"""
The proxy's policy as tables: `admit()`, `forward_head()`, `response_framing()`, the deadlines.

Pure functions are called with heads built by hand; where the parser's own
header rules matter, requests go through a real `ClientConnection` on
Twisted's in-memory transports (MemoryReactorClock, StringTransport), as
`twisted/web/test/test_proxy.py` does.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from attrs import Factory, define
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from prevu.config import Timeouts as ConfigTimeouts
from prevu.proxy.admission import (
    SPECIAL,
    Forward,
    LocalReply,
    Policy,
    admit,
    must_close,
)
from prevu.proxy.deadlines import KINDS, LIMITS, DeadlineKind, Timeouts, limits
from prevu.proxy.forwarding import forward_head
from prevu.proxy.framing import Framing, delimited_by_close, response_framing
from prevu.proxy.hooks import Allow, OpenGate, Reply, RequestHead
from prevu.proxy.server import ClientConnection, ProxyFactory, ProxySettings
from prevu.routing import Route, RouteRegistry, Upstream

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)

# --- heads built by hand ----------------------------------------------------------


@define
class Head:
    """A `forwarding.ParsedHead` built by hand."""

    method: bytes = b"GET"
    url: bytes = b"/"
    hosts: list[bytes] = Factory(lambda: [b"app.test"])
    headers: list[bytes] = Factory(list)
    special: dict[bytes, list[bytes]] | None = None
    version: str = "1.1"
    keep_alive: bool = True
    upgrade: bool = False
    client_ip: str = "127.0.0.1"
    client_ip_bytes: bytes = b"127.0.0.1"


def head(*headers: tuple[bytes, bytes], host: bytes | None = b"app.test", **fields: Any) -> Head:
    """A head with `host` (None: no Host) and `headers` sorted as the parser sorts them."""
    built = Head(hosts=[host] if host is not None else [], **fields)
    for name, value in headers:
        lower = name.lower()
        if lower == b"host":
            built.hosts.append(value)
        elif lower in SPECIAL:
            if built.special is None:
                built.special = {}
            built.special.setdefault(lower, []).append(value)
        else:
            built.headers += (name, b": ", value, b"\r\n")
    return built


class Gate:
    """Lets `prevu_session=good` through as alice; sends everyone else to the login."""

    def __init__(self) -> None:
        self.seen: list[RequestHead] = []

    def check(self, route: Route, head: RequestHead) -> Allow | Reply:
        self.seen.append(head)
        if head.header(b"cookie") == b"prevu_session=good":
            return Allow(user="alice")
        return Reply(302, [(b"Location", b"http://prevu.test/login")])


class Acme:
    """Answers HTTP-01 challenges before routing; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[RequestHead] = []

    def intercept(self, head: RequestHead) -> Reply | None:
        self.seen.append(head)
        if head.target.startswith(b"/.well-known/acme-challenge/"):
            return Reply(200, [(b"Content-Type", b"text/plain")], b"token")
        return None


UPSTREAM = Upstream("10.0.0.1", 8080)


def policy(gate: Any = None, interceptors: tuple[Any, ...] = (), **settings: Any) -> Policy:
    routes = RouteRegistry()
    for route in (
        Route("app.test", UPSTREAM),
        Route("private.test", UPSTREAM, access="private"),
        Route("prevu.test", UPSTREAM, trusted=True),
        Route("pr-1.test", None, state="building"),
        Route("pr-2.test", None, state="sleeping", preview="p2"),
    ):
        routes.put("static", route)
    return Policy("http", routes, gate or Gate(), interceptors, **settings)


def status_of(decision: Forward | LocalReply) -> int | str:
    """The status of a local reply, or "forward"."""
    if isinstance(decision, Forward):
        return "forward"
    return int(decision.data.split(b" ", 2)[1])


# --- admit(): which status for which head ------------------------------------------

ADMISSION = [
    ("HTTP/2 is not spoken", head(version="2.0"), 505),
    ("CONNECT", head(method=b"CONNECT", url=b"app.test:443"), 405),
    ("a target neither origin nor absolute form", head(url=b"index.html"), 400),
    ("no Host", head(host=None), 400),
    ("two Hosts", head((b"Host", b"app.test")), 400),
    ("Host with userinfo", head(host=b"app.test:1@evil.example"), 400),
    ("Host with a path", head(host=b"app.test/evil"), 400),
    ("Host with a port", head(host=b"app.test:80"), "forward"),
    ("Host in capitals", head(host=b"APP.test"), "forward"),
    ("absolute form wins over Host", head(url=b"http://app.test/x", host=b"other.test"), "forward"),
    ("asterisk form for OPTIONS", head(method=b"OPTIONS", url=b"*"), "forward"),
    ("a transfer coding other than chunked", head((b"Transfer-Encoding", b"gzip")), 501),
    ("chunked", head((b"Transfer-Encoding", b"chunked"), method=b"POST"), "forward"),
    ("a body over max_body", head((b"Content-Length", b"1001"), method=b"POST"), 413),
    ("a body of max_body", head((b"Content-Length", b"1000"), method=b"POST"), "forward"),
    (
        "an ACME challenge, even for an unknown host",
        head(url=b"/.well-known/acme-challenge/t", host=b"nowhere.test"),
        200,
    ),
    ("an unknown host", head(host=b"nowhere.test"), 404),
    ("a private route without a session", head(host=b"private.test"), 302),
    (
        "a private route with a session",
        head((b"Cookie", b"prevu_session=good"), host=b"private.test"),
        "forward",
    ),
    ("a preview being built", head(host=b"pr-1.test"), 503),
    ("a sleeping preview", head(host=b"pr-2.test"), 503),
    (
        "an Upgrade with a body",
        head((b"Content-Length", b"5"), method=b"POST", upgrade=True),
        400,
    ),
    ("an Upgrade", head((b"Upgrade", b"websocket"), upgrade=True), "forward"),
]


@pytest.mark.parametrize(
    ("parsed", "status"),
    [pytest.param(parsed, status, id=name) for name, parsed, status in ADMISSION],
)
def test_admit_answers_each_head_with_its_status(parsed: Head, status: int | str) -> None:
    decision = admit(parsed, policy(interceptors=(Acme(),), max_body=1000))
    assert status_of(decision) == status


@pytest.mark.parametrize(
    ("parsed", "close"),
    [
        pytest.param(head(host=b"nowhere.test"), False, id="404 keeps the connection"),
        pytest.param(head(host=b"nowhere.test", keep_alive=False), True, id="unless told"),
        pytest.param(
            head((b"Expect", b"100-Continue"), host=b"nowhere.test"), True, id="Expect 100"
        ),
        pytest.param(head(host=None), True, id="400 closes"),
        pytest.param(head(host=b"pr-1.test"), False, id="503 keeps the connection"),
        pytest.param(head(host=b"private.test"), False, id="the gate's reply too"),
    ],
)
def test_local_replies_close_only_when_the_stream_may_be_out_of_step(
    parsed: Head, close: bool
) -> None:
    reply = admit(parsed, policy())
    assert isinstance(reply, LocalReply)
    assert reply.close is close and must_close(parsed) is (close and b"404" in reply.data[:12])
    assert (b"Connection: close\r\n" in reply.data) is close


def test_pages_name_the_host_and_head_gets_no_body() -> None:
    """Error pages name the host and show no traceback; a HEAD gets the head only."""
    reply = admit(head(host=b"nowhere.test"), policy())
    assert isinstance(reply, LocalReply)
    assert b"nowhere.test" in reply.data and b"Traceback" not in reply.data
    bare = admit(head(host=b"nowhere.test", method=b"HEAD"), policy())
    assert isinstance(bare, LocalReply) and bare.data.endswith(b"\r\n\r\n")
    assert b"Content-Length: %d\r\n" % len(reply.data.split(b"\r\n\r\n", 1)[1]) in bare.data


def test_building_route_gets_a_503_that_refreshes() -> None:
    """A preview still building answers 503 with Retry-After and a refreshing page."""
    reply = admit(head(host=b"pr-1.test"), policy())
    assert isinstance(reply, LocalReply) and reply.data.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 5\r\n" in reply.data and b"http-equiv=refresh" in reply.data
    assert reply.wake is None


def test_sleeping_route_asks_to_be_woken() -> None:
    reply = admit(head(host=b"pr-2.test"), policy())
    assert isinstance(reply, LocalReply) and reply.data.startswith(b"HTTP/1.1 503 ")
    assert reply.wake is not None and reply.wake.host == "pr-2.test"


def test_private_route_asks_the_gate_and_passes_the_user() -> None:
    """The gate's refusal is sent as is; its Allow(user) becomes X-Prevu-User."""
    gate = Gate()
    refused = admit(head(host=b"private.test"), policy(gate))
    assert isinstance(refused, LocalReply)
    assert refused.data.startswith(b"HTTP/1.1 302 ")
    assert b"Location: http://prevu.test/login" in refused.data
    allowed = admit(head((b"Cookie", b"prevu_session=good"), host=b"private.test"), policy(gate))
    assert isinstance(allowed, Forward)
    assert b"X-Prevu-User: alice\r\n" in allowed.head
    assert b"prevu_session" not in allowed.head
    assert gate.seen[0].url == "http://private.test/"


def test_gate_sees_host_cookies_and_bypass_even_with_interceptors() -> None:
    """With interceptors configured (TLS on), the gate still gets the full head."""
    seen: list[RequestHead] = []

    class AllowBob:
        def check(self, route: Route, head: RequestHead) -> Allow | Reply:
            seen.append(head)
            return Allow(user="bob")

    acme = Acme()
    parsed = head((b"Cookie", b"prevu_session=s"), (b"X-Prevu-Bypass", b"t"), host=b"private.test")
    decision = admit(parsed, policy(AllowBob(), (acme,)))
    [once] = seen
    assert once is acme.seen[0]  # built once, for every hook
    assert once.header(b"host") == b"private.test"
    assert once.header(b"cookie") == b"prevu_session=s"
    assert once.header(b"x-prevu-bypass") == b"t"
    assert isinstance(decision, Forward) and b"X-Prevu-Bypass" not in decision.head


@pytest.mark.parametrize(
    ("trusted_proxies", "forwarded_for"),
    [
        pytest.param(LOOPBACK, b"X-Forwarded-For: 203.0.113.9, 127.0.0.1\r\n", id="trusted"),
        pytest.param((), b"X-Forwarded-For: 127.0.0.1\r\n", id="not trusted"),
    ],
)
def test_trusted_proxy_gets_its_forwarded_for_extended(
    trusted_proxies: tuple[Any, ...], forwarded_for: bytes
) -> None:
    """X-Forwarded-For is appended to only for clients listed in trusted_proxies."""
    parsed = head((b"X-Forwarded-For", b"203.0.113.9"))
    decision = admit(parsed, policy(trusted_proxies=trusted_proxies))
    assert isinstance(decision, Forward) and forwarded_for in decision.head


@pytest.mark.parametrize(
    ("host", "cookie"),
    [
        pytest.param(b"prevu.test", b"Cookie: prevu_session=abc; theme=dark\r\n", id="control"),
        pytest.param(b"app.test", b"Cookie: theme=dark\r\n", id="preview"),
    ],
)
def test_only_the_trusted_control_route_receives_the_session_cookie(
    host: bytes, cookie: bytes
) -> None:
    """prevu's own control app gets prevu_session; a preview never does."""
    decision = admit(head((b"Cookie", b"prevu_session=abc; theme=dark"), host=host), policy())
    assert isinstance(decision, Forward) and cookie in decision.head
    assert decision.head.count(b"prevu_session") == (1 if host == b"prevu.test" else 0)


def test_hooks_see_forwarded_headers_with_lower_case_names() -> None:
    """An HTTPS redirect behind a trusted TLS proxy can read X-Forwarded-Proto."""
    acme = Acme()
    parsed = head((b"X-FORWARDED-PROTO", b"https"), (b"User-Agent", b"t"), host=b"nowhere.test")
    admit(parsed, policy(interceptors=(acme,), trusted_proxies=LOOPBACK))
    assert acme.seen[0].header(b"x-forwarded-proto") == b"https"
    assert acme.seen[0].header(b"User-Agent") == b"t"
    assert (b"user-agent", b"t") in list(acme.seen[0].headers)


def test_absolute_form_targets_keep_their_query() -> None:
    decision = admit(head(url=b"http://app.test?x=1", host=b"other.test"), policy())
    assert isinstance(decision, Forward)
    assert decision.head.startswith(b"GET /?x=1 HTTP/1.1\r\nHost: app.test\r\n")


def test_forward_carries_the_route_and_the_framing() -> None:
    parsed = head((b"Content-Length", b"5"), method=b"PUT", version="1.0")
    decision = admit(parsed, policy())
    assert isinstance(decision, Forward)
    assert (decision.upstream, decision.host, decision.content_length) == (UPSTREAM, "app.test", 5)
    assert (decision.chunked, decision.client_http11, decision.trusted) == (False, False, False)


# --- forward_head(): which headers go upstream -------------------------------------

BROWSER = (
    (b"Connection", b"keep-alive, X-Drop"),
    (b"X-Drop", b"secret"),
    (b"Keep-Alive", b"5"),
    (b"TE", b"trailers"),
    (b"Proxy-Authorization", b"x"),
    (b"X-Forwarded-For", b"6.6.6.6"),
    (b"X-Prevu-Bypass", b"guess"),
    (b"Cookie", b"a=1; prevu_session=SECRET; b=2"),
    (b"X-Keep", b"1"),
    (b"X-Keep", b"2"),
)

FORWARDING: list[tuple[str, Head, dict[str, Any], list[bytes], list[bytes]]] = [
    (
        "Host kept, X-Forwarded-* set, hop-by-hop and session cookie out",
        head(*BROWSER, host=b"App.test:8000", url=b"/x?y=1"),
        {},
        [
            b"GET /x?y=1 HTTP/1.1",
            b"Host: App.test:8000",
            b"X-Forwarded-For: 127.0.0.1",
            b"X-Forwarded-Proto: http",
            b"X-Forwarded-Host: App.test:8000",
            b"Cookie: a=1; b=2",
            b"X-Keep: 1",
            b"X-Keep: 2",
        ],
        [
            b"x-drop",
            b"keep-alive",
            b"te:",
            b"proxy-authorization",
            b"6.6.6.6",
            b"x-prevu-bypass",
            b"prevu_session",
        ],
    ),
    (
        "a trusted proxy's X-Forwarded-* are extended",
        head((b"X-Forwarded-For", b"203.0.113.9"), (b"X-Forwarded-Proto", b"https")),
        {"client_trusted": True},
        [b"X-Forwarded-For: 203.0.113.9, 127.0.0.1", b"X-Forwarded-Proto: https"],
        [b"x-forwarded-proto: http\r"],
    ),
    (
        "an untrusted client's X-Forwarded-* are replaced",
        head((b"X-Forwarded-For", b"203.0.113.9"), (b"X-Forwarded-Host", b"evil.test")),
        {},
        [b"X-Forwarded-For: 127.0.0.1", b"X-Forwarded-Host: app.test"],
        [b"203.0.113.9", b"evil.test"],
    ),
    (
        "prevu's own control app receives the session cookie",
        head((b"Cookie", b"prevu_session=abc; theme=dark")),
        {"route_trusted": True},
        [b"Cookie: prevu_session=abc; theme=dark"],
        [],
    ),
    (
        "a preview never does",
        head((b"Cookie", b"prevu_session=abc; theme=dark")),
        {},
        [b"Cookie: theme=dark"],
        [b"prevu_session"],
    ),
    (
        "a cookie header with only the session is dropped",
        head((b"Cookie", b"prevu_session=abc")),
        {},
        [],
        [b"cookie"],
    ),
    ("the reviewer the gate named", head(), {"user": b"alice"}, [b"X-Prevu-User: alice"], []),
    (
        "the body's length, as the proxy sends it",
        head((b"Content-Length", b"5")),
        {"content_length": 5},
        [b"Content-Length: 5"],
        [b"transfer-encoding"],
    ),
    (
        "a chunked body stays chunked",
        head((b"Transfer-Encoding", b"chunked")),
        {"chunked": True},
        [b"Transfer-Encoding: chunked"],
        [b"content-length"],
    ),
    (
        "Expect is passed on",
        head((b"Expect", b"100-continue")),
        {},
        [b"Expect: 100-continue"],
        [],
    ),
    (
        "an upgrade names itself",
        head((b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")),
        {"upgrade": True},
        [b"Connection: Upgrade", b"Upgrade: websocket"],
        [],
    ),
    (
        "an Upgrade header alone is hop-by-hop",
        head((b"Upgrade", b"websocket")),
        {},
        [],
        [b"upgrade"],
    ),
]


@pytest.mark.parametrize(
    ("parsed", "options", "present", "absent"),
    [pytest.param(*row[1:], id=row[0]) for row in FORWARDING],
)
def test_forward_head_says_what_goes_upstream(
    parsed: Head, options: dict[str, Any], present: list[bytes], absent: list[bytes]
) -> None:
    arguments: dict[str, Any] = {
        "content_length": None,
        "chunked": False,
        "upgrade": False,
        "user": None,
        "route_trusted": False,
        "client_trusted": False,
        "scheme": b"http",
    }
    arguments.update(options)
    raw_host = parsed.hosts[0]
    sent = forward_head(parsed, parsed.url, raw_host, **arguments)
    assert sent.endswith(b"\r\n\r\n") and sent.count(b"\r\n\r\n") == 1
    lines = sent.split(b"\r\n")
    for line in present:
        assert line in lines, line
    for gone in absent:
        assert gone not in sent.lower(), gone


# --- response_framing() -------------------------------------------------------------

FRAMING: list[tuple[str, tuple[bool, int, int | None, bool, bool], Framing, bool]] = [
    # (head_only, status, length, chunked, client_http11) -> framing, upstream closes
    ("HEAD has no body", (True, 200, 100, False, True), "none", False),
    ("HEAD without a length", (True, 200, None, False, True), "none", False),
    ("204", (False, 204, None, False, True), "none", False),
    ("304 with a length", (False, 304, 100, False, True), "none", False),
    ("Content-Length is kept", (False, 200, 100, False, True), "length", False),
    ("... for HTTP/1.0 too", (False, 200, 100, False, False), "length", False),
    ("chunks are re-chunked", (False, 200, None, True, True), "chunked", False),
    ("close-delimited becomes chunked", (False, 200, None, False, True), "chunked", True),
    ("HTTP/1.0 gets close-delimited", (False, 200, None, False, False), "close", True),
    ("HTTP/1.0 and chunks from upstream", (False, 200, None, True, False), "close", False),
    ("an error page is framed the same", (False, 500, 12, False, True), "length", False),
]


@pytest.mark.parametrize(
    ("inputs", "framing", "until_close"),
    [pytest.param(*row[1:], id=row[0]) for row in FRAMING],
)
def test_response_framing(
    inputs: tuple[bool, int, int | None, bool, bool], framing: Framing, until_close: bool
) -> None:
    assert response_framing(*inputs) == framing
    assert delimited_by_close(framing, inputs[2], inputs[3]) is until_close


# --- deadlines ---------------------------------------------------------------------


def test_every_deadline_kind_has_a_row_and_nothing_else_does() -> None:
    assert set(LIMITS) == set(KINDS)


@pytest.mark.parametrize(
    ("kind", "seconds"),
    [
        ("idle", 120.0),
        ("head", 30.0),
        ("response", 7.0),
        ("body", 120.0),
        ("tunnel", 120.0),
        ("closing", 120.0),
    ],
)
def test_each_kind_is_bounded_by_its_setting(kind: DeadlineKind, seconds: float) -> None:
    timeouts = Timeouts.from_config(ConfigTimeouts(connect=2.0, response=7.0, idle=120.0))
    assert limits(timeouts)[kind] == seconds


@pytest.mark.parametrize(("idle", "head", "pool_idle"), [(120.0, 30.0, 60.0), (10.0, 10.0, 10.0)])
def test_the_head_and_pool_timeouts_are_capped(idle: float, head: float, pool_idle: float) -> None:
    timeouts = Timeouts.from_config(ConfigTimeouts(idle=idle))
    assert (timeouts.head, timeouts.pool_idle, timeouts.connect) == (head, pool_idle, 5.0)


def test_a_kind_without_a_row_is_refused_at_start() -> None:
    partial = {kind: rule for kind, rule in LIMITS.items() if kind != "tunnel"}
    with pytest.raises(ValueError, match="tunnel"):
        limits(Timeouts(), partial)


# --- through a real ClientConnection, on in-memory transports --------------------


class InMemory:
    """A ProxyFactory on a MemoryReactorClock; clients and upstreams are StringTransports."""

    def __init__(self, settings: ProxySettings | None = None, **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.routes = RouteRegistry()
        self.factory = ProxyFactory(self.reactor, self.routes, settings, **kwargs)

    def client(self) -> tuple[ClientConnection, StringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def upstream(self) -> tuple[Any, StringTransport]:
        """Connect the upstream connection the proxy asked for last."""
        protocol = self.reactor.tcpClients[-1][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


def test_identity_and_origin_headers_cannot_be_spoofed_in_any_spelling() -> None:
    class AllowAlice:
        def check(self, route: Route, head: RequestHead) -> Allow | Reply:
            return Allow(user="alice")

    proxy = InMemory(gate=AllowAlice())
    proxy.routes.put("static", Route("app.test", UPSTREAM, access="private"))
    client, _ = proxy.client()
    client.dataReceived(
        b"GET / HTTP/1.1\r\nHost: app.test\r\n"
        b"X-Prevu_User: root\r\nX_Forwarded_For: 10.9.9.9\r\nForwarded: for=10.8.8.8\r\n"
        b"X-Real-IP: 10.7.7.7\r\nX-Forwarded-Port: 1\r\nContent_Length: 5\r\nX-Kept: yes\r\n\r\n"
    )
    _, upstream = proxy.upstream()
    sent = upstream.value().lower()
    for spoofed in (
        b"root",
        b"10.9.9.9",
        b"10.8.8.8",
        b"10.7.7.7",
        b"x-forwarded-port",
        b"content_length",
        b"x-prevu_user",
    ):
        assert spoofed not in sent, spoofed
    assert b"x-prevu-user: alice\r\n" in sent and b"x-kept: yes\r\n" in sent


def test_request_trailers_are_filtered_like_headers() -> None:
    proxy = InMemory()
    proxy.routes.put("static", Route("app.test", UPSTREAM))
    client, _ = proxy.client()
    client.dataReceived(b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
    _, upstream = proxy.upstream()
    client.dataReceived(
        b"2\r\nhi\r\n0\r\nX-Prevu-User: root\r\nCookie: prevu_session=SECRET\r\n"
        b"X-Checksum: 7\r\n\r\n"
    )
    assert upstream.value().endswith(b"2\r\nhi\r\n0\r\nX-Checksum: 7\r\n\r\n")


def test_the_parser_sorts_headers_as_the_forwarding_table_expects() -> None:
    """The same browser head as FORWARDING's first row, parsed from bytes."""
    proxy = InMemory()
    proxy.routes.put("static", Route("app.test", UPSTREAM))
    client, _ = proxy.client()
    client.dataReceived(
        b"GET /x?y=1 HTTP/1.1\r\nHost: App.test:8000\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in BROWSER)
        + b"\r\n"
    )
    _, upstream = proxy.upstream()
    expected = forward_head(
        head(*BROWSER, host=b"App.test:8000", url=b"/x?y=1"),
        b"/x?y=1",
        b"App.test:8000",
        content_length=None,
        chunked=False,
        upgrade=False,
        user=None,
        route_trusted=False,
        client_trusted=False,
        scheme=b"http",
    )
    assert upstream.value() == expected


def test_sleeping_route_is_woken_and_answers_503() -> None:
    """A request for a sleeping preview asks the waker to start it."""
    woken: list[str] = []

    class Waker:
        def wake(self, route: Route) -> None:
            woken.append(route.host)

    proxy = InMemory(waker=Waker())
    proxy.routes.put("previews", Route("pr-2.test", None, state="sleeping", preview="p2"))
    client, transport = proxy.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: pr-2.test\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 503 ") and woken == ["pr-2.test"]


def test_open_gate_and_no_hooks_forward_everything_routed() -> None:
    decision = admit(head(host=b"private.test"), policy(OpenGate()))
    assert isinstance(decision, Forward) and b"X-Prevu-User" not in decision.head


# --- the connection's named states ------------------------------------------------


def test_a_keep_alive_exchange_stays_in_http_then_closes_after_a_refusal() -> None:
    proxy = InMemory()
    proxy.routes.put("static", Route("app.test", UPSTREAM))
    client, transport = proxy.client()
    assert client.state == "http"
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    upstream, _ = proxy.upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert transport.value().endswith(b"ok") and client.state == "http"
    # A pipelined pair: a request that must close, then one that is never served.
    client.dataReceived(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert client.state == "closing" and client.closed
    assert len(proxy.reactor.tcpClients) == 1
    client.connectionLost()
    assert client.state == "closed"


def test_last_state_serves_nothing_after_a_closing_answer() -> None:
    proxy = InMemory()
    proxy.routes.put("static", Route("app.test", UPSTREAM))
    client, transport = proxy.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    upstream, _ = proxy.upstream()
    client.dataReceived(b"GET / HTTP/9\r\n\r\n")  # unparsable: its 400 waits its turn
    assert client.state == "last"
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answers = transport.value()
    assert answers.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 400 " in answers
    assert client.state == "closing" and len(proxy.reactor.tcpClients) == 1


def test_an_upgrade_goes_from_upgrading_to_tunnel() -> None:
    proxy = InMemory()
    proxy.routes.put("static", Route("app.test", UPSTREAM))
    client, transport = proxy.client()
    client.dataReceived(
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nearly"
    )
    assert client.state == "upgrading"
    upstream, upstream_transport = proxy.upstream()
    upstream.dataReceived(b"HTTP/1.1 101 Switching\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
    assert client.state == "tunnel"
    assert upstream_transport.value().endswith(b"\r\n\r\nearly")
    client.dataReceived(b"ping")
    upstream.dataReceived(b"pong")
    assert upstream_transport.value().endswith(b"ping") and transport.value().endswith(b"pong")
