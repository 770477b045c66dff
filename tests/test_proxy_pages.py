"""
The proxy's pages for previews that cannot be forwarded to, and the noindex decision:
pure functions called directly, the route table's header bytes, the `[[repos]]`
key, and the orchestrator publishing each state (with Twisted's Clock for `history`).
"""

from __future__ import annotations

import html
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prevu.config import Config, ConfigError, RepoConfig, ServerConfig, parse_config
from prevu.orchestrator import OrchestratorSettings
from prevu.proxy.pages import PageLinks, crashed_page, robots, signed_in, state_page
from prevu.proxy.settings import ProxySettings
from prevu.routing import ROBOTS_HEADER, Route, RouteState, Upstream
from tests.test_orchestrator import SHAS, Harness

LINKS = PageLinks("http://prevu.example.test:8000")
HOST = "pr-3-shop.example.test"


def route(state: RouteState, **kwargs: Any) -> Route:
    values: dict[str, Any] = {
        "upstream": None,
        "access": "private",
        "preview": "pr-3-shop",
        "repo": "acme/shop",
        "noindex": True,
    }
    values.update(kwargs)
    return Route(HOST, state=state, **values)


def links_in(body: bytes) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'href="([^"]*)"', body.decode())]


# --- each state's page ------------------------------------------------------------


def test_failed_page_for_a_signed_in_reviewer_names_the_reason_and_links_to_the_logs() -> None:
    reply = state_page(route("failed", detail="build: exit code 3"), HOST, "alice", LINKS, 5)
    assert reply.status == 503
    assert b"failed" in reply.body and b"build: exit code 3" in reply.body
    assert links_in(reply.body) == ["http://prevu.example.test:8000/previews/pr-3-shop"]
    assert (b"X-Robots-Tag", b"noindex") in reply.headers
    assert not any(name == b"Retry-After" for name, _ in reply.headers)


@pytest.mark.parametrize("user", [None, "~share", "~bypass"])
def test_failed_page_for_anyone_else_names_the_state_and_links_to_the_login(
    user: str | None,
) -> None:
    reply = state_page(route("failed", detail="secret build output"), HOST, user, LINKS, 5)
    assert reply.status == 503
    assert b"failed" in reply.body
    assert b"secret build output" not in reply.body
    assert links_in(reply.body) == [
        "http://prevu.example.test:8000/login?next="
        "http%3A%2F%2Fprevu.example.test%3A8000%2Fpreviews%2Fpr-3-shop"
    ]


@pytest.mark.parametrize("state", ["failed", "crashed"])
def test_without_a_way_to_log_in_everyone_gets_the_reason_and_the_logs_not_a_login(
    state: str,
) -> None:
    """No users_file nor [auth.github] (the embedded defaults): the dashboard is open."""
    open_links = PageLinks("http://prevu.example.test:8000", login_configured=False)
    if state == "failed":
        reply = state_page(route("failed", detail="exit code 3"), HOST, None, open_links, 5)
    else:
        ready = Route(
            HOST, Upstream("127.0.0.1", 9), preview="pr-3-shop", repo="a/b", detail="exit code 3"
        )
        reply = crashed_page(ready, HOST, None, open_links)
    assert reply.status == 503
    assert b"exit code 3" in reply.body
    assert links_in(reply.body) == ["http://prevu.example.test:8000/previews/pr-3-shop"]


@pytest.mark.parametrize(
    ("auth", "expected"),
    [("", False), ('[auth]\nusers_file = "/etc/prevu/users"\n', True)],
)
def test_the_proxy_settings_know_whether_a_login_is_configured(auth: str, expected: bool) -> None:
    config = parse_config(tomllib.loads(auth))
    assert ProxySettings.from_config(config).login_configured is expected


@pytest.mark.parametrize("state", ["building", "sleeping"])
def test_waiting_pages_refresh_retry_and_link_to_the_live_log(state: RouteState) -> None:
    reply = state_page(route(state), HOST, None, LINKS, 7)
    assert reply.status == 503
    assert (b"Retry-After", b"7") in reply.headers
    assert b'http-equiv=refresh content="7"' in reply.body
    assert links_in(reply.body) == ["http://prevu.example.test:8000/previews/pr-3-shop"]


def test_closed_page_says_removed_and_when() -> None:
    reply = state_page(route("closed", since=1_790_000_000.0), HOST, "alice", LINKS, 5)
    assert reply.status == 410
    assert b"was removed on 2026-09-21 14:13 UTC" in reply.body
    assert b"No preview or route" not in reply.body


