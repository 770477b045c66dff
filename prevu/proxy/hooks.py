"""
What the proxy asks of the rest of prevu, as small protocols and values.

The proxy itself knows HTTP and routes; whether a request may pass (login),
whether something else answers it first (ACME challenges, the HTTPS redirect)
and what happens when a sleeping preview is asked for are decided elsewhere
and plugged in here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from attrs import frozen

from prevu.routing import Route

Headers = list[tuple[bytes, bytes]]


@frozen
class RequestHead:
    """The parts of a client's request that hooks look at."""

    method: bytes
    target: bytes
    host: str
    scheme: str
    client: str
    headers: Sequence[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (any case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def url(self) -> str:
        """The full URL the client asked for."""
        return f"{self.scheme}://{self.host}{self.target.decode('latin-1')}"


@frozen
class Reply:
    """A complete response the proxy sends instead of forwarding."""

    status: int
    headers: Headers
    body: bytes = b""


@frozen
class Allow:
    """Forward the request; `user` becomes X-Prevu-User, `remove` lists cookies to drop."""

    user: str | None = None


Decision = Allow | Reply


class AccessGate(Protocol):
    """Decides whether a request to a private route may pass (the reviewer login)."""

    def check(self, route: Route, head: RequestHead) -> Decision:
        """Allow the request, or give the reply (302 to login, 401) that refuses it."""


class Interceptor(Protocol):
    """Answers some requests before routing (ACME HTTP-01, redirect to HTTPS)."""

    def intercept(self, head: RequestHead) -> Reply | None:
        """A reply for this request, or None to let it through."""


class Waker(Protocol):
    """Wakes a sleeping preview when a request arrives for it."""

    def wake(self, route: Route) -> None:
        """Start the preview behind `route`; the proxy answers 503 meanwhile."""


class OpenGate:
    """An AccessGate that lets everything through (no login configured)."""

    def check(self, route: Route, head: RequestHead) -> Decision:
        return Allow()


class NoWaker:
    """A Waker that does nothing."""

    def wake(self, route: Route) -> None:
        return None
