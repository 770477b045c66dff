"""
The reviewer login on the control host: `/login`, `/logout`, `/auth/verify`,
GitHub OAuth, and share links through the API.

`LoginPages` is a plain object; `prevu/control/app.py` routes to it with
one-line delegations. Its methods return `Answer`s (an outcome such as
`forbidden` or `see_other`, never a status code) or raise `RequestRefused`;
the app's funnel sets the status. Pages come from the control app's Jinja2 templates
(`prevu.control.rendering`, `login.html`), with inline CSS, no script and no
external assets; forms carry a CSRF token bound to the `prevu_csrf` pre-session cookie.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent
from twisted.web.server import Request

from prevu.auth.authority import Authority
from prevu.auth.gate import AuthGate
from prevu.auth.github import GithubOAuth, decide
from prevu.auth.limiter import LoginLimiter
from prevu.auth.passwords import Users
from prevu.auth.rules import (
    CSRF_COOKIE,
    HANDOFF_PARAM,
    SESSION_COOKIE,
    USER_HEADER,
    AuthSettings,
    add_param,
    client_address,
    cookie_values,
    safe_next,
    set_cookie,
    share_url,
    split_param,
)
from prevu.auth.tokens import (
    Session,
    Share,
    check_csrf,
    encode_csrf,
    encode_handoff,
    encode_session,
    encode_share,
    new_nonce,
)
from prevu.auth.users_file import UsersFile
from prevu.config import Config
from prevu.control.rendering import LOGIN_POLICY, Pages, default_pages
from prevu.control.responses import (
    BEARER_CHALLENGE,
    NO_STORE,
    Answer,
    Outcome,
    bearer_ok,
    header,
    json_answer,
)
from prevu.errors import AuthError, RequestRefused
from prevu.proxy.hooks import Allow, RequestHead
from prevu.reactors import ReactorTime
from prevu.routing import Route, RouteRegistry, normalize_host
from prevu.units import parse_duration

T = TypeVar("T")
log = Logger()

DEFAULT_SHARE = 24 * 3600.0
MAX_SHARE = 30 * 86400.0
OAUTH_STATE = "oauth-state"


class UsersSource(Protocol):
    """Where the password users come from (the users file)."""

    def current(self) -> Users:
        """The users now."""


async def run_inline(call: Callable[[], T]) -> T:
    """Run a blocking call right here (tests); the service runs them on prevu's pool."""
    return call()


def _no_routes(host: str) -> Route | None:
    return None


def _no_previews(name: str) -> str | None:
    return None


