"""
The request head the proxy sends upstream, built from the client's: pure rules.

What goes upstream (RFC 9110 §7.6): the request line in HTTP/1.1, the
client's Host as it was written, every header the client sent except the
hop-by-hop ones (and those its `Connection` header lists), the framing of
the body as the proxy will send it, `X-Forwarded-For/-Proto/-Host` (the
client's own only when it is a trusted proxy), `X-Prevu-User` when the
access gate names a reviewer, and the client's cookies without prevu's
session cookie (a preview never sees the reviewer's session; prevu's own
control app, a trusted route, does).

Headers travel as a `HeaderPieces` list, the cheapest shape to build while
parsing and to join into bytes: name, b": ", value, b"\\r\\n", name, ...
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from typing import Final, Protocol

from prevu.proxy.http import connection_tokens, strip_session_cookie

HeaderPieces = list[bytes]
"""Headers as pieces to join: name, b": ", value, b"\\r\\n", name, ... (4 per header)."""

# X-Forwarded-* headers: set by prevu, believed from a client only when it is
# a trusted proxy (a load balancer in front).
FORWARDED: Final = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
# Connection options that are not header names.
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
_NONE: tuple[bytes, ...] = ()


class ParsedHead(Protocol):
    """
    A request head as the client connection parsed it.

    `headers` holds the headers that are passed on as they are; `special`
    the ones the proxy reads, rewrites or drops itself (by lower-case name;
    None when the request had none, the common case); `hosts` every Host
    value; `url` the request target as written.
    """

    method: bytes
    version: str  # "1.1", "1.0", ...
    keep_alive: bool  # the client allows another request on this connection
    upgrade: bool  # llhttp treats the request as an upgrade (Connection: upgrade + Upgrade)
    url: bytes
    hosts: list[bytes]
    headers: HeaderPieces
    special: dict[bytes, list[bytes]] | None
    client_ip: str
    client_ip_bytes: bytes


def values(head: ParsedHead, name: bytes) -> Sequence[bytes]:
    """Every value of the special header `name` (lower case)."""
    special = head.special
    return special.get(name, _NONE) if special is not None else _NONE


def value(head: ParsedHead, name: bytes) -> bytes | None:
    """The values of the special header `name` joined by ", ", or None when absent."""
    found = values(head, name)
    return b", ".join(found) if found else None


def forward_head(
    head: ParsedHead,
    target: bytes,
    raw_host: bytes,
    *,
    content_length: int | None,
    chunked: bool,
    upgrade: bool,
    user: bytes | None,
    route_trusted: bool,
    client_trusted: bool,
    scheme: bytes,
) -> bytes:
    """
    The request head for the upstream, as bytes ending with the blank line.

    `target` is the origin-form target, `raw_host` the Host as the client
    wrote it, `content_length`/`chunked` the body's framing, `upgrade`
    whether the upgrade is forwarded, `user` the reviewer the gate named,
    `route_trusted` whether the route is prevu's own (keeps the session
    cookie), `client_trusted` whether the client is a trusted proxy (its
    X-Forwarded-* are extended), `scheme` the proxy endpoint's scheme.
    """
    pieces = head.headers
    parts = [head.method, b" ", target, b" HTTP/1.1\r\nHost: ", raw_host, b"\r\n"]
    parts += pieces
    forwarded_for = forwarded_proto = forwarded_host = None
    if head.special is not None:
        connection_values = values(head, b"connection")
        if connection_values:
            listed = connection_tokens(connection_values) - _CONNECTION_OPTIONS
            if listed:
                parts = parts[:6] + without_headers(pieces, listed)
        for cookie in values(head, b"cookie"):
            kept = cookie if route_trusted else strip_session_cookie(cookie)
            if kept:
                parts += (b"Cookie: ", kept, b"\r\n")
        if content_length is not None:
            parts.append(b"Content-Length: %d\r\n" % content_length)
        elif chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        expect = value(head, b"expect")
        if expect is not None:
            parts += (b"Expect: ", expect, b"\r\n")
        if upgrade:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", value(head, b"upgrade") or b"", b"\r\n")
        if client_trusted:
            forwarded_for = value(head, b"x-forwarded-for")
            forwarded_proto = value(head, b"x-forwarded-proto")
            forwarded_host = value(head, b"x-forwarded-host")
    if forwarded_for is not None:
        parts += (b"X-Forwarded-For: ", forwarded_for, b", ", head.client_ip_bytes, b"\r\n")
    else:
        parts += (b"X-Forwarded-For: ", head.client_ip_bytes, b"\r\n")
    parts += (
        b"X-Forwarded-Proto: ",
        forwarded_proto or scheme,
        b"\r\nX-Forwarded-Host: ",
        forwarded_host or raw_host,
        b"\r\n",
    )
    if user is not None:
        parts += (b"X-Prevu-User: ", user, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def without_headers(pieces: HeaderPieces, names: Set[bytes]) -> HeaderPieces:
    """Header pieces without the headers called `names` (lower-case)."""
    kept: HeaderPieces = []
    for index in range(0, len(pieces), 4):
        if pieces[index].lower() not in names:
            kept += pieces[index : index + 4]
    return kept
