"""
The network health checker: probes a container before a route switches to it.

With `health = "/path"` in `.prevu.toml`, a GET of that path must answer with
a status below 500; without it, a TCP connection must be accepted. Both use
plain Twisted endpoints on the reactor, one short connection per probe.
"""

from __future__ import annotations

from typing import Any

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as WireProtocol
from twisted.python.failure import Failure

from prevu.routing import Upstream
from prevu.runtime import HealthChecker


class _StatusProbe(WireProtocol):
    """Sends one GET and reads the status code of the answer."""

    def __init__(self, request: bytes, done: Deferred[int]) -> None:
        self.request = request
        self.done = done
        self.buffer = b""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n" in self.buffer or len(self.buffer) > 1024:
            line = self.buffer.split(b"\r\n", 1)[0]
            parts = line.split()
            status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 599
            self._finish(status)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self._finish(599)

    def _finish(self, status: int) -> None:
        if not self.done.called:
            self.done.callback(status)
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()


class _Nothing(WireProtocol):
    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()


@define
class NetworkHealthChecker:
    """The real HealthChecker: HTTP GET of the health path, or a TCP connect."""

    reactor: Any
    timeout: float = 2.0

    def _endpoint(self, upstream: Upstream) -> Any:
        if ":" in upstream.host:
            return TCP6ClientEndpoint(self.reactor, upstream.host, upstream.port, self.timeout)
        return TCP4ClientEndpoint(self.reactor, upstream.host, upstream.port, self.timeout)

    async def check(self, upstream: Upstream, path: str | None, host: str) -> bool:
        endpoint = self._endpoint(upstream)
        try:
            if path is None:
                await endpoint.connect(Factory.forProtocol(_Nothing))
                return True
            done: Deferred[int] = Deferred()
            request = (
                f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: prevu-health\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
            await endpoint.connect(Factory.forProtocol(lambda: _StatusProbe(request, done)))
            done.addTimeout(self.timeout, self.reactor)
            status = await done
        except Exception:
            return False
        return status < 500


def _conforms(checker: NetworkHealthChecker) -> HealthChecker:
    """mypy checks here that NetworkHealthChecker satisfies the HealthChecker Protocol."""
    return checker
