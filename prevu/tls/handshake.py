"""
On-demand TLS: hold a ClientHello while the certificate for its name is being issued.

pyOpenSSL's servername callback must answer at once; it cannot wait for an
ACME order. So the wait happens one layer down: `HoldingFactory` wraps the
TLS factory, reads the server name out of the first TLS record itself
(`read_client_hello`), and if the issuer says a certificate for that
name is on its way it keeps the bytes — the TLS layer has not seen them yet —
until the issuance finishes or the bounded wait times out. Then the
ClientHello goes to OpenSSL, whose SNI callback finds the new certificate or
falls back to the default one. The client just sees a slow handshake.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from prevu.tls.contexts import ALPN_ACME

_DONE = Failure(ConnectionDone())

#: The largest TLS record plus its header: more than that and it is not a ClientHello we read.
MAX_RECORD = 5 + (1 << 14)

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_SERVER_NAME = 0x0000
_ALPN = 0x0010


class Incomplete(Exception):
    """More bytes are needed to read the ClientHello."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int) -> bytes:
        end = self.offset + count
        if end > len(self.data):
            raise Incomplete
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int) -> bytes:
        return self.take(self.number(size))


@frozen
class ClientHello:
    """What the holding layer reads from a ClientHello: the server name and the ALPN offers."""

    server_name: str | None = None
    protocols: tuple[bytes, ...] = ()


def read_client_hello(data: bytes) -> ClientHello | None:
    """
    The SNI host name and ALPN protocols of the ClientHello at the start of `data`.

    None when the data is not a ClientHello we can read; raises `Incomplete`
    while the first record has not fully arrived.
    """
    record = _Reader(data)
    if record.number(1) != _HANDSHAKE:
        return None
    record.take(2)
    body = _Reader(record.vector(2))
    server_name: str | None = None
    protocols: list[bytes] = []
    try:
        if body.number(1) != _CLIENT_HELLO:
            return None
        hello = _Reader(body.vector(3))
        hello.take(2 + 32)  # legacy_version, random
        hello.vector(1)  # legacy_session_id
        hello.vector(2)  # cipher_suites
        hello.vector(1)  # legacy_compression_methods
        extensions = _Reader(hello.vector(2))
        while extensions.offset < len(extensions.data):
            kind = extensions.number(2)
            payload = _Reader(extensions.vector(2))
            if kind == _SERVER_NAME:
                names = _Reader(payload.vector(2))
                while names.offset < len(names.data):
                    name_type = names.number(1)
                    name = names.vector(2)
                    if name_type == 0:
                        server_name = name.decode("ascii", "replace").lower().rstrip(".")
            elif kind == _ALPN:
                offers = _Reader(payload.vector(2))
                while offers.offset < len(offers.data):
                    protocols.append(offers.vector(1))
    except Incomplete:
        # The record is complete but the hello is cut (split across records): give up on it.
        return None
    return ClientHello(server_name, tuple(protocols))


class HandshakeGate(Protocol):
    """Says whether a handshake for a name should wait (the issuer implements it)."""

    def wait_for(self, host: str) -> Deferred[None] | None:
        """A Deferred that fires (never fails) when `host` may proceed; None to proceed now."""


class _HoldingProtocol(ProtocolWrapper):
    factory: HoldingFactory

    def __init__(self, factory: HoldingFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(cast(Any, factory), wrappedProtocol)
        self._buffer = b""
        self._holding = True
        self._waiting = False
        self._lost = False

    def dataReceived(self, data: bytes) -> None:
        if not self._holding:
            cast(Any, self.wrappedProtocol).dataReceived(data)
            return
        self._buffer += data
        if self._waiting:
            return
        try:
            hello = read_client_hello(self._buffer)
        except Incomplete:
            if len(self._buffer) < MAX_RECORD:
                return
            hello = None
        waiting = None
        # An ACME server validating TLS-ALPN-01 must never wait for the order it validates.
        if hello is not None and hello.server_name and ALPN_ACME not in hello.protocols:
            waiting = self.factory.gate.wait_for(hello.server_name)
        if waiting is None:
            self._release()
            return
        self._waiting = True
        waiting.addBoth(lambda _: self._release())

    def _release(self) -> None:
        self._holding = False
        data, self._buffer = self._buffer, b""
        if data and not self._lost:
            cast(Any, self.wrappedProtocol).dataReceived(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._lost = True
        super().connectionLost(reason)


class HoldingFactory(WrappingFactory):
    """Wraps the TLS factory so that handshakes for names being issued wait (bounded)."""

    protocol = _HoldingProtocol

    def __init__(self, wrappedFactory: object, gate: HandshakeGate) -> None:
        super().__init__(cast(Any, wrappedFactory))
        self.gate = gate
