"""A request body limit for the control app, enforced while the body arrives."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.web.server import Request, Site

MAX_CONTROL_BODY = 25 << 20  # the largest webhook a forge sends is well under this


class LimitedRequest(Request):
    """
    A twisted.web Request that refuses bodies over `max_body` with 413 as soon
    as it knows (declared length, or streamed bytes), instead of buffering the
    whole body to a temporary file first. Webhooks are unauthenticated until
    their signature is checked, which needs the whole body.
    """

    max_body = MAX_CONTROL_BODY
    _received = 0
    _over = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._over:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse_body()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._over:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse_body(self) -> None:
        self._over = True
        self.content = io.BytesIO()
        body = json.dumps({"error": f"request body over the {self.max_body} byte limit"}).encode()
        transport: Any = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        transport.loseConnection()


def control_site(resource: Any, max_body: int = MAX_CONTROL_BODY) -> Site:
    """The control app's Site: bounded request bodies, no tracebacks shown."""

    class Limited(LimitedRequest):
        pass

    Limited.max_body = max_body
    site = Site(resource, requestFactory=Limited)
    site.displayTracebacks = False
    return site
