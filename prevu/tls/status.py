"""
Certificate status: `GET /api/certificates` and Prometheus lines for `/metrics`.

The control app delegates to `CertificatesApi`; the metrics endpoint includes
`metrics_lines(...)`. Both read the sources' `statuses()` (the ACME issuer or
the files-mode certificate) on the reactor thread.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import Any, Protocol

from attrs import frozen
from twisted.web.iweb import IRequest

from prevu.tls.issuer import CertificateStatus

STATES = ("pending", "issuing", "valid", "renewing", "failed", "unused")


class StatusSource(Protocol):
    """Anything that reports certificate statuses."""

    def statuses(self) -> list[CertificateStatus]: ...


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_lines(statuses: Sequence[CertificateStatus], orders: tuple[int, int] = (0, 0)) -> list[str]:
    """
    Prometheus text-format lines (no trailing newline) for the metrics endpoint.

    `orders` is (orders started, orders failed) since start.
    """
    lines = [
        "# HELP prevu_certificate_expiry_timestamp_seconds notAfter of the certificate served for a name.",
        "# TYPE prevu_certificate_expiry_timestamp_seconds gauge",
    ]
    for status in statuses:
        if status.not_after is not None:
            lines.append(
                f'prevu_certificate_expiry_timestamp_seconds{{host="{_label(status.name)}"}} '
                f"{status.not_after:.0f}"
            )
    lines += [
        "# HELP prevu_certificate_state Certificate state per name (1 for the current state).",
        "# TYPE prevu_certificate_state gauge",
    ]
    for status in statuses:
        for state in STATES:
            value = 1 if status.state == state else 0
            lines.append(
                f'prevu_certificate_state{{host="{_label(status.name)}",state="{state}"}} {value}'
            )
    lines += [
        "# HELP prevu_certificate_failures Consecutive failed orders per name.",
        "# TYPE prevu_certificate_failures gauge",
    ]
    for status in statuses:
        lines.append(f'prevu_certificate_failures{{host="{_label(status.name)}"}} {status.failures}')
    started, failed = orders
    lines += [
        "# HELP prevu_acme_orders_total ACME orders started, and those that failed.",
        "# TYPE prevu_acme_orders_total counter",
        f'prevu_acme_orders_total{{result="started"}} {started}',
        f'prevu_acme_orders_total{{result="failed"}} {failed}',
    ]
    return lines


def authorized(request: IRequest, token: str | None) -> bool:
    """Whether `request` carries `Authorization: Bearer <api_token>` (never, without a token)."""
    if not token:
        return False
    header = request.getHeader(b"authorization") or b""
    scheme, _, given = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(given.strip(), token.encode("utf-8"))


@frozen
class CertificatesApi:
    """`GET /api/certificates`: mode, and state and expiry per name."""

    mode: str
    source: StatusSource | None
    api_token: str | None

    def render(self, request: IRequest) -> bytes:
        if not authorized(request, self.api_token):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Bearer realm="prevu"')
            body: Any = {"error": "a valid api_token is required"}
        else:
            statuses = self.source.statuses() if self.source is not None else []
            body = {"mode": self.mode, "certificates": [s.to_json() for s in statuses]}
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"
