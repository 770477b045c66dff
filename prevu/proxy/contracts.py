"""
What the proxy's three mechanics ask of each other, as Protocols.

The client connection (`prevu.proxy.server`) parses requests and owns the
client's transport; an exchange (`prevu.proxy.exchange`) relays one request
and its response; an upstream connection (`prevu.proxy.upstream`) carries
one exchange at a time. Each is typed against the others through these
Protocols, never by importing them, so the imports run one way:
server -> exchange -> upstream -> contracts.

Threading: everything runs in the reactor thread. Units: seconds, bytes.
None of these methods raise; failures are reported by calling back
(`upstream_connect_failed`, `upstream_lost`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from prevu.proxy.deadlines import DeadlineKind
from prevu.proxy.pages import PageLinks


class UpstreamLink(Protocol):
    """What an exchange uses of its upstream connection."""

    transport: Any  # the TCP transport (its producer methods give backpressure)
    connected_: bool  # connected, and not lost since
    reused: bool  # taken from the pool rather than freshly connected
    tunnel: bool  # spliced after a 101: bytes pass through unparsed

    def write(self, data: bytes) -> None:
        """Send bytes to the upstream."""

    def abort(self) -> None:
        """Drop the connection now; it is never reused."""


class ResponseParser(Protocol):
    """llhttp's response parser (httptools), as the upstream connection feeds it."""

    def feed_data(self, data: bytes) -> None:
        """Parse bytes; raises httptools' errors."""


class UpstreamUser(Protocol):
    """What an upstream connection asks of the exchange using it."""

    started: bool  # the response head went to the client
    head_size: int  # bytes of response head read so far (bounded by max_head)

    @property
    def response_parser(self) -> ResponseParser:
        """The parser of the response being read (one per response)."""

    def upstream_ready(self, connection: UpstreamLink) -> None:
        """The connection is open: send the request."""

    def upstream_connect_failed(self, timed_out: bool, reason_: Any) -> None:
        """The connection could not be made (`reason_`: a Failure)."""

    def flush_to_client(self) -> None:
        """Write what the parser produced to the client."""

    def response_complete(self, reusable: bool) -> None:
        """A response without body (HEAD) ended; `reusable`: nothing followed it."""

    def upstream_upgraded(self, rest: bytes) -> None:
        """The upstream answered 101; `rest` are the bytes after its head."""

    def tunnel_received(self, data: bytes) -> None:
        """Bytes from the upstream of an upgraded connection, for the client."""

    def upstream_invalid(self, why: str) -> None:
        """The upstream's response cannot be relayed (502)."""

    def upstream_lost(self, connection: UpstreamLink, why: Any) -> None:
        """The connection closed while this exchange used it (`why`: a Failure)."""


class ClientSide(Protocol):
    """What an exchange asks of the client connection it answers."""

    write_blocked: bool  # the client does not read what is written to it
    max_body: int  # bytes of request body allowed
    max_head: int  # bytes of response head (and of trailers) allowed
    upload_producer: Any  # an IPushProducer: registered on the upstream, it holds the client
    links: PageLinks  # where the proxy's own pages link to (logs, login)
    # Called once per request: an attribute holding the pool's own method.
    acquire_upstream: Callable[[tuple[str, int], UpstreamUser], UpstreamLink]

    def write(self, data: bytes) -> None:
        """Send bytes to the client."""

    def release_upstream(self, connection: UpstreamLink) -> None:
        """Give back an upstream connection whose response ended cleanly."""

    def set_deadline(self, kind: DeadlineKind) -> None:
        """Restart the clock for a wait of this kind."""

    def hold_reading(self, reason: str, hold: bool) -> None:
        """Hold back (or stop holding back) reading the client for `reason`."""

    def upstream_opened(self) -> None:
        """The exchange's upstream connection is open: held body bytes are out."""

    def body_too_large(self, exchange: Any) -> None:
        """The request body of `exchange` went over `max_body`."""

    def exchange_finished(self, exchange: Any, keep_alive: bool) -> None:
        """The response to `exchange` has been written."""

    def start_tunnel(self, exchange: Any, connection: UpstreamLink) -> None:
        """Splice the client and `connection` (after a 101)."""

    def tunnel_activity(self) -> None:
        """Bytes went through the tunnel: its idle deadline starts again."""

    def close(self) -> None:
        """Drop the client connection now."""
