"""
The control app: one Klein class, and the one funnel that turns outcomes into HTTP.

Each feature (webhooks, login, API, dashboard) lives in its own module as a
plain object; the routes here are one-line delegations to it. Handlers
return an `Answer` (`prevu.control.responses`) or raise
`RequestRefused(problem, reason)`; `send` and the error handler below are the
only code that sets a status code, from the one `STATUS` table. Order of the
funnel (as klein's `handle_errors`): a handler's `Answer` is sent as it is; a
`RequestRefused` becomes `{"error": reason}` with its problem's status;
anything else is Klein's 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure
from twisted.web.server import Request

from prevu.config import Config
from prevu.control.dashboard import Dashboard, Previews
from prevu.control.login import LoginPages
from prevu.control.operators import Keeper, WritePermission
from prevu.control.preview_page import StoredPreviews
from prevu.control.rendering import Pages
from prevu.control.responses import STATUS, Answer, json_answer
from prevu.errors import RequestRefused
from prevu.tls.status import CertificatesApi

T = TypeVar("T")


if TYPE_CHECKING:
    from prevu.control.api import PreviewsApi
    from prevu.control.preview_page import PreviewPage
    from prevu.control.webhooks import Webhooks


def send(request: Request, answer: Answer) -> bytes:
    """Set the status of `answer`'s outcome and its headers on `request`; its body."""
    request.setResponseCode(answer.status or STATUS[answer.outcome])
    for name, value in answer.headers:
        if name == b"set-cookie":
            request.responseHeaders.addRawHeader(name, value)
        else:
            request.responseHeaders.setRawHeaders(name, [value])
    return answer.body


def send_later(request: Request, answer: Awaitable[Answer]) -> Deferred[bytes]:
    """`send` once an asynchronous handler has answered."""

    async def wait() -> bytes:
        return send(request, await answer)

    return ensureDeferred(wait())


