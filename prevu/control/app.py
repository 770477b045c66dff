"""
The control app: one Klein class, the only place that turns errors into HTTP.

Each feature (webhooks, login, API, dashboard) lives in its own module as a
plain object; the routes here are one-line delegations to it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define
from klein import Klein
from twisted.internet.defer import ensureDeferred
from twisted.web.iweb import IRequest

from prevu.config import Config
from prevu.control.login import LoginPages, require
from prevu.errors import ApiError, WebhookError
from prevu.tls.status import CertificatesApi

T = TypeVar("T")

if TYPE_CHECKING:
    from prevu.control.api import PreviewsApi
    from prevu.control.webhooks import Webhooks


def json_response(request: Any, body: Any, code: int = 200) -> bytes:
    """Serialize `body` as the JSON answer to `request` (a twisted.web Request)."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=None, separators=(",", ":")).encode() + b"\n"


@define
class ControlApp:
    """The Klein application served on the `control` endpoint."""

    config: Config
    login: LoginPages | None = None
    certificates: CertificatesApi | None = None
    webhooks: Webhooks | None = None
    previews: PreviewsApi | None = None

    app = Klein()

    def resource(self) -> Any:
        """The twisted.web resource for a Site."""
        return self.app.resource()

    # --- routes -------------------------------------------------------------

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> bytes:
        """Liveness: answers while the reactor runs."""
        return json_response(request, {"status": "ok"})

    @app.route("/login", methods=["GET", "HEAD"])
    def login_page(self, request: Any) -> Any:
        return require(self.login).show(request)

    @app.route("/login", methods=["POST"])
    def login_submit(self, request: Any) -> Any:
        return require(self.login).submit(request)

    @app.route("/logout", methods=["POST"])
    def logout(self, request: Any) -> Any:
        return require(self.login).logout(request)

    @app.route("/auth/verify", methods=["GET", "HEAD"])
    def auth_verify(self, request: Any) -> Any:
        return require(self.login).verify(request)

    @app.route("/login/github", methods=["GET"])
    def login_github(self, request: Any) -> Any:
        return require(self.login).github_start(request)

    @app.route("/login/github/callback", methods=["GET"])
    def login_github_callback(self, request: Any) -> Any:
        return require(self.login).github_callback(request)

    @app.route("/api/previews/<preview>/share", methods=["POST"])
    def share_preview(self, request: Any, preview: str) -> Any:
        return require(self.login).share(request, preview)

    @app.route("/api/certificates", methods=["GET"])
    def list_certificates(self, request: Any) -> Any:
        return (self.certificates or CertificatesApi.for_tls(self.config, None)).render(request)

    @app.route("/webhooks/github", methods=["POST"])
    def webhook_github(self, request: IRequest) -> bytes:
        return _need(self.webhooks, "webhooks").github(request)

    @app.route("/webhooks/gitlab", methods=["POST"])
    def webhook_gitlab(self, request: IRequest) -> bytes:
        return _need(self.webhooks, "webhooks").gitlab(request)

    @app.route("/api/previews", methods=["GET"])
    def api_list(self, request: IRequest) -> bytes:
        return _need(self.previews, "the API").list(request)

    @app.route("/api/previews", methods=["POST"])
    def api_create(self, request: IRequest) -> bytes:
        return _need(self.previews, "the API").create(request)

    @app.route("/api/previews/<preview>", methods=["GET"])
    def api_show(self, request: IRequest, preview: str) -> bytes:
        return _need(self.previews, "the API").show(request, preview)

    @app.route("/api/previews/<preview>", methods=["DELETE"])
    def api_delete(self, request: IRequest, preview: str) -> bytes:
        return _need(self.previews, "the API").delete(request, preview)

    @app.route("/api/previews/<preview>/logs", methods=["GET"])
    def api_logs(self, request: IRequest, preview: str) -> Any:
        return ensureDeferred(_need(self.previews, "the API").logs(request, preview))

    @app.route("/api/previews/<preview>/redeploy", methods=["POST"])
    def api_redeploy(self, request: IRequest, preview: str) -> bytes:
        return _need(self.previews, "the API").redeploy(request, preview)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        text = _need(self.previews, "/metrics").metrics_text(request)
        certificates = self.certificates or CertificatesApi.for_tls(self.config, None)
        return text + certificates.metrics_text()

    @app.route("/", methods=["GET", "HEAD"])
    def dashboard(self, request: IRequest) -> bytes:
        visible = None
        if self.login is not None:
            refused = self.login.require_reviewer(request, "/")
            if refused is not None:
                return refused
            # A GitHub session limited to some repositories sees only those.
            visible = self.login.repo_filter(request)
        return _need(self.previews, "the dashboard").dashboard(request, visible)

    # --- errors -------------------------------------------------------------

    @app.handle_errors(ApiError)
    def api_error(self, request: IRequest, failure: Any) -> bytes:
        error: ApiError = failure.value
        return json_response(request, {"error": error.reason}, error.status)

    @app.handle_errors(WebhookError)
    def webhook_error(self, request: IRequest, failure: Any) -> bytes:
        error: WebhookError = failure.value
        return json_response(request, {"error": error.reason}, error.status)


def _need(feature: T | None, what: str) -> T:
    """The feature object, or a 503 naming what is not wired (a bare ControlApp in tests)."""
    if feature is None:
        raise ApiError(503, f"{what} not available on this server")
    return feature
