"""
The control app: one Klein class, the only place that turns errors into HTTP.

Each feature (webhooks, login, API, dashboard) lives in its own module as a
plain object; the routes here are one-line delegations to it.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define
from klein import Klein
from twisted.web.iweb import IRequest

from prevu.config import Config
from prevu.errors import WebhookError


def json_response(request: IRequest, body: Any, code: int = 200) -> bytes:
    """Serialize `body` as the JSON answer to `request`."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=None, separators=(",", ":")).encode() + b"\n"


@define
class ControlApp:
    """The Klein application served on the `control` endpoint."""

    config: Config

    app = Klein()

    def resource(self) -> Any:
        """The twisted.web resource for a Site."""
        return self.app.resource()

    # --- routes -------------------------------------------------------------

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> bytes:
        """Liveness: answers while the reactor runs."""
        return json_response(request, {"status": "ok"})

    # --- errors -------------------------------------------------------------

    @app.handle_errors(WebhookError)
    def webhook_error(self, request: IRequest, failure: Any) -> bytes:
        error: WebhookError = failure.value
        return json_response(request, {"error": error.reason}, error.status)
