"""GitHub OAuth login against a fake GitHub (a Klein app on 127.0.0.1)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
import treq
from twisted.internet.task import Clock
from twisted.web.server import Site

from prevu.auth.gate import AuthGate
from prevu.auth.github import GithubIdentity, GithubOAuth, decide
from prevu.config import GithubAuthConfig
from prevu.proxy.hooks import Allow, Reply, RequestHead
from prevu.routing import Route, Upstream
from prevu.testing.fake_github import FakeGithub, FakeUser
from tests.support.net import reactor_
from tests.support.timeouts import within
from tests.test_auth_login import NOW, PUBLIC, Browser, make_pages


def auth_config(base: str, **kwargs: Any) -> GithubAuthConfig:
    return GithubAuthConfig(
        client_id="fake-client-id",
        client_secret="fake-client-secret",
        authorize_url=f"{base}/login/oauth/authorize",
        token_url=f"{base}/login/oauth/access_token",
        api_url=base,
        **kwargs,
    )


@pytest.fixture
def fake() -> Any:
    github = FakeGithub(
        users={
            "octocat": FakeUser("octocat", orgs=("acme",)),
            "hubot": FakeUser("hubot", teams=("acme/reviewers",)),
            "monalisa": FakeUser("monalisa"),
            "reader": FakeUser("reader", repos=("acme/shop",)),
        }
    )
    port = reactor_().listenTCP(0, Site(github.resource()), interface="127.0.0.1")
    github.base = f"http://127.0.0.1:{port.getHost().port}"
    yield github
    port.stopListening()


async def github_login(fake: FakeGithub, login: str, **kwargs: Any) -> tuple[Browser, Any, str]:
    """Drive /login/github -> fake authorize -> callback; returns the callback's answer."""
    fake.approving = login
    config = auth_config(fake.base, **kwargs)
    oauth = GithubOAuth(config=config, http=treq, redirect_uri=PUBLIC + "/login/github/callback")
    clock = Clock()
    clock.advance(NOW)
    pages = make_pages(clock, github=oauth, candidate_repos=("acme/shop", "acme/blog"))
    browser = Browser(pages, listen=True)
    start, _ = await browser.get("/login/github?next=http://pr-1.preview.test:8000/")
    assert start.code == 302
    authorize = start.headers.getRawHeaders("location")[0]
    assert authorize.startswith(fake.base + "/login/oauth/authorize?")
    assert parse_qs(urlsplit(authorize).query)["scope"] == [
        "read:org repo" if config.repo_readers else "read:org"
    ]
    approved = await within(treq.get(authorize, allow_redirects=False), 10)
    await within(approved.content(), 10)
    callback = urlsplit(approved.headers.getRawHeaders("location")[0])
    response, body = await browser.get(f"{callback.path}?{callback.query}")
    await browser.close()
    return browser, response, body


@pytest_twisted.ensureDeferred
async def test_member_of_an_allowed_org_logs_in(fake: FakeGithub) -> None:
    """An allowed org's member gets a session for every private route and goes to next."""
    browser, response, _ = await github_login(fake, "octocat", allowed_orgs=("acme",))
    assert response.code == 303
    assert response.headers.getRawHeaders("location") == ["http://pr-1.preview.test:8000/"]
    assert "prevu_session" in browser.cookies
    assert fake.requests == ["authorize", "access_token", "user", "user/orgs"]


@pytest_twisted.ensureDeferred
async def test_member_of_an_allowed_team_logs_in(fake: FakeGithub) -> None:
    """Team membership (state active) is checked per allowed team."""
    _, response, _ = await github_login(fake, "hubot", allowed_teams=("acme/reviewers",))
    assert response.code == 303


@pytest_twisted.ensureDeferred
async def test_allowed_user_logs_in_without_further_calls(fake: FakeGithub) -> None:
    """A login in allowed_users needs no org or team lookups."""
    _, response, _ = await github_login(
        fake, "monalisa", allowed_users=("MonaLisa",), allowed_orgs=("acme",)
    )
    assert response.code == 303
    assert "user/orgs" not in fake.requests


