"""The login pages on the control app, through treq's StubTreq (no sockets)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from prevu.auth.authority import Authority
from prevu.auth.limiter import LoginLimiter
from prevu.auth.passwords import Users, hash_password, parse_users
from prevu.auth.rules import AuthSettings
from prevu.auth.tokens import Signer, bypass_token, decode_share, encode_session
from prevu.config import parse_config
from prevu.control.app import ControlApp
from prevu.control.login import LoginPages
from prevu.routing import Route, Upstream
from tests.support.net import reactor_
from tests.support.timeouts import within

NOW = 1_700_000_000.0
PUBLIC = "http://prevu.preview.test:8000"
ROUTES = {
    "pr-1.preview.test": Route(
        "pr-1.preview.test", Upstream("127.0.0.1", 9), "private", repo="acme/shop", preview="p1"
    ),
}


class StaticUsers:
    def __init__(self, users: Users) -> None:
        self.users = users

    def current(self) -> Users:
        return self.users


USERS = parse_users(f"alice:{hash_password('wonderland', n=1 << 10)}\n")


class Browser:
    """A StubTreq client that keeps cookies per name the way a browser would for one host."""

    def __init__(self, pages: LoginPages, listen: bool = False) -> None:
        app = ControlApp(config=parse_config({}), login=pages)
        self.cookies: dict[str, str] = {}
        self.port: Any = None
        if listen:
            # Handlers that wait on real I/O (GitHub) need a real server: StubTreq
            # only delivers answers that are ready when the request is made.
            from twisted.web.server import Site

            self.port = reactor_().listenTCP(0, Site(app.resource()), interface="127.0.0.1")
            self.base = f"http://127.0.0.1:{self.port.getHost().port}"
            self.treq: Any = treq
        else:
            self.base = "http://prevu.preview.test:8000"
            self.treq = StubTreq(app.resource())

    async def close(self) -> None:
        if self.port is not None:
            await self.port.stopListening()

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[Any, str]:
        headers = kwargs.pop("headers", {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        headers.setdefault("Accept", "text/html")
        response = await within(
            self.treq.request(
                method, self.base + path, headers=headers, allow_redirects=False, **kwargs
            ),
            10,
        )
        body = (await within(response.content(), 10)).decode()
        for raw in response.headers.getRawHeaders("set-cookie", []):
            name, _, rest = raw.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in raw:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response, body

    async def get(self, path: str, **kwargs: Any) -> tuple[Any, str]:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, data: dict[str, str], **kwargs: Any) -> tuple[Any, str]:
        return await self.request("POST", path, data=data, **kwargs)


def csrf_of(body: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', body)
    assert match, body
    return match.group(1)


def make_pages(
    clock: Clock | None = None, domain: str = "preview.test", public_url: str = PUBLIC, **kw: Any
) -> LoginPages:
    if clock is None:
        clock = Clock()
        clock.advance(NOW)
    authority = Authority(
        settings=AuthSettings(public_url=public_url, domain=domain, session_ttl=3600),
        signer=Signer.from_secrets("k" * 32),
    )
    return LoginPages(
        authority=authority,
        clock=clock,
        users=StaticUsers(USERS),
        route_lookup=ROUTES.get,
        preview_host=lambda name: next(
            (r.host for r in ROUTES.values() if r.preview == name or r.host == name), None
        ),
        **kw,
    )


async def log_in(browser: Browser, next_url: str | None = None, password: str = "wonderland"):
    path = "/login" + (f"?next={next_url}" if next_url else "")
    _, page = await browser.get(path)
    data = {"username": "alice", "password": password, "csrf": csrf_of(page)}
    if next_url:
        data["next"] = next_url
    return await browser.post("/login", data)


@pytest_twisted.ensureDeferred
async def test_login_page_is_a_small_accessible_form() -> None:
    """GET /login: labelled fields, CSRF token, no external assets, pre-session cookie."""
    browser = Browser(make_pages())
    response, page = await browser.get("/login?next=http://pr-1.preview.test:8000/")
    assert response.code == 200
    assert '<label for="username">' in page and '<label for="password">' in page
    assert 'autocomplete="current-password"' in page and '<html lang="en">' in page
    assert 'name="next" value="http://pr-1.preview.test:8000/"' in page
    assert "src=" not in page and "<link" not in page and "http" not in page.split("<form")[0]
    assert "prevu_csrf" in browser.cookies
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]


@pytest_twisted.ensureDeferred
async def test_login_sets_a_domain_session_cookie_and_redirects_to_next() -> None:
    """A good password: 303 to next, prevu_session for .<domain>, HttpOnly, SameSite=Lax."""
    browser = Browser(make_pages())
    response, _ = await log_in(browser, "http://pr-1.preview.test:8000/cart")
    assert response.code == 303
    assert response.headers.getRawHeaders("location") == ["http://pr-1.preview.test:8000/cart"]
    [cookie] = [c for c in response.headers.getRawHeaders("set-cookie") if "prevu_session" in c]
    assert "Domain=preview.test" in cookie and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and "Secure" not in cookie and "Max-Age=3600" in cookie


@pytest_twisted.ensureDeferred
async def test_cookie_is_secure_when_public_url_is_https() -> None:
    """Under TLS the session cookie is Secure."""
    browser = Browser(make_pages(public_url="https://prevu.preview.test"))
    response, _ = await log_in(browser)
    cookies = response.headers.getRawHeaders("set-cookie")
    assert any("prevu_session" in c and "Secure" in c for c in cookies)


@pytest_twisted.ensureDeferred
async def test_localhost_login_hands_off_to_the_preview_host() -> None:
    """With domain localhost the cookie is host-only and next gets a prevu_auth handoff."""
    private = {
        host: Route(host, Upstream("127.0.0.1", 9), "private", repo="acme/shop")
        for host in ("pr-1.localhost", "pr-2.localhost")
    }
    pages = make_pages(domain="localhost", public_url="http://prevu.localhost:8000")
    pages.route_lookup = private.get
    browser = Browser(pages)
    response, _ = await log_in(browser, "http://pr-1.localhost:8000/x")
    [cookie] = [c for c in response.headers.getRawHeaders("set-cookie") if "prevu_session" in c]
    assert "Domain" not in cookie
    location = urlsplit(response.headers.getRawHeaders("location")[0])
    assert (location.netloc, location.path) == ("pr-1.localhost:8000", "/x")
    assert "prevu_auth" in parse_qs(location.query)
    again, _ = await browser.get("/login?next=http://pr-2.localhost:8000/")
    assert again.code == 303
    assert "prevu_auth=" in again.headers.getRawHeaders("location")[0]


@pytest_twisted.ensureDeferred
async def test_no_handoff_is_given_to_a_public_or_unrouted_host() -> None:
    """A public preview runs untrusted code: it must never see a login handoff."""
    public = {"pr-9.localhost": Route("pr-9.localhost", Upstream("127.0.0.1", 9), "public")}
    pages = make_pages(domain="localhost", public_url="http://prevu.localhost:8000")
    pages.route_lookup = public.get
    browser = Browser(pages)
    await log_in(browser)
    for target in ("http://pr-9.localhost:8000/", "http://pr-404.localhost:8000/"):
        response, _ = await browser.get("/login?next=" + target)
        assert response.code == 303
        assert "prevu_auth" not in response.headers.getRawHeaders("location")[0]


@pytest_twisted.ensureDeferred
async def test_concurrent_guesses_cannot_outrun_the_limiter() -> None:
    """Each attempt counts before its (threaded) check: of 30 at once, at most 5 are checked."""
    from twisted.internet.defer import gatherResults
    from twisted.internet.task import deferLater

    checked: list[int] = []

    async def slow_check(call: Any) -> bool:
        checked.append(1)
        await deferLater(reactor_(), 0.2, lambda: None)  # like scrypt on the thread pool
        return bool(call())

    browser = Browser(make_pages(run_blocking=slow_check), listen=True)
    try:
        _, page = await browser.get("/login")
        token = csrf_of(page)

        async def guess(index: int) -> int:
            response, _ = await browser.post(
                "/login", {"username": "alice", "password": f"guess{index}", "csrf": token}
            )
            return int(response.code)

        codes = await within(gatherResults([ensureDeferred(guess(i)) for i in range(30)]), 20)
    finally:
        await browser.close()
    assert len(checked) <= 5
    assert codes.count(429) >= 25


@pytest_twisted.ensureDeferred
async def test_foreign_next_is_ignored() -> None:
    """next=https://evil.example/ is dropped: after login the reviewer lands on the dashboard."""
    browser = Browser(make_pages())
    response, _ = await log_in(browser, "https://evil.example/")
    assert response.headers.getRawHeaders("location") == [PUBLIC + "/"]
    _, page = await browser.get("/login?next=https://evil.example/")
    assert "evil" not in page


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user_answer_the_same() -> None:
    """Bad password and unknown user: same status and message, no cookie."""
    browser = Browser(make_pages())
    bad, bad_page = await log_in(browser, password="nope")
    _, page = await browser.get("/login")
    unknown, unknown_page = await browser.post(
        "/login", {"username": "mallory", "password": "nope", "csrf": csrf_of(page)}
    )
    assert bad.code == unknown.code == 401
    assert (
        "Wrong user name or password." in bad_page
        and "Wrong user name or password." in unknown_page
    )
    assert "prevu_session" not in browser.cookies


