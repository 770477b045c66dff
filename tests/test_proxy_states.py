"""
The proxy's honest pages and X-Robots-Tag over real loopback HTTP: the real
ProxyFactory and login gate on 127.0.0.1, a real upstream (twisted.web), and
routes in each state the orchestrator publishes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.web.resource import Resource
from twisted.web.server import Site

from prevu.auth.authority import Authority
from prevu.auth.gate import AuthGate
from prevu.auth.rules import AuthSettings
from prevu.auth.tokens import Signer, encode_session
from prevu.proxy.server import ProxyFactory, ProxySettings
from prevu.routing import Route, RouteRegistry, Upstream
from tests.support.net import connect_raw, reactor_, split_responses

PUBLIC_URL = "http://prevu.preview.test:8000"
LOGS = b"http://prevu.preview.test:8000/previews/pr-1-shop"


class Hello(Resource):
    """A preview stand-in that sets its own X-Robots-Tag on /own."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        if request.path == b"/own":
            request.setHeader(b"x-robots-tag", b"nosnippet")
        return b"hello"


class Stack:
    """Proxy + gate + upstream on loopback; `put` a route, `get` through the proxy."""

    def __init__(self) -> None:
        reactor = reactor_()
        self.reactor = reactor
        self.authority = Authority(
            settings=AuthSettings(public_url=PUBLIC_URL, domain="preview.test"),
            signer=Signer.from_secrets("k" * 32),
        )
        self.routes = RouteRegistry()
        self.upstream = reactor.listenTCP(0, Site(Hello()), interface="127.0.0.1")
        settings = ProxySettings(public_url=PUBLIC_URL)
        gate = AuthGate(self.authority, reactor)
        self.proxy = reactor.listenTCP(
            0, ProxyFactory(reactor, self.routes, settings, gate=gate), interface="127.0.0.1"
        )
        session = self.authority.new_session("alice", reactor.seconds())
        token = encode_session(self.authority.signer, session)
        self.cookie = b"Cookie: prevu_session=" + token.encode()

    @property
    def up(self) -> Upstream:
        return Upstream("127.0.0.1", self.upstream.getHost().port)

    def put(self, host: str, state: str = "ready", **kwargs: Any) -> None:
        values: dict[str, Any] = {
            "upstream": self.up if state == "ready" else None,
            "state": state,
            "access": "private",
            "preview": "pr-1-shop",
            "repo": "acme/shop",
            "noindex": True,
        }
        values.update(kwargs)
        self.routes.put("previews", Route(host, **values))

    async def get(
        self, host: bytes, *headers: bytes, path: bytes = b"/", method: bytes = b"GET"
    ) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        client = await connect_raw(self.proxy.getHost().port)
        extra = b"".join(h + b"\r\n" for h in headers)
        client.send(
            method + b" " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra
            + b"Connection: close\r\n\r\n"
        )
        await client.wait_for(lambda data: bool(split_responses(data)), 10)
        [response] = split_responses(client.take())
        if client.transport is not None:
            client.transport.loseConnection()
        return response

    async def stop(self) -> None:
        await self.proxy.stopListening()
        await self.upstream.stopListening()


@pytest_twisted.async_yield_fixture
async def stack() -> AsyncIterator[Stack]:
    s = Stack()
    yield s
    await s.stop()


def robots(headers: dict[bytes, list[bytes]]) -> list[bytes]:
    return headers.get(b"x-robots-tag", [])


@pytest_twisted.ensureDeferred
async def test_proxied_preview_responses_carry_noindex_unless_turned_off(stack: Stack) -> None:
    stack.put("on.preview.test", access="public")
    stack.put("off.preview.test", access="public", noindex=False)
    stack.routes.put("static", Route("fixed.preview.test", stack.up))  # a [[routes]] entry
    status, headers, body = await stack.get(b"on.preview.test")
    assert (status, body, robots(headers)) == (200, b"hello", [b"noindex"])
    client = await connect_raw(stack.proxy.getHost().port)
    client.send(b"HEAD / HTTP/1.1\r\nHost: on.preview.test\r\n\r\n")
    head = await client.wait_for(lambda data: b"\r\n\r\n" in data, 10)
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nX-Robots-Tag: noindex\r\n" in head
    client.transport.loseConnection()
    _, headers, _ = await stack.get(b"on.preview.test", path=b"/own")
    assert sorted(robots(headers)) == [b"noindex", b"nosnippet"]  # the app's own is kept
    status, headers, _ = await stack.get(b"off.preview.test")
    assert (status, robots(headers)) == (200, [])
    status, headers, _ = await stack.get(b"fixed.preview.test")
    assert (status, robots(headers)) == (200, [])