def test_crashed_page_says_the_app_is_not_answering() -> None:
    ready = Route(HOST, Upstream("127.0.0.1", 9), preview="pr-3-shop", repo="acme/shop")
    reply = crashed_page(ready, HOST, "alice", LINKS)
    assert reply.status == 503 and b"not answering" in reply.body
    assert links_in(reply.body) == ["http://prevu.example.test:8000/previews/pr-3-shop"]
    assert reply.headers == []  # this route is not noindex


def test_without_public_url_the_pages_carry_no_links() -> None:
    reply = state_page(route("failed", detail="x"), HOST, None, PageLinks(""), 5)
    assert links_in(reply.body) == []


def test_a_ready_route_has_no_state_page() -> None:
    with pytest.raises(ValueError, match="ready"):
        state_page(Route(HOST, Upstream("127.0.0.1", 9)), HOST, None, LINKS, 5)


def test_signed_in_is_a_named_reviewer_only() -> None:
    assert signed_in("alice") and not signed_in(None)
    assert not signed_in("~share") and not signed_in("~bypass")


# --- escaping: whatever a repository, error, preview id or host holds ---------------

TEXT = st.text(min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(repo=TEXT, error=TEXT, preview=TEXT, host=TEXT, user=st.sampled_from(["alice", None]))
def test_user_controlled_text_is_always_escaped(
    repo: str, error: str, preview: str, host: str, user: str | None
) -> None:
    """No markup a user controls survives: every `<` on the page is prevu's own."""
    for state in ("failed", "building", "closed"):
        r = route(state, repo=repo, detail=error, preview=preview, since=0.0)  # type: ignore[arg-type]
        body = state_page(r, host, user, LINKS, 5).body.decode()
        crashed = crashed_page(r, host, user, LINKS).body.decode()
        for page in (body, crashed):
            tags = re.findall(r"<([^ >/]+)", page)
            assert set(tags) <= {
                "!doctype", "html", "meta", "title", "style", "h1", "p", "b", "a", "small"
            }, tags
            for link in links_in(page.encode()):
                assert link.startswith(LINKS.public_url + "/")
                assert '"' not in link and "<" not in link and " " not in link
        if user is not None and state == "failed":
            assert html.escape(error) in body


# --- the header decision -----------------------------------------------------------


def test_the_robots_header_is_encoded_once_per_route() -> None:
    on = Route(HOST, Upstream("127.0.0.1", 9), noindex=True)
    off = Route(HOST, Upstream("127.0.0.1", 9))
    assert on.response_headers == ROBOTS_HEADER == b"X-Robots-Tag: noindex\r\n"
    assert off.response_headers == b""
    assert robots(on) == [(b"X-Robots-Tag", b"noindex")] and robots(off) == []
    assert on == Route(HOST, Upstream("127.0.0.1", 9), noindex=True)


def test_repos_noindex_defaults_on_and_can_be_turned_off() -> None:
    config = parse_config(
        tomllib.loads(
            '[[repos]]\nname = "acme/shop"\n\n[[repos]]\nname = "acme/docs"\nnoindex = false\n'
        ),
        "prevu.toml",
    )
    assert [r.noindex for r in config.repos] == [True, False]
    settings = OrchestratorSettings.from_config(config, instance="t")
    assert settings.repo_noindex == {"acme/shop": True, "acme/docs": False}
    with pytest.raises(ConfigError, match="noindex"):
        parse_config(tomllib.loads('[[repos]]\nname = "a/b"\nnoindex = "no"\n'), "prevu.toml")


# --- the orchestrator publishes each state -------------------------------------------


def test_states_reach_the_route_table_and_closed_ones_go_after_history(tmp_path: Path) -> None:
    config = Config(
        server=ServerConfig(state_dir=str(tmp_path / "state")),
        repos=(RepoConfig("acme/shop", noindex=False),),
    )
    h = Harness(tmp_path, config, history=3600.0)
    host = "pr-4-shop.localhost"
    h.publish(4, SHAS[0])
    h.docker.pause("build")
    h.deploy(4, SHAS[0])
    building = h.routes.lookup(host)
    assert building is not None and building.state == "building" and building.upstream is None
    assert building.noindex is False and building.response_headers == b""
    h.docker.release("build")
    h.settle(2)
    ready = h.routes.lookup(host)
    assert ready is not None and ready.state == "ready" and ready.upstream is not None
    h.close(4, SHAS[0])
    h.settle(2)
    closed = h.routes.lookup(host)
    assert closed is not None and closed.state == "closed" and closed.since is not None
    assert closed.since == pytest.approx(h.clock.seconds() - 2)  # the close, 2 s ago
    h.clock.advance(3600 - 2 - 1)
    assert h.routes.lookup(host) is closed
    h.clock.advance(1.5)
    assert h.routes.lookup(host) is None