@pytest_twisted.ensureDeferred
async def test_forged_or_missing_csrf_is_refused() -> None:
    """A login POST with a forged CSRF token, or without the pre-session cookie, is 403."""
    browser = Browser(make_pages())
    _, page = await browser.get("/login")
    forged = Signer.from_secrets("f" * 32)
    from prevu.auth.tokens import encode_csrf

    token = encode_csrf(forged, browser.cookies["prevu_csrf"], NOW)
    response, _ = await browser.post(
        "/login", {"username": "alice", "password": "wonderland", "csrf": token}
    )
    assert response.code == 403 and "prevu_session" not in browser.cookies
    stranger = Browser(make_pages())
    response, _ = await stranger.post(
        "/login", {"username": "alice", "password": "wonderland", "csrf": csrf_of(page)}
    )
    assert response.code == 403 and "prevu_session" not in stranger.cookies


@pytest_twisted.ensureDeferred
async def test_repeated_failures_answer_429_with_retry_after() -> None:
    """After 5 failures for a user the next try is 429 + Retry-After, even with the right one."""
    clock = Clock()
    clock.advance(NOW)
    browser = Browser(make_pages(clock, limiter=LoginLimiter(user_limit=5, window=600)))
    for _ in range(5):
        response, _ = await log_in(browser, password="guess")
        assert response.code == 401
        clock.advance(1)
    response, page = await log_in(browser)
    assert response.code == 429
    assert response.headers.getRawHeaders("retry-after") == ["595"]
    assert "prevu_session" not in browser.cookies and "Too many" in page
    clock.advance(595)
    response, _ = await log_in(browser)
    assert response.code == 303