@define
class ControlApp:
    """The Klein application served on the `control` endpoint."""

    config: Config
    login: LoginPages | None = None
    certificates: CertificatesApi | None = None
    webhooks: Webhooks | None = None
    previews: PreviewsApi | None = None
    page: PreviewPage | None = None
    builder: str | None = None
    """The Docker client that builds (found at start-up), shown in `/healthz` details."""
    keeper: Keeper | None = None
    """
    The keep/extend facade for the dashboard; None: the orchestrator's own when
    it has `keep` and `extend` (`prevu.control.operators.Keeper`), else no
    keep/extend buttons.
    """
    may_write: WritePermission | None = None
    """Forge write permission for dashboard operators; None: only `[auth] admins` act."""
    clock: Any = None
    """The reactor's timers for the live streams' heartbeats (default: the login's clock)."""
    dashboard: Dashboard | None = field(default=None)
    """The dashboard; built from `previews`, `page` and `login` when not given."""

    app = Klein()

    def __attrs_post_init__(self) -> None:
        if self.dashboard is not None:
            return
        if self.previews is not None:
            previews: Previews = self.previews.orchestrator
            store, docker = self.previews.store, self.previews.docker
        elif self.page is not None:
            previews, store, docker = StoredPreviews(self.page.store), self.page.store, None
        else:
            return
        login = self.login if isinstance(self.login, LoginPages) else None
        # keep/extend appear once the orchestrator offers them (the Keeper protocol).
        keeper = self.keeper or (previews if isinstance(previews, Keeper) else None)
        self.dashboard = Dashboard(
            config=self.config,
            orchestrator=previews,
            store=store,
            clock=self.clock or (login.clock if login is not None else None),
            sessions=login,
            mask=self.page.mask if self.page is not None else (lambda line: line),
            docker=docker,
            keeper=keeper,
            may_write=self.may_write,
        )

    def resource(self) -> Any:
        """The twisted.web resource for a Site."""
        return self.app.resource()

    # --- routes -------------------------------------------------------------

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: Request) -> bytes:
        """Liveness: answers while the reactor runs; `details.builder` names the build client."""
        body: dict[str, Any] = {"status": "ok"}
        if self.builder is not None:
            body["details"] = {"builder": self.builder}
        return send(request, json_answer("ok", body))

    @app.route("/login", methods=["GET", "HEAD"])
    def login_page(self, request: Request) -> bytes:
        return send(request, _login(self.login).show(request))

    @app.route("/login", methods=["POST"])
    def login_submit(self, request: Request) -> Deferred[bytes]:
        return send_later(request, _login(self.login).submit(request))

    @app.route("/logout", methods=["POST"])
    def logout(self, request: Request) -> bytes:
        return send(request, _login(self.login).logout(request))

    @app.route("/auth/verify", methods=["GET", "HEAD"])
    def auth_verify(self, request: Request) -> bytes:
        return send(request, _login(self.login).verify(request))

    @app.route("/login/github", methods=["GET"])
    def login_github(self, request: Request) -> bytes:
        return send(request, _login(self.login).github_start(request))

    @app.route("/login/github/callback", methods=["GET"])
    def login_github_callback(self, request: Request) -> Deferred[bytes]:
        return send_later(request, _login(self.login).github_callback(request))

    @app.route("/api/previews/<preview>/share", methods=["POST"])
    def share_preview(self, request: Request, preview: str) -> bytes:
        return send(request, _login(self.login).share(request, preview))

    @app.route("/api/certificates", methods=["GET"])
    def list_certificates(self, request: Request) -> Any:
        return (self.certificates or CertificatesApi.for_tls(self.config, None)).render(request)

    @app.route("/webhooks/<forge>", methods=["POST"])
    def webhook(self, request: Request, forge: str) -> bytes:
        return send(request, _need(self.webhooks, "webhooks").receive(request, forge))

    @app.route("/api/deliveries", methods=["GET"])
    def api_deliveries(self, request: Request) -> bytes:
        return send(request, _need(self.previews, "the API").deliveries(request))

    @app.route("/api/deliveries/unverified", methods=["GET"])
    def api_unverified(self, request: Request) -> bytes:
        return send(request, _need(self.previews, "the API").unverified(request))

    @app.route("/api/previews", methods=["GET"])
    def api_list(self, request: Request) -> bytes:
        return send(request, _need(self.previews, "the API").list(request))

    @app.route("/api/previews", methods=["POST"])
    def api_create(self, request: Request) -> bytes:
        return send(request, _need(self.previews, "the API").create(request))

    @app.route("/api/previews/<preview>", methods=["GET"])
    def api_show(self, request: Request, preview: str) -> bytes:
        return send(request, _need(self.previews, "the API").show(request, preview))

    @app.route("/api/previews/<preview>", methods=["DELETE"])
    def api_delete(self, request: Request, preview: str) -> bytes:
        return send(request, _need(self.previews, "the API").delete(request, preview))

    @app.route("/api/previews/<preview>/logs", methods=["GET"])
    def api_logs(self, request: Request, preview: str) -> Deferred[bytes]:
        return send_later(request, _need(self.previews, "the API").logs(request, preview))

    @app.route("/api/previews/<preview>/redeploy", methods=["POST"])
    def api_redeploy(self, request: Request, preview: str) -> bytes:
        return send(request, _need(self.previews, "the API").redeploy(request, preview))

    @app.route("/api/previews/<preview>/reset", methods=["POST"])
    def api_reset(self, request: Request, preview: str) -> bytes:
        return send(request, _need(self.previews, "the API").reset(request, preview))

    @app.route("/api/previews/<preview>/keep", methods=["POST"])
    def api_keep(self, request: Request, preview: str) -> bytes:
        return send(request, _need(self.previews, "the API").keep(request, preview))

    @app.route("/api/previews/<preview>/extend", methods=["POST"])
    def api_extend(self, request: Request, preview: str) -> bytes:
        return send(request, _need(self.previews, "the API").extend(request, preview))

    @app.route("/previews/<preview>", methods=["GET"])
    def preview_page(self, request: Request, preview: str) -> Deferred[bytes] | bytes:
        visible = self._reviewer(request, f"/previews/{preview}")
        if isinstance(visible, Answer):
            return send(request, visible)
        board = _need(self.dashboard, "the dashboard")
        return send_later(request, board.page(request, preview, visible))

    @app.route("/previews/<preview>/logs", methods=["GET"])
    def preview_logs(self, request: Request, preview: str) -> Deferred[bytes] | bytes:
        visible = self._reviewer(request, f"/previews/{preview}/logs")
        if isinstance(visible, Answer):
            return send(request, visible)
        board = _need(self.dashboard, "the dashboard")
        return send_later(request, board.logs(request, preview, visible))

    @app.route("/previews/<preview>/<verb>", methods=["POST"])
    def preview_action(self, request: Request, preview: str, verb: str) -> Deferred[bytes] | bytes:
        board = _need(self.dashboard, "the dashboard")
        visible = self._reviewer(request, f"/previews/{preview}")
        if isinstance(visible, Answer):
            # A POST is not carried over a login: refused, with the reason.
            return send(request, board.refusal(request, preview, "log in as an operator to act"))
        return send_later(request, board.act(request, preview, verb, visible))

    @app.route("/events", methods=["GET"])
    def events(self, request: Request) -> Deferred[bytes] | bytes:
        visible = self._reviewer(request, "/")
        if isinstance(visible, Answer):
            return send(request, visible)
        board = _need(self.dashboard, "the dashboard")
        return send_later(request, board.events(request, visible))

    @app.route("/static/<name>", methods=["GET", "HEAD"])
    def static(self, request: Request, name: str) -> bytes:
        return send(request, Pages.static(name))

    def _reviewer(self, request: Request, here: str) -> Answer | Callable[[str], bool] | None:
        """The login's refusal, or which repositories the reviewer sees (None: all)."""
        if self.login is None:
            return None
        refused = self.login.require_reviewer(request, here)
        if refused is not None:
            return refused
        return self.login.repo_filter(request)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Request) -> bytes:
        answer = _need(self.previews, "/metrics").metrics_text(request)
        certificates = self.certificates or CertificatesApi.for_tls(self.config, None)
        return send(request, answer) + certificates.metrics_text()

    @app.route("/", methods=["GET", "HEAD"])
    def dashboard_list(self, request: Request) -> bytes:
        # A GitHub session limited to some repositories sees only those.
        visible = self._reviewer(request, "/")
        if isinstance(visible, Answer):
            return send(request, visible)
        return send(request, _need(self.dashboard, "the dashboard").listing(request, visible))

    # --- errors -------------------------------------------------------------

    @app.handle_errors(RequestRefused)
    def refused(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, RequestRefused)
        return send(request, json_answer(error.problem, {"error": error.reason}))


def _need(feature: T | None, what: str) -> T:
    """The feature object, or `unavailable` naming what is not wired (a bare app in tests)."""
    if feature is None:
        raise RequestRefused("unavailable", f"{what} not available on this server")
    return feature


def _login(pages: LoginPages | None) -> LoginPages:
    """The login pages, or `not_found` when the control app runs without them."""
    if pages is None:
        raise RequestRefused("not_found", "there is no login on this server")
    return pages