@pytest_twisted.ensureDeferred
async def test_failed_private_preview(stack: Stack) -> None:
    """Anonymous: the login redirect as before. Signed in: 503, the reason, the logs link."""
    stack.put("pr-1.preview.test", "failed", detail="build failed: <exit 3>")
    status, headers, _ = await stack.get(b"pr-1.preview.test", b"Accept: text/html")
    assert status == 302
    assert headers[b"location"][0].startswith(PUBLIC_URL.encode() + b"/login?next=")
    assert robots(headers) == [b"noindex"]
    status, headers, body = await stack.get(b"pr-1.preview.test", stack.cookie)
    assert status == 503 and robots(headers) == [b"noindex"]
    assert b"build failed: &lt;exit 3&gt;" in body
    assert b'href="' + LOGS + b'"' in body
    assert b"retry-after" not in headers


@pytest_twisted.ensureDeferred
async def test_failed_public_preview_names_the_state_and_links_to_the_login(stack: Stack) -> None:
    stack.put("pr-1.preview.test", "failed", access="public", detail="secret reason")
    status, _, body = await stack.get(b"pr-1.preview.test")
    assert status == 503 and b"failed" in body and b"secret reason" not in body
    assert b"/login?next=http%3A%2F%2Fprevu.preview.test%3A8000%2Fpreviews%2Fpr-1-shop" in body


@pytest_twisted.ensureDeferred
async def test_building_preview_waits_and_links_to_the_live_log(stack: Stack) -> None:
    stack.put("pr-1.preview.test", "building", access="public")
    status, headers, body = await stack.get(b"pr-1.preview.test")
    assert status == 503 and headers[b"retry-after"] == [b"5"]
    assert b"http-equiv=refresh" in body and b'href="' + LOGS + b'"' in body
    assert robots(headers) == [b"noindex"]


@pytest_twisted.ensureDeferred
async def test_closed_preview_says_it_was_removed(stack: Stack) -> None:
    stack.put("pr-1.preview.test", "closed", access="public", since=1_790_000_000.0)
    status, headers, body = await stack.get(b"pr-1.preview.test")
    assert status == 410 and b"was removed on 2026-09-21" in body
    assert b"No preview or route" not in body and robots(headers) == [b"noindex"]
    status, _, body = await stack.get(b"gone.preview.test")
    assert status == 404 and b"No preview or route" in body  # after `history`: no route at all


@pytest_twisted.ensureDeferred
async def test_fork_preview_awaiting_approval_says_so_not_404(stack: Stack) -> None:
    """Anonymous: the login as before. Signed in: 503, the command with the commit, the page."""
    commit = "3f2a9c1" + "0" * 33
    stack.put("pr-1.preview.test", "awaiting", commit=commit, repo="acme/<shop>")
    status, headers, _ = await stack.get(b"pr-1.preview.test", b"Accept: text/html")
    assert status == 302 and robots(headers) == [b"noindex"]
    status, headers, body = await stack.get(b"pr-1.preview.test", stack.cookie)
    assert status == 503 and robots(headers) == [b"noindex"]
    assert b"No preview or route" not in body and b"acme/&lt;shop&gt;" in body
    assert b"awaits a maintainer's approval" in body and b"/preview approve 3f2a9c1" in body
    assert b'href="' + LOGS + b'"' in body
    assert b"retry-after" not in headers and b"http-equiv=refresh" not in body
    stack.put("pr-2.preview.test", "awaiting", commit=commit, access="public")
    status, _, body = await stack.get(b"pr-2.preview.test")
    assert status == 503 and b"/preview approve</code>" in body and b"/login?next=" in body


@pytest_twisted.ensureDeferred
async def test_crashed_preview_gets_the_honest_page_not_a_bare_502(stack: Stack) -> None:
    """A ready preview whose container refuses connections: 503 saying it does not answer."""
    probe = stack.reactor.listenTCP(0, Site(Hello()), interface="127.0.0.1")
    dead = Upstream("127.0.0.1", probe.getHost().port)
    await probe.stopListening()  # nothing listens there now
    stack.put("pr-1.preview.test", upstream=dead)
    status, headers, body = await stack.get(b"pr-1.preview.test", stack.cookie)
    assert status == 503 and b"not answering" in body and b'href="' + LOGS + b'"' in body
    assert robots(headers) == [b"noindex"]
    stack.put("pr-2.preview.test", upstream=dead, access="public")
    status, _, body = await stack.get(b"pr-2.preview.test")
    assert status == 503 and b"/login?next=" in body
    stack.routes.put("static", Route("fixed.preview.test", dead))
    status, headers, body = await stack.get(b"fixed.preview.test")
    assert status == 502 and robots(headers) == []  # a [[routes]] entry is not a preview