@pytest_twisted.ensureDeferred
async def test_failures_count_per_forwarded_client_address() -> None:
    """Behind prevu's proxy the X-Forwarded-For address is throttled, not the proxy's."""
    browser = Browser(make_pages(limiter=LoginLimiter(user_limit=100, address_limit=2)))
    for name in ("a", "b"):
        _, page = await browser.get("/login")
        await browser.post(
            "/login",
            {"username": name, "password": "x", "csrf": csrf_of(page)},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
    _, page = await browser.get("/login")
    blocked, _ = await browser.post(
        "/login",
        {"username": "c", "password": "x", "csrf": csrf_of(page)},
        headers={"X-Forwarded-For": "198.51.100.7"},
    )
    other, _ = await browser.post(
        "/login",
        {"username": "c", "password": "x", "csrf": csrf_of(page)},
        headers={"X-Forwarded-For": "198.51.100.8"},
    )
    assert (blocked.code, other.code) == (429, 401)


@pytest_twisted.ensureDeferred
async def test_logout_clears_cookies_and_revokes_the_session() -> None:
    """POST /logout (with CSRF) clears the cookie, revokes the session, and shows login."""
    pages = make_pages()
    browser = Browser(pages)
    await log_in(browser)
    session_cookie = browser.cookies["prevu_session"]
    _, page = await browser.get("/login")
    assert "logged in as <strong>alice</strong>" in page
    response, _ = await browser.post("/logout", {"csrf": csrf_of(page)})
    assert response.code == 303
    assert response.headers.getRawHeaders("location") == [PUBLIC + "/login"]
    assert "prevu_session" not in browser.cookies
    assert pages.authority.session([session_cookie], NOW) is None


@pytest_twisted.ensureDeferred
async def test_logout_without_csrf_is_refused() -> None:
    """A cross-site logout POST without the token changes nothing."""
    pages = make_pages()
    browser = Browser(pages)
    await log_in(browser)
    response, _ = await browser.post("/logout", {"csrf": "forged"})
    assert response.code == 403
    assert pages.authority.session([browser.cookies["prevu_session"]], NOW) is not None


# --- /auth/verify ------------------------------------------------------------------

FORWARDED = {
    "X-Forwarded-Host": "pr-1.preview.test:8000",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Uri": "/cart?x=1",
}


@pytest_twisted.ensureDeferred
async def test_verify_allows_a_session_with_x_prevu_user() -> None:
    """Forward auth: a valid cookie answers 200 with X-Prevu-User."""
    pages = make_pages()
    browser = Browser(pages)
    await log_in(browser)
    response, _ = await browser.get("/auth/verify", headers=dict(FORWARDED))
    assert response.code == 200
    assert response.headers.getRawHeaders("x-prevu-user") == ["alice"]


@pytest_twisted.ensureDeferred
async def test_verify_without_session_is_401_or_302_for_browsers() -> None:
    """No cookie: 401 for API clients, 302 to login with next=<forwarded URL> for HTML."""
    browser = Browser(make_pages())
    api, _ = await browser.get("/auth/verify", headers={**FORWARDED, "Accept": "application/json"})
    assert api.code == 401
    html, _ = await browser.get("/auth/verify", headers=dict(FORWARDED))
    assert html.code == 302
    assert html.headers.getRawHeaders("location") == [
        PUBLIC + "/login?next=http%3A%2F%2Fpr-1.preview.test%3A8000%2Fcart%3Fx%3D1"
    ]


@pytest_twisted.ensureDeferred
async def test_verify_accepts_the_bypass_header() -> None:
    """Forward auth honours X-Prevu-Bypass for the forwarded host's repository."""
    pages = make_pages()
    token = bypass_token(pages.authority.signer, repo="acme/shop")
    response, _ = await Browser(pages).get(
        "/auth/verify", headers={**FORWARDED, "X-Prevu-Bypass": token, "Accept": "*/*"}
    )
    assert response.code == 200
    assert response.headers.getRawHeaders("x-prevu-user") == ["~bypass"]


@pytest_twisted.ensureDeferred
async def test_verify_refuses_a_tampered_cookie() -> None:
    """A forged cookie does not pass forward auth."""
    pages = make_pages()
    forged = encode_session(Signer.from_secrets("f" * 32), pages.authority.new_session("x", NOW))
    response, _ = await Browser(pages).get(
        "/auth/verify",
        headers={**FORWARDED, "Accept": "*/*", "Cookie": f"prevu_session={forged}"},
    )
    assert response.code == 401


# --- share links through the API ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_share_api_needs_the_api_token() -> None:
    """POST /api/previews/{id}/share without the bearer token is 401."""
    browser = Browser(make_pages(api_token="t" * 20))
    response, _ = await browser.post("/api/previews/p1/share", {}, headers={"Accept": "*/*"})
    assert response.code == 401
    wrong, _ = await browser.post(
        "/api/previews/p1/share", {}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.code == 401


@pytest_twisted.ensureDeferred
async def test_share_api_returns_a_signed_link_for_that_preview() -> None:
    """The API signs a link for the preview's host that lasts the asked duration."""
    pages = make_pages(api_token="t" * 20)
    browser = Browser(pages)
    response = await within(
        browser.treq.post(
            PUBLIC + "/api/previews/p1/share",
            json={"for": "2h"},
            headers={"Authorization": "Bearer " + "t" * 20},
        ),
        10,
    )
    body = await within(response.json(), 10)
    assert response.code == 201
    assert body["host"] == "pr-1.preview.test"
    assert body["expires_at"] == "2023-11-15T00:13:20Z"
    url = urlsplit(body["url"])
    assert url.netloc == "pr-1.preview.test:8000"
    token = parse_qs(url.query)["prevu_share"][0]
    assert decode_share(pages.authority.signer, token, "pr-1.preview.test", NOW + 7199)
    assert not decode_share(pages.authority.signer, token, "pr-1.preview.test", NOW + 7200)
    missing, _ = await browser.post(
        "/api/previews/nope/share", {}, headers={"Authorization": "Bearer " + "t" * 20}
    )
    assert missing.code == 404


@pytest_twisted.ensureDeferred
async def test_control_app_without_login_answers_404() -> None:
    """Without LoginPages the login URLs do not exist."""
    treq = StubTreq(ControlApp(config=parse_config({})).resource())
    response = await within(treq.get("http://h/login"), 10)
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_verify_never_redeems_a_login_handoff() -> None:
    """A handoff seen by a preview's code cannot be traded for a session through verify."""
    from prevu.auth.tokens import encode_handoff

    pages = make_pages()
    session = pages.authority.new_session("alice", NOW)
    token = encode_handoff(pages.authority.signer, session, "pr-1.preview.test", NOW)
    headers = {**FORWARDED, "X-Forwarded-Uri": "/?prevu_auth=" + token, "Accept": "*/*"}
    response, _ = await Browser(pages).get("/auth/verify", headers=headers)
    assert response.code == 401
    assert not response.headers.getRawHeaders("set-cookie")


def test_a_token_with_an_extra_padding_character_is_refused() -> None:
    """Tokens decode strictly: `=` appended to a spent handoff does not make a new one."""
    from prevu.auth.tokens import decode_handoff, encode_handoff

    pages = make_pages()
    session = pages.authority.new_session("alice", NOW)
    token = encode_handoff(pages.authority.signer, session, "pr-1.preview.test", NOW)
    assert decode_handoff(pages.authority.signer, token, "pr-1.preview.test", NOW) is not None
    assert decode_handoff(pages.authority.signer, token + "=", "pr-1.preview.test", NOW) is None


@pytest_twisted.ensureDeferred
async def test_a_post_from_another_origin_is_refused_even_with_a_planted_csrf_pair() -> None:
    """A sibling preview can plant prevu_csrf, but its form's Origin gives it away."""
    browser = Browser(make_pages())
    _, page = await browser.get("/login")
    token = csrf_of(page)
    data = {"username": "alice", "password": "wonderland", "csrf": token}
    response, _ = await browser.post(
        "/login", data, headers={"Origin": "http://pr-1.preview.test:8000"}
    )
    assert response.code == 403
    response, _ = await browser.post("/login", data, headers={"Sec-Fetch-Site": "same-site"})
    assert response.code == 403
    response, _ = await browser.post("/login", data, headers={"Origin": PUBLIC})
    assert response.code == 303
