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

from prevu.config import Config
from prevu.tls.issuer import CertificateStatus

STATES = ("pending", "issuing", "valid", "renewing", "failed", "unused")


class StatusSource(Protocol):
    """Anything that reports certificate statuses (the ACME issuer, the files-mode watcher)."""

    def statuses(self) -> list[CertificateStatus]: ...

    def order_counts(self) -> tuple[int, int]:
        """ACME orders (started, failed) since start."""
        ...


class TlsLike(Protocol):
    """The part of `prevu.tls.service.TlsParts` the API needs."""

    @property
    def mode(self) -> str: ...

    @property
    def status(self) -> StatusSource: ...


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_lines(
    statuses: Sequence[CertificateStatus], orders: tuple[int, int] = (0, 0)
) -> list[str]:
    """
    Prometheus text-format lines (no trailing newline) for the metrics endpoint.

    `orders` is (orders started, orders failed) since start.
    """
    lines = [
        "# HELP prevu_certificate_expiry_timestamp_seconds notAfter of the certificate for a name.",
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
        lines.append(
            f'prevu_certificate_failures{{host="{_label(status.name)}"}} {status.failures}'
        )
    started, failed = orders
    lines += [
        "# HELP prevu_acme_orders_total ACME orders started, and those that failed.",
        "# TYPE prevu_acme_orders_total counter",
        f'prevu_acme_orders_total{{result="started"}} {started}',
        f'prevu_acme_orders_total{{result="failed"}} {failed}',
    ]
    return lines


def authorized(request: Any, token: str | None) -> bool:
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

    @classmethod
    def for_tls(cls, config: Config, tls: TlsLike | None) -> CertificatesApi:
        """The API for the TLS parts `build_tls` made (None when TLS is off)."""
        return cls(
            mode=tls.mode if tls is not None else "off",
            source=tls.status if tls is not None else None,
            api_token=config.server.api_token,
        )

    def metrics_lines(self) -> list[str]:
        """Prometheus lines for `GET /metrics` (empty when TLS is off)."""
        if self.source is None:
            return []
        return metrics_lines(self.source.statuses(), self.source.order_counts())

    def metrics_text(self) -> bytes:
        """`metrics_lines` as text to append to the `/metrics` body (empty when TLS is off)."""
        lines = self.metrics_lines()
        return ("\n".join(lines) + "\n").encode() if lines else b""

    def render(self, request: Any) -> bytes:
        if not self.api_token:
            request.setResponseCode(403)
            body: Any = {"error": "the API is off: set [server] api_token (or api_token_file)"}
        elif not authorized(request, self.api_token):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Bearer realm="prevu"')
            body = {"error": "missing or wrong bearer token"}
        else:
            statuses = self.source.statuses() if self.source is not None else []
            body = {"mode": self.mode, "certificates": [s.to_json() for s in statuses]}
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"