@define
class LoginPages:
    """Everything behind the login, logout, verify, OAuth and share URLs."""

    authority: Authority
    clock: ReactorTime
    users: UsersSource
    limiter: LoginLimiter = field(factory=LoginLimiter)
    run_blocking: Callable[[Callable[[], bool]], Awaitable[bool]] = run_inline
    github: GithubOAuth | None = None
    route_lookup: Callable[[str], Route | None] = _no_routes
    preview_host: Callable[[str], str | None] = _no_previews
    candidate_repos: tuple[str, ...] = ()
    api_token: str | None = None
    login_configured: bool = False  # users_file or [auth.github]: the dashboard needs a login
    pages: Pages = field(factory=default_pages)

    @property
    def settings(self) -> AuthSettings:
        return self.authority.settings

    def now(self) -> float:
        return float(self.clock.seconds())

    # --- GET /login ----------------------------------------------------------

    def show(self, request: Request) -> Answer:
        """The login form, or where to go when already logged in."""
        next_url = safe_next(self.settings, _arg(request, "next"))
        session = self.authority.session(_cookies(request, SESSION_COOKIE), self.now())
        if session is not None:
            if next_url is not None and self._allowed_at(session, next_url):
                return self._redirect(self._destination(session, next_url), "see_other")
            refused = next_url is not None
            return self._signed_in(request, session, next_url, refused)
        return self._form(request, next_url)

    def reviewer(self, request: Request) -> str | None:
        """The logged-in user of `request`, or None."""
        session = self.authority.session(_cookies(request, SESSION_COOKIE), self.now())
        return session.user if session is not None else None

    def repo_filter(self, request: Request) -> Callable[[str], bool]:
        """Which repositories the reviewer of `request` may see (all without a login)."""
        if not self.login_configured:
            return lambda repo: True
        session = self.authority.session(_cookies(request, SESSION_COOKIE), self.now())
        if session is None:
            return lambda repo: False
        return session.allows_repo

    def require_reviewer(self, request: Request, path: str) -> Answer | None:
        """None when `request` has a session; otherwise the redirect to the login page."""
        if not self.login_configured:
            return None  # no way to log in is configured: nothing to require
        if self.reviewer(request) is not None:
            return None
        target = self.settings.login_url(self.settings.public_url + path)
        return self._redirect(target, "found")

    # --- POST /login ---------------------------------------------------------

    async def submit(self, request: Request) -> Answer:
        """Check the CSRF token, the throttle, then the password."""
        next_url = safe_next(self.settings, _arg(request, "next"))
        now = self.now()
        if not self._csrf_ok(request, now):
            expired = "Your form expired. Please try again."
            return self._form(request, next_url, expired, "forbidden")
        username = _arg(request, "username").strip()
        password = _arg(request, "password")
        address = self._client(request)
        wait = self.limiter.retry_after(username, address, now)
        if wait is not None:
            _set(request, b"retry-after", str(max(1, int(wait + 0.999))).encode())
            log.warn("login throttled for {user} from {address}", user=username, address=address)
            message = "Too many failed attempts. Please wait and try again later."
            return self._form(request, next_url, message, "throttled", username)
        users = self.users.current()
        # Count the attempt as failed before the (threaded) check, so that
        # concurrent guesses cannot all pass the limiter; a success clears it.
        self.limiter.failed(username, address, now)
        ok = await self.run_blocking(lambda: users.check(username, password))
        if not ok:
            log.info("login failed for {user} from {address}", user=username, address=address)
            message = "Wrong user name or password."
            return self._form(request, next_url, message, "unauthenticated", username)
        self.limiter.succeeded(username, address, now)
        log.info("login by {user} from {address}", user=username, address=address)
        session = self.authority.new_session(username, self.now())
        return self._logged_in(request, session, next_url)

    # --- POST /logout --------------------------------------------------------

    def logout(self, request: Request) -> Answer:
        """End the session everywhere this prevu checks it, and clear the cookies."""
        now = self.now()
        if not self._csrf_ok(request, now):
            return self._form(request, None, "Your form expired. Please try again.", "forbidden")
        for session in self.authority.sessions(_cookies(request, SESSION_COOKIE), now):
            self.authority.revoke(session, now)
            log.info("logout by {user}", user=session.user)
        for cookie in self._session_cookies("", max_age=0):
            request.responseHeaders.addRawHeader(b"set-cookie", cookie)
        return self._redirect(self.settings.login_url(), "see_other")

    # --- GET /auth/verify ------------------------------------------------------

    def verify(self, request: Request) -> Answer:
        """Forward auth: 200 with X-Prevu-User, or the gate's 302/401."""
        headers = request.requestHeaders
        host_header = header(request, b"x-forwarded-host") or header(request, b"host") or ""
        host = normalize_host(host_header.split(",")[0])
        scheme = (header(request, b"x-forwarded-proto") or "http").split(",")[0].strip()
        target = header(request, b"x-forwarded-uri") or "/"
        if not target.startswith("/"):
            target = "/" + target
        # A login handoff is redeemed only by prevu's own gate: through this
        # endpoint anyone holding one (a preview's code) could trade it for a session.
        _, target = split_param(target, HANDOFF_PARAM)
        head = RequestHead(
            method=(header(request, b"x-forwarded-method") or "GET").encode(),
            target=target.encode("latin-1", "replace"),
            host=host_header.split(",")[0].strip(),
            scheme=scheme if scheme in ("http", "https") else "http",
            client=self._client(request),
            headers=[
                (name.lower(), value)
                for name, values in headers.getAllRawHeaders()
                for value in values
                if name.lower() != b"host"
            ]
            + [(b"host", host_header.split(",")[0].strip().encode("latin-1", "replace"))],
        )
        route = self.route_lookup(host)
        repo = route.repo if route is not None else None
        gate = AuthGate(self.authority, self.clock)
        decision = gate.decide(head, repo, route.host if route is not None else host)
        if isinstance(decision, Allow):
            user = ((USER_HEADER, decision.user.encode()),) if decision.user else ()
            return Answer("ok", b"", (*NO_STORE, *user))
        for name, value in decision.headers:
            request.responseHeaders.addRawHeader(name, value)
        # The gate's reply is the proxy's answer to the same request: relayed as it is.
        return Answer("ok", decision.body, NO_STORE, status=decision.status)

    # --- GitHub OAuth -----------------------------------------------------------

    def github_start(self, request: Request) -> Answer:
        """Send the browser to GitHub with a state bound to this browser and `next`."""
        if self.github is None:
            return self._page("Not available", "not_found", text="GitHub login is not set up.")
        next_url = safe_next(self.settings, _arg(request, "next")) or ""
        nonce = self._nonce(request)
        state = self.authority.signer.sign(
            OAUTH_STATE, {"n": nonce, "next": next_url, "e": int(self.now() + 600)}
        )
        return self._redirect(self.github.authorize_url(state), "found")

    async def github_callback(self, request: Request) -> Answer:
        """Check the state, exchange the code, ask GitHub who this is, and decide."""
        if self.github is None:
            return self._page("Not available", "not_found", text="GitHub login is not set up.")
        now = self.now()
        state = self.authority.signer.unsign(OAUTH_STATE, _arg(request, "state"), now)
        nonces = _cookies(request, CSRF_COOKIE)
        if state is None or not any(
            hmac.compare_digest(str(state.get("n")).encode(), nonce.encode()) for nonce in nonces
        ):
            return self._form(request, None, "GitHub login expired. Please try again.", "forbidden")
        next_url = safe_next(self.settings, str(state.get("next") or ""))
        code = _arg(request, "code")
        if not code:
            reason = _arg(request, "error") or "no code"
            message = f"GitHub login was not completed ({reason})."
            return self._form(request, next_url, message, "forbidden")
        candidates = list(self.candidate_repos)
        next_repo = self._repo_at(next_url)
        if next_repo:
            candidates.insert(0, next_repo)
        try:
            token = await self.github.exchange(code)
            identity = await self.github.identity(token, candidates)
        except AuthError as error:
            log.error("GitHub login failed: {error}", error=str(error))
            message = "GitHub login failed. Please try again."
            return self._form(request, next_url, message, "upstream_failed")
        verdict = decide(self.github.config, identity)
        if not verdict.allowed:
            log.info(
                "GitHub user {user} refused: {reason}", user=identity.login, reason=verdict.reason
            )
            message = f"The GitHub account {identity.login} has no access to these previews."
            return self._form(request, next_url, message, "forbidden")
        log.info(
            "login by GitHub user {user}: {reason}", user=identity.login, reason=verdict.reason
        )
        session = self.authority.new_session(identity.login, self.now(), verdict.repos)
        return self._logged_in(request, session, next_url)

    # --- POST /api/previews/{id}/share ------------------------------------------

    def share(self, request: Request, preview: str) -> Answer:
        """A share link for one preview (bearer api_token), as JSON."""
        if not bearer_ok(request, self.api_token):
            for name, value in BEARER_CHALLENGE:
                _set(request, name, value)
            raise RequestRefused("unauthenticated", "a valid api_token is required")
        try:
            duration = self._share_duration(request)
        except ValueError as error:
            raise RequestRefused("malformed", str(error)) from None
        host = self.preview_host(preview)
        if host is None:
            raise RequestRefused("not_found", f"no preview {preview}")
        return json_answer("created", self.share_link(host, duration))

    def share_link(self, host: str, duration: float) -> dict[str, Any]:
        """A signed URL that opens `host` for `duration` seconds."""
        expires = self.now() + duration
        token = encode_share(self.authority.signer, Share(host=host, expires=expires))
        url = share_url(self.settings.public_url, host, token)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        log.info("share link for {host} until {expires}", host=host, expires=stamp)
        return {"url": url, "host": host, "expires_at": stamp}

    def _share_duration(self, request: Request) -> float:
        text = _arg(request, "for")
        content_type = header(request, b"content-type") or ""
        if not text and content_type.startswith("application/json"):
            try:
                body = json.loads((request.content.read() if request.content else b"") or b"{}")
            except ValueError:
                raise ValueError("the body is not JSON") from None
            if isinstance(body, dict) and body.get("for") is not None:
                text = str(body["for"])
        duration = parse_duration(text) if text else DEFAULT_SHARE
        if not 0 < duration <= MAX_SHARE:
            raise ValueError("a share link lasts more than 0s and at most 30d")
        return duration

    # --- helpers -------------------------------------------------------------------

    def _client(self, request: Request) -> str:
        address = request.getClientAddress()
        peer = str(getattr(address, "host", "") or "")
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
        return client_address(peer, forwarded, self.settings.trusted_proxies)

    def _nonce(self, request: Request) -> str:
        """This browser's pre-session nonce, set as a cookie when missing."""
        for value in _cookies(request, CSRF_COOKIE):
            if 16 <= len(value) <= 64 and value.replace("-", "").replace("_", "").isalnum():
                return value
        nonce = new_nonce()
        cookie = set_cookie(CSRF_COOKIE, nonce, max_age=None, secure=self.settings.secure)
        request.responseHeaders.addRawHeader(b"set-cookie", cookie)
        return nonce

    def _csrf_ok(self, request: Request, now: float) -> bool:
        # A preview under the same site can plant a `prevu_csrf` cookie, so the
        # token alone is not enough: a browser's POST must also come from the
        # control host itself (Origin, or Sec-Fetch-Site when Origin is absent).
        origin = header(request, b"origin")
        if origin is not None and origin.rstrip("/") != self.settings.origin:
            return False
        fetch_site = header(request, b"sec-fetch-site")
        if origin is None and fetch_site not in (None, "same-origin", "none"):
            return False
        token = _arg(request, "csrf")
        return any(
            check_csrf(self.authority.signer, token, nonce, now)
            for nonce in _cookies(request, CSRF_COOKIE)
        )

    def _repo_at(self, url: str | None) -> str | None:
        if not url:
            return None
        route = self.route_lookup((urlsplit(url).hostname or "").lower())
        return route.repo if route is not None else None

    def _allowed_at(self, session: Session, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        if host == self.settings.control_host:
            return True
        route = self.route_lookup(host)
        return session.allows_repo(route.repo if route is not None else None) or (
            route is not None and route.access == "public"
        )

    def _destination(self, session: Session, next_url: str | None) -> str:
        """Where to go after login: `next`, with a handoff when the cookie does not reach it."""
        if next_url is None:
            return self.settings.home()
        host = (urlsplit(next_url).hostname or "").lower()
        if host == self.settings.control_host or self.settings.covered_by_cookie(host):
            return next_url
        route = self.route_lookup(host)
        if route is None or route.access != "private":
            # Only prevu's gate in front of a private route redeems a handoff;
            # anything else (a public preview runs untrusted code) would see it.
            return next_url
        token = encode_handoff(self.authority.signer, session, host, self.now())
        return add_param(next_url, HANDOFF_PARAM, token)

    def _session_cookies(self, value: str, max_age: float) -> list[bytes]:
        secure = self.settings.secure
        cookies = [set_cookie(SESSION_COOKIE, value, max_age=max_age, secure=secure)]
        domain = self.settings.cookie_domain
        if domain is not None and self.settings.covered_by_cookie(self.settings.control_host):
            domain_cookie = set_cookie(
                SESSION_COOKIE, value, max_age=max_age, secure=secure, domain=domain
            )
            # One cookie for the whole domain; on logout clear the host-only one too.
            cookies = [domain_cookie] if max_age > 0 else [*cookies, domain_cookie]
        return cookies

    def _logged_in(self, request: Request, session: Session, next_url: str | None) -> Answer:
        value = encode_session(self.authority.signer, session)
        for cookie in self._session_cookies(value, session.expires - self.now()):
            request.responseHeaders.addRawHeader(b"set-cookie", cookie)
        if next_url is not None and not self._allowed_at(session, next_url):
            return self._signed_in(request, session, next_url, True)
        return self._redirect(self._destination(session, next_url), "see_other")

    def _redirect(self, location: str, outcome: Outcome) -> Answer:
        body = self.pages.text("continue.html", location=location).encode()
        headers = (
            (b"location", location.encode("utf-8")),
            *NO_STORE,
            (b"content-type", b"text/html; charset=utf-8"),
        )
        return Answer(outcome, body, headers)

    def _form(
        self,
        request: Request,
        next_url: str | None,
        message: str = "",
        outcome: Outcome = "ok",
        username: str = "",
    ) -> Answer:
        github = None
        if self.github is not None:
            github = "/login/github" + ("?next=" + _quote(next_url) if next_url else "")
        return self._page(
            "Log in to prevu",
            outcome,
            message=message,
            csrf=self.csrf_token(request),
            next_url=next_url or "",
            username=username,
            password_form=bool(len(self.users.current()) or self.github is None),
            github_href=github,
        )

    def _signed_in(
        self, request: Request, session: Session, next_url: str | None, refused: bool
    ) -> Answer:
        message = ""
        if refused:
            message = (
                "This account has no access to that preview. "
                "Log out and log in with another account."
            )
        github = None
        if refused and self.github is not None and next_url is not None:
            github = "/login/github?next=" + _quote(next_url)
        return self._page(
            "Logged in to prevu",
            "forbidden" if refused else "ok",
            message=message,
            csrf=self.csrf_token(request),
            signed_in=session.user,
            github_href=github,
        )

    def _page(self, title: str, outcome: Outcome, **context: Any) -> Answer:
        defaults: dict[str, Any] = {
            "message": "",
            "csrf": "",
            "next_url": "",
            "username": "",
            "password_form": False,
            "github_href": None,
            "signed_in": None,
            "text": "",
        }
        return self.pages.render(
            "login.html", outcome, LOGIN_POLICY, title=title, **{**defaults, **context}
        )

    # --- for the dashboard -------------------------------------------------------------

    def csrf_token(self, request: Request) -> str:
        """A CSRF token for a form on a page answering `request` (sets the nonce cookie)."""
        return encode_csrf(self.authority.signer, self._nonce(request), self.now())

    def csrf_ok(self, request: Request) -> bool:
        """Whether a POST carries a valid `csrf` form field from the control host itself."""
        return self._csrf_ok(request, self.now())


def _quote(value: str) -> str:
    return quote(value, safe="")


def _arg(request: Request, name: str) -> str:
    values = request.args.get(name.encode()) or []
    return str(values[0].decode("utf-8", "replace")) if values else ""


def _set(request: Request, name: bytes, value: bytes) -> None:
    request.responseHeaders.setRawHeaders(name, [value])


def _cookies(request: Request, name: str) -> list[str]:
    return cookie_values(request.requestHeaders.getRawHeaders(b"cookie", []), name)


def build_login(
    config: Config, reactor: Any, authority: Authority, routes: RouteRegistry, pool: ThreadPool
) -> LoginPages:
    """The login pages for `config`: users file, GitHub client, scrypt on prevu's pool."""
    async def on_pool(call: Callable[[], bool]) -> bool:
        result: bool = await deferToThreadPool(reactor, pool, call)
        return result

    def preview_host(name: str) -> str | None:
        wanted = name.lower()
        for route in routes.table.exact.values():
            if route.preview == name or route.host == wanted:
                return str(route.host)
        return None

    github = None
    agent: Any = Agent(reactor)
    if config.auth.github is not None:
        github = GithubOAuth(
            config=config.auth.github,
            http=HTTPClient(agent),
            redirect_uri=f"{authority.settings.public_url}/login/github/callback",
        )
    return LoginPages(
        authority=authority,
        clock=reactor,
        users=UsersFile(config.auth.users_file),
        run_blocking=on_pool,
        github=github,
        route_lookup=routes.lookup,
        preview_host=preview_host,
        candidate_repos=tuple(repo.name for repo in config.repos),
        api_token=config.server.api_token,
        login_configured=bool(config.auth.users_file or config.auth.github),
    )