@pytest_twisted.ensureDeferred
async def test_outsider_is_refused(fake: FakeGithub) -> None:
    """Someone in no allowed org, team or user list gets 403 and no session."""
    browser, response, body = await github_login(
        fake, "monalisa", allowed_orgs=("acme",), allowed_teams=("acme/reviewers",)
    )
    assert response.code == 403 and "monalisa" in body
    assert "prevu_session" not in browser.cookies


@pytest_twisted.ensureDeferred
async def test_repo_reader_gets_only_that_repos_previews(fake: FakeGithub) -> None:
    """With repo_readers, read access to acme/shop opens acme/shop previews only."""
    browser, response, _ = await github_login(
        fake, "reader", allowed_orgs=("acme",), repo_readers=True
    )
    assert response.code == 303
    pages = make_pages()
    session = pages.authority.session([browser.cookies["prevu_session"]], NOW)
    assert session is not None and session.repos == ("acme/shop",)
    gate = AuthGate(pages.authority, pages.clock)
    cookie = [(b"cookie", b"prevu_session=" + browser.cookies["prevu_session"].encode())]

    def head(host: str) -> RequestHead:
        return RequestHead(b"GET", b"/", host, "http", "198.51.100.1", cookie)

    shop = Route("pr-1.preview.test", Upstream("127.0.0.1", 9), "private", repo="acme/shop")
    blog = Route("pr-2.preview.test", Upstream("127.0.0.1", 9), "private", repo="acme/blog")
    assert gate.check(shop, head(shop.host)) == Allow(user="reader")
    assert isinstance(gate.check(blog, head(blog.host)), Reply)


@pytest_twisted.ensureDeferred
async def test_callback_with_a_forged_state_is_refused(fake: FakeGithub) -> None:
    """A callback whose state was not issued to this browser is refused before any exchange."""
    config = auth_config(fake.base, allowed_orgs=("acme",))
    pages = make_pages(github=GithubOAuth(config, treq, PUBLIC + "/login/github/callback"))
    browser = Browser(pages)
    response, _ = await browser.get("/login/github/callback?code=abc&state=v1.e30.AAAA")
    assert response.code == 403
    assert "access_token" not in fake.requests


@pytest_twisted.ensureDeferred
async def test_bad_code_is_a_failed_login(fake: FakeGithub) -> None:
    """A code GitHub does not know ends in an error page, not a session."""
    config = auth_config(fake.base, allowed_orgs=("acme",))
    pages = make_pages(github=GithubOAuth(config, treq, PUBLIC + "/login/github/callback"))
    browser = Browser(pages, listen=True)
    start, _ = await browser.get("/login/github")
    state = parse_qs(urlsplit(start.headers.getRawHeaders("location")[0]).query)["state"][0]
    response, body = await browser.get(f"/login/github/callback?code=nope&state={state}")
    await browser.close()
    assert response.code == 502 and "GitHub login failed" in body
    assert "prevu_session" not in browser.cookies


@pytest.mark.parametrize(
    ("identity", "allowed", "repos"),
    [
        (GithubIdentity("octocat"), True, None),
        (GithubIdentity("x", orgs=("ACME",)), True, None),
        (GithubIdentity("x", teams=("acme/reviewers",)), True, None),
        (GithubIdentity("x", readable_repos=("acme/shop",)), True, ("acme/shop",)),
        (GithubIdentity("x", orgs=("other",)), False, None),
    ],
)
def test_decide(identity: GithubIdentity, allowed: bool, repos: tuple[str, ...] | None) -> None:
    """Users, orgs (case-insensitive) and teams open everything; readers open their repos."""
    config = auth_config(
        "http://x",
        allowed_users=("octocat",),
        allowed_orgs=("acme",),
        allowed_teams=("acme/reviewers",),
        repo_readers=True,
    )
    verdict = decide(config, identity)
    assert (verdict.allowed, verdict.repos) == (allowed, repos)
