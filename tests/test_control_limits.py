"""The control app refuses oversized bodies while they arrive, not after buffering them."""

from __future__ import annotations

import pytest_twisted
from klein import Klein

from prevu.control.limits import control_site
from tests.support.net import connect_raw, reactor_, within


def app() -> object:
    klein = Klein()

    @klein.route("/webhooks/github", methods=["POST"])
    def hook(request: object) -> bytes:
        return b"accepted"

    return klein.resource()


@pytest_twisted.ensureDeferred
async def test_a_declared_body_over_the_limit_is_413_at_once() -> None:
    port = reactor_().listenTCP(0, control_site(app(), max_body=1000), interface="127.0.0.1")
    client = await connect_raw(port.getHost().port)
    client.send(
        b"POST /webhooks/github HTTP/1.1\r\nHost: c\r\nContent-Length: 999999999\r\n\r\n"
    )
    await within(client.closed, 5)  # no body was sent: the answer cannot wait for it
    assert client.received.startswith(b"HTTP/1.1 413 ")
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_over_the_limit_is_cut_at_the_limit() -> None:
    port = reactor_().listenTCP(0, control_site(app(), max_body=1000), interface="127.0.0.1")
    client = await connect_raw(port.getHost().port)
    client.send(b"POST /webhooks/github HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.send(b"400\r\n" + b"x" * 0x400 + b"\r\n")
    await within(client.closed, 5)
    assert client.received.startswith(b"HTTP/1.1 413 ")
    assert b"accepted" not in client.received
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_body_under_the_limit_is_served() -> None:
    port = reactor_().listenTCP(0, control_site(app(), max_body=1000), interface="127.0.0.1")
    client = await connect_raw(port.getHost().port)
    client.send(b"POST /webhooks/github HTTP/1.1\r\nHost: c\r\nContent-Length: 5\r\n\r\nhello")
    data = await client.wait_for(lambda d: b"accepted" in d)
    assert data.startswith(b"HTTP/1.1 200 ")
    await port.stopListening()
