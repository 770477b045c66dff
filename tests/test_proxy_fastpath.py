"""The fast paths that rely on Twisted internals still work on this Twisted."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest_twisted
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import StringTransport

from prevu.proxy.fastpath import direct_writer, install_fast_poll, supported
from tests.support.net import connect_raw, reactor_, within


class _Reader(FileDescriptor):
    def __init__(self, fd: int, reactor: Any) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.reads = 0

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.reads += 1
        os.read(self.fd, 100)


def test_fast_poll_dispatches_events_on_a_real_epoll_reactor() -> None:
    """The replacement poll step still calls doRead for ready descriptors."""
    reactor = EPollReactor()
    assert install_fast_poll(reactor)
    read_end, write_end = os.pipe()
    try:
        reader = _Reader(read_end, reactor)
        reactor.addReader(reader)
        os.write(write_end, b"x")
        reactor.doIteration(0.5)
        assert reader.reads == 1
        reactor.removeReader(reader)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_fast_poll_is_not_installed_on_other_reactors() -> None:
    from twisted.internet.testing import MemoryReactor

    assert install_fast_poll(MemoryReactor()) is False


def test_direct_writes_fall_back_for_non_tcp_transports() -> None:
    transport = StringTransport()
    assert not supported(transport)
    write = direct_writer(transport)
    write(b"abc")
    assert transport.value() == b"abc"


@pytest_twisted.ensureDeferred
async def test_direct_writer_sends_on_a_real_tcp_transport_and_buffers_the_rest() -> None:
    """On a real TCP transport the internals are there; big writes still arrive whole."""
    from twisted.internet.protocol import Factory, Protocol

    accepted: list[Protocol] = []

    class Keep(Protocol):
        def connectionMade(self) -> None:
            accepted.append(self)

    port = reactor_().listenTCP(0, Factory.forProtocol(Keep), interface="127.0.0.1")
    client = await connect_raw(port.getHost().port)
    while not accepted:
        await within(_tick(), 2)
    transport = accepted[0].transport
    assert supported(transport), "Twisted's TCP internals changed: update prevu.proxy.fastpath"
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    write = direct_writer(transport)
    payload = b"p" * (4 * 1024 * 1024)
    write(b"small")
    write(payload)
    await client.wait_for(lambda d: len(d) == 5 + len(payload), seconds=10)
    assert bytes(client.received[:5]) == b"small"
    transport.loseConnection()
    await port.stopListening()


def _tick() -> Any:
    from twisted.internet.task import deferLater

    return deferLater(reactor_(), 0.01, lambda: None)
