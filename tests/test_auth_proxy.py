"""Reviewer access through the real proxy, to a real upstream on 127.0.0.1 that echoes headers."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.web.resource import Resource
from twisted.web.server import Site

from prevu.auth.authority import Authority
from prevu.auth.gate import AuthGate
from prevu.auth.rules import AuthSettings
from prevu.auth.tokens import Signer, bypass_token, encode_session
from prevu.proxy.server import ProxyFactory, ProxySettings
from prevu.routing import Route, RouteRegistry, Upstream
from tests.support.net import connect_raw, reactor_, split_responses


class Echo(Resource):
    """Answers every request with its headers as JSON."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        headers = {
            name.decode().lower(): [v.decode() for v in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(headers).encode()


async def exchange(port: int, host: bytes, *headers: bytes) -> tuple[int, dict[bytes, Any], bytes]:
    client = await connect_raw(port)
    extra = b"".join(h + b"\r\n" for h in headers)
    client.send(
        b"GET /page HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"Connection: close\r\n\r\n"
    )
    await client.wait_for(lambda data: bool(split_responses(data)), 10)
    [response] = split_responses(client.take())
    if client.transport is not None:
        client.transport.loseConnection()
    return response


@pytest_twisted.ensureDeferred
async def test_the_session_cookie_never_reaches_the_upstream() -> None:
    """Through the proxy: a session passes, prevu_session and X-Prevu-Bypass are stripped,
    X-Prevu-User is set by prevu (a client's forged one is dropped), other cookies stay."""
    reactor = reactor_()
    upstream = reactor.listenTCP(0, Site(Echo()), interface="127.0.0.1")
    authority = Authority(
        settings=AuthSettings(public_url="http://prevu.preview.test:8000", domain="preview.test"),
        signer=Signer.from_secrets("k" * 32),
    )
    routes = RouteRegistry()
    routes.put(
        "previews",
        Route(
            "pr-1.preview.test",
            Upstream("127.0.0.1", upstream.getHost().port),
            access="private",
            repo="acme/shop",
        ),
    )
    proxy = reactor.listenTCP(
        0,
        ProxyFactory(reactor, routes, ProxySettings(), gate=AuthGate(authority, reactor)),
        interface="127.0.0.1",
    )
    port = proxy.getHost().port
    try:
        session = authority.new_session("alice", reactor.seconds())
        token = encode_session(authority.signer, session)
        status, _, body = await exchange(
            port,
            b"pr-1.preview.test",
            b"Cookie: theme=dark; prevu_session=" + token.encode() + b"; lang=en",
            b"X-Prevu-User: mallory",
        )
        assert status == 200
        seen = json.loads(body)
        assert seen["x-prevu-user"] == ["alice"]
        assert "prevu_session" not in json.dumps(seen)
        assert token not in json.dumps(seen)
        assert "theme=dark" in seen["cookie"][0] and "lang=en" in seen["cookie"][0]

        bypass = bypass_token(authority.signer, repo="acme/shop")
        status, _, body = await exchange(
            port, b"pr-1.preview.test", b"X-Prevu-Bypass: " + bypass.encode()
        )
        assert status == 200
        seen = json.loads(body)
        assert seen["x-prevu-user"] == ["~bypass"]
        assert bypass not in json.dumps(seen)

        status, headers, _ = await exchange(port, b"pr-1.preview.test", b"Accept: text/html")
        assert status == 302
        assert headers[b"location"][0].startswith(b"http://prevu.preview.test:8000/login?next=")
        status, _, _ = await exchange(port, b"pr-1.preview.test", b"Accept: application/json")
        assert status == 401
    finally:
        await proxy.stopListening()
        await upstream.stopListening()
