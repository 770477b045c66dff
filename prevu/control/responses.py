"""
What the control app's handlers answer with, and the request helpers they share.

A leaf under `prevu/control/` (it imports no handler and no app), so that the
handlers (`api`, `webhooks`, `login`) and the app (`app`) never import each
other for a helper. Handlers return an `Answer` (an outcome, a body, headers)
or raise `RequestRefused(problem, reason)`; the app's funnel
(`prevu.control.app.send`, with the `STATUS` table) is the one place that
sets HTTP status codes.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Any, Literal

from attrs import frozen
from twisted.web.server import Request

from prevu.errors import Problem

Success = Literal["ok", "created", "accepted", "found", "see_other"]
"""
How a request succeeded: `ok`, `created` (a share link), `accepted` (work
queued), `found` (go there, e.g. to log in) and `see_other` (after a POST).
"""

Outcome = Success | Problem
"""Every outcome of a control-app request; `prevu.control.app.STATUS` maps each to a code."""

STATUS: Mapping[Outcome, int] = {
    "ok": 200,
    "created": 201,
    "accepted": 202,
    "found": 302,
    "see_other": 303,
    "malformed": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "throttled": 429,
    "upstream_failed": 502,
    "unavailable": 503,
}
"""
The HTTP status of each outcome: the one table, applied by the control app's
funnel (`prevu.control.app.send`). It lives in this leaf so that the webhook
metric can keep the status code as its label without importing the app.
"""

Headers = tuple[tuple[bytes, bytes], ...]

NO_STORE: Headers = ((b"cache-control", b"no-store"),)
JSON_HEADERS: Headers = ((b"content-type", b"application/json"), *NO_STORE)


@frozen
class Answer:
    """
    One answer of a handler: `outcome`, the `body` bytes, and `headers` to
    set (each replaces any earlier value of that name, except `set-cookie`,
    which is added). `status` is set only to relay a reply of the access gate
    (`prevu.proxy.hooks.Reply`), which carries the status the proxy would
    send for the same request; every other answer leaves it None.
    """

    outcome: Outcome
    body: bytes = b""
    headers: Headers = ()
    status: int | None = None


def json_bytes(body: Any) -> bytes:
    """`body` as compact JSON and a newline."""
    return json.dumps(body, indent=None, separators=(",", ":")).encode() + b"\n"


def json_answer(outcome: Outcome, body: Any, headers: Headers = ()) -> Answer:
    """A JSON answer (`application/json`, not cached)."""
    return Answer(outcome, json_bytes(body), JSON_HEADERS + headers)


def header(request: Request, name: bytes) -> str | None:
    """The value of request header `name` (latin-1), or None."""
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def bearer_ok(request: Request, token: str | None) -> bool:
    """
    True when `request` carries `Authorization: Bearer <token>` (scheme in any
    case, compared in constant time); always False without a `token`.
    """
    if not token:
        return False
    scheme, _, value = (header(request, b"authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


BEARER_CHALLENGE: Headers = ((b"www-authenticate", b'Bearer realm="prevu"'),)
"""The header of a 401 answer to a request without a valid bearer token."""
