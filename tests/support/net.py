"""
Loopback network helpers for proxy tests: raw clients, scripted upstreams.

Everything here runs on the test's reactor (pytest-twisted) and only talks to
127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


def within(d: defer.Deferred[Any], seconds: float = 10.0) -> defer.Deferred[Any]:
    """`d` with an explicit timeout, so a test never hangs on it."""
    return d.addTimeout(seconds, reactor_())


async def sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor_(), seconds, lambda: None)


class RawClient(Protocol):
    """A client that sends raw bytes and collects everything it receives."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.waiters: list[tuple[Callable[[bytes], bool], defer.Deferred[bytes]]] = []
        self.is_closed = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.is_closed = True
        self._check()
        for _, waiter in self.waiters:
            waiter.errback(ConnectionError(f"closed; received {bytes(self.received)[:300]!r}"))
        self.waiters = []
        self.closed.callback(None)

    def _check(self) -> None:
        for item in list(self.waiters):
            predicate, waiter = item
            if predicate(bytes(self.received)):
                self.waiters.remove(item)
                waiter.callback(bytes(self.received))

    def wait_for(self, predicate: Callable[[bytes], bool], seconds: float = 10) -> Any:
        """Fires with everything received once `predicate` holds for it."""
        d: defer.Deferred[bytes] = defer.Deferred()
        if predicate(bytes(self.received)):
            d.callback(bytes(self.received))
            return d
        self.waiters.append((predicate, d))
        return within(d, seconds)

    def wait_count(self, marker: bytes, count: int, seconds: float = 10) -> Any:
        return self.wait_for(lambda data: data.count(marker) >= count, seconds)

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def take(self) -> bytes:
        data = bytes(self.received)
        self.received = bytearray()
        return data


async def connect_raw(port: int, host: str = "127.0.0.1") -> RawClient:
    """A RawClient connected to host:port."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    client = RawClient()
    await within(connectProtocol(TCP4ClientEndpoint(reactor_(), host, port), client), 5)
    return client


def split_responses(data: bytes) -> list[tuple[int, dict[bytes, list[bytes]], bytes]]:
    """Parse a byte stream of Content-Length/chunked responses (for assertions)."""
    import httptools

    results: list[tuple[int, dict[bytes, list[bytes]], bytes]] = []

    class Collector:
        def __init__(self) -> None:
            self.headers: dict[bytes, list[bytes]] = {}
            self.body = bytearray()

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.setdefault(name.lower(), []).append(value)

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            results.append((parser.get_status_code(), self.headers, bytes(self.body)))
            self.headers = {}
            self.body = bytearray()

    collector = Collector()
    parser = httptools.HttpResponseParser(collector)
    parser.feed_data(data)
    return results


class ScriptedUpstream(Protocol):
    """An upstream whose behaviour a test gives as a function of each request."""

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.buffer = b""

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.server.received += data
        self.buffer += data
        self.server.on_data(self, data)


class ScriptedServer(Factory):
    """Listens on 127.0.0.1 and calls `on_data(connection, data)` for every read."""

    def __init__(self, on_data: Callable[[ScriptedUpstream, bytes], None]) -> None:
        self.on_data = on_data
        self.connections: list[ScriptedUpstream] = []
        self.received = b""
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> ScriptedUpstream:
        return ScriptedUpstream(self)

    def listen(self) -> int:
        self.port = reactor_().listenTCP(0, self, interface="127.0.0.1")
        return int(self.port.getHost().port)

    async def stop(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abortConnection()  # type: ignore[attr-defined]
        if self.port is not None:
            await self.port.stopListening()


def answer_each_head(response: bytes) -> Callable[[ScriptedUpstream, bytes], None]:
    """A script: answer `response` to every complete request head (no bodies)."""

    def on_data(connection: ScriptedUpstream, data: bytes) -> None:
        while b"\r\n\r\n" in connection.buffer:
            _, _, connection.buffer = connection.buffer.partition(b"\r\n\r\n")
            connection.transport.write(response)  # type: ignore[union-attr]

    return on_data


# --- a minimal WebSocket echo server (RFC 6455), enough for text frames ----

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def ws_frame(payload: bytes, mask: bytes | None = None, opcode: int = 1) -> bytes:
    """One final WebSocket frame, masked when `mask` is given (client to server)."""
    head = bytes([0x80 | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + payload
    return head + payload


def ws_parse(data: bytes) -> tuple[bytes, bytes, int] | None:
    """(payload, rest, opcode) of the first frame in `data`, or None if incomplete."""
    if len(data) < 2:
        return None
    opcode = data[0] & 0x0F
    masked = data[1] & 0x80
    length = data[1] & 0x7F
    offset = 2
    if length == 126:
        if len(data) < 4:
            return None
        length = struct.unpack("!H", data[2:4])[0]
        offset = 4
    elif length == 127:
        if len(data) < 10:
            return None
        length = struct.unpack("!Q", data[2:10])[0]
        offset = 10
    mask = b""
    if masked:
        mask = data[offset : offset + 4]
        offset += 4
    if len(data) < offset + length:
        return None
    payload = data[offset : offset + length]
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return payload, data[offset + length :], opcode


def websocket_echo(connection: ScriptedUpstream, data: bytes) -> None:
    """Script: complete the handshake, then echo every text frame back unmasked."""
    if not getattr(connection, "upgraded", False):
        if b"\r\n\r\n" not in connection.buffer:
            return
        head, _, connection.buffer = connection.buffer.partition(b"\r\n\r\n")
        key = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        connection.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ws_accept(key) + b"\r\n\r\n"
        )
        connection.upgraded = True  # type: ignore[attr-defined]
    while True:
        frame = ws_parse(connection.buffer)
        if frame is None:
            return
        payload, connection.buffer, opcode = frame
        connection.transport.write(ws_frame(b"echo: " + payload, opcode=opcode))  # type: ignore[union-attr]


class _Once(ClientFactory):
    pass


class StreamingUpstream(Protocol):
    """
    Answers the first request head with `size` bytes, written only as fast as
    the reader takes them (a push producer on its own transport).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.left = size
        self.paused = False
        self.buffer = b""
        self.block = b"s" * (256 * 1024)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and self.left == self.size:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)  # type: ignore[union-attr]
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
            self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left > 0:
            block = self.block[: min(len(self.block), self.left)]
            self.left -= len(block)
            self.transport.write(block)  # type: ignore[union-attr]
        if self.left == 0:
            self.transport.unregisterProducer()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True
        self.left = 0


class SlowReader(Protocol):
    """Reads a response slowly: pauses its transport briefly after every `step` bytes."""

    def __init__(self, step: int = 1 << 20, pause: float = 0.004) -> None:
        self.step = step
        self.pause = pause
        self.count = 0
        self.since_pause = 0
        self.head = b""
        self.done: defer.Deferred[int] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.head:
            self.head = data[:200]
        self.count += len(data)
        self.since_pause += len(data)
        if self.since_pause >= self.step:
            self.since_pause = 0
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            reactor_().callLater(self.pause, self.transport.resumeProducing)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(self.count)


class EndlessUploader(Protocol):
    """Uploads a body as fast as the connection lets it, counting what was written."""

    def __init__(self, host: bytes, size: int) -> None:
        self.host = host
        self.size = size
        self.sent = 0
        self.paused = False
        self.block = b"u" * (256 * 1024)

    def connectionMade(self) -> None:
        self.transport.write(  # type: ignore[union-attr]
            b"POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
            % (self.host, self.size)
        )
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.size:
            self.sent += len(self.block)
            self.transport.write(self.block)  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True
