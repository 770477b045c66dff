"""
How a relayed response's body is delimited for the client: pure rules.

The same decision as h11's `_body_framing` (RFC 9112 §6.3), seen from a
proxy that re-frames what the upstream sent:

- no body at all for a response to HEAD and for 204 and 304, whatever the
  upstream's headers say (a Content-Length is passed on: it describes the
  representation, not this message);
- the upstream's Content-Length, kept, when it sent one and no
  Transfer-Encoding (llhttp refuses the two together);
- otherwise chunked (the upstream's chunks re-chunked, or a close-delimited
  body turned into chunks) for an HTTP/1.1 client;
- otherwise, for an HTTP/1.0 client, delimited by closing the connection.

Interim (1xx) and 101 responses have no body and never reach this rule.
"""

from __future__ import annotations

from typing import Literal

Framing = Literal["none", "length", "chunked", "close"]


def response_framing(
    head_only: bool,
    status: int,
    length: int | None,
    chunked: bool,
    client_http11: bool,
) -> Framing:
    """
    The framing of a final response's body toward the client.

    `head_only`: the request was HEAD; `status`: the final status (>= 200);
    `length`: the upstream's Content-Length or None; `chunked`: the
    upstream sent `Transfer-Encoding: chunked`; `client_http11`: the client
    spoke HTTP/1.1 (an HTTP/1.0 client does not know chunks).
    """
    if head_only or status == 204 or status == 304:
        return "none"
    if length is not None and not chunked:
        return "length"
    if client_http11:
        return "chunked"
    return "close"


def delimited_by_close(framing: Framing, length: int | None, chunked: bool) -> bool:
    """Whether the *upstream* ends this response's body by closing its connection."""
    return framing != "none" and length is None and not chunked
