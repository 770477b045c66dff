"""
Pure HTTP/1.1 helpers for the proxy: header rules, framing and small pages.

No I/O here; everything is bytes in, bytes out, so that the rules that
matter for security (hop-by-hop headers, the session cookie, forwarded
headers) can be tested by calling them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from http import HTTPStatus

# RFC 9110 §7.6.1 plus the historical ones still seen in the wild.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# Request headers the proxy sets itself or must never pass on from a client.
REQUEST_OWN = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-prevu-user",
        b"x-prevu-bypass",
        b"cookie",
        b"host",
        b"content-length",
        b"expect",
    }
)

SESSION_COOKIE = b"prevu_session"

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def reason(status: int) -> bytes:
    """The standard reason phrase for a status code."""
    return _REASONS.get(status, b"Unknown")


def connection_tokens(values: Iterable[bytes]) -> set[bytes]:
    """The lower-cased tokens of all `Connection` header values."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def strip_session_cookie(value: bytes) -> bytes:
    """A Cookie header value without prevu's session cookie (b"" when nothing is left)."""
    if SESSION_COOKIE not in value:
        return value
    kept = [
        part
        for part in (p.strip() for p in value.split(b";"))
        if part and part.split(b"=", 1)[0].strip() != SESSION_COOKIE
    ]
    return b"; ".join(kept)


def cookie_value(values: list[bytes], name: bytes) -> bytes | None:
    """The value of cookie `name` in a list of Cookie header values."""
    for value in values:
        for part in value.split(b";"):
            key, _, content = part.strip().partition(b"=")
            if key == name:
                return content.strip()
    return None


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def page(status: int, title: str, message: str, host: str = "") -> bytes:
    """A small, self-contained HTML page; never a traceback."""
    return html_page(status, title, f"<p>{html.escape(message)}</p>", host)


def html_page(
    status: int, title: str, body_html: str, host: str = "", refresh: int | None = None
) -> bytes:
    """
    The frame of every page the proxy writes: `title` and `host` are escaped
    here, `body_html` is markup the caller escaped; `refresh` (seconds) makes
    the page reload itself.
    """
    where = f"<p class=host>{html.escape(host)}</p>" if host else ""
    reload = f'<meta http-equiv=refresh content="{refresh:d}">' if refresh is not None else ""
    return (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"{reload}<title>{status} {html.escape(title)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;margin:4rem auto;max-width:36rem;"
        "padding:0 1rem;color:#222}h1{font-size:1.4rem}.host{color:#666;font-family:monospace}"
        ".reason{white-space:pre-wrap;background:#f6f6f6;padding:.5rem;font-family:monospace}"
        "</style>"
        f"<h1>{status} {html.escape(title)}</h1>{where}{body_html}"
        "<p><small>prevu</small></p></html>\n"
    ).encode()


def waiting_page(host: str, message: str, retry_after: int) -> bytes:
    """The 503 page shown while a preview builds or wakes; it refreshes itself."""
    return html_page(
        503, "Preview not ready yet", f"<p>{html.escape(message)}</p>", host, retry_after
    )


def response_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A serialized HTTP/1.1 response head."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
    for name, value in headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)


def simple_response(
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    close: bool = False,
    head_only: bool = False,
) -> bytes:
    """A complete response with a Content-Length body (HTML unless told otherwise)."""
    all_headers = list(headers or ())
    if not any(name.lower() == b"content-type" for name, _ in all_headers):
        all_headers.append((b"Content-Type", b"text/html; charset=utf-8"))
    all_headers.append((b"Content-Length", b"%d" % len(body)))
    if not any(name.lower() == b"cache-control" for name, _ in all_headers):
        all_headers.append((b"Cache-Control", b"no-store"))
    if close:
        all_headers.append((b"Connection", b"close"))
    return response_head(status, all_headers) + (b"" if head_only else body)
