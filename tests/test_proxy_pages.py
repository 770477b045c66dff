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
from twisted.internet.defer import ensureDeferred

from prevu.config import Config, ConfigError, RepoConfig, ServerConfig, parse_config
from prevu.forge import policy
from prevu.forge.commands import VERBS, Parsed, parse_command
from prevu.orchestrator import OrchestratorSettings
from prevu.proxy.pages import APPROVE, PageLinks, crashed_page, robots, signed_in, state_page
from prevu.proxy.settings import ProxySettings
from prevu.routing import ROBOTS_HEADER, Route, RouteRegistry, RouteState, Upstream
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


AWAITED = "3f2a9c1" + "0" * 33


def test_awaiting_page_for_a_signed_in_reviewer_names_the_command_and_the_page() -> None:
    """503 without Retry-After or refresh: the wait is a maintainer's, not a build's."""
    reply = state_page(route("awaiting", commit=AWAITED), HOST, "alice", LINKS, 5)
    assert reply.status == 503
    assert b"The preview of <b>acme/shop</b> awaits a maintainer's approval" in reply.body
    assert b"prevu builds no fork code until a maintainer has reviewed it" in reply.body
    assert b"<code id=prevu-command>/preview approve 3f2a9c1</code>" in reply.body
    assert b"on the pull request" in reply.body
    assert links_in(reply.body) == ["http://prevu.example.test:8000/previews/pr-3-shop"]
    assert reply.headers == [(b"X-Robots-Tag", b"noindex")]  # no Retry-After
    assert b"http-equiv=refresh" not in reply.body
    assert b"No preview or route" not in reply.body


@pytest.mark.parametrize("user", [None, "~share", "~bypass"])
def test_awaiting_page_for_anyone_else_names_the_command_and_links_to_the_login(
    user: str | None,
) -> None:
    reply = state_page(route("awaiting", commit=AWAITED), HOST, user, LINKS, 5)
    assert reply.status == 503
    assert b"awaits a maintainer's approval" in reply.body
    assert b"<code id=prevu-command>/preview approve</code>" in reply.body
    assert b"3f2a9c1" not in reply.body
    assert links_in(reply.body) == [
        "http://prevu.example.test:8000/login?next="
        "http%3A%2F%2Fprevu.example.test%3A8000%2Fpreviews%2Fpr-3-shop"
    ]


def test_awaiting_page_without_a_way_to_log_in_shows_everyone_the_command_and_page() -> None:
    open_links = PageLinks("http://prevu.example.test:8000", login_configured=False)
    reply = state_page(route("awaiting", commit=AWAITED), HOST, None, open_links, 5)
    assert b"/preview approve 3f2a9c1" in reply.body
    assert links_in(reply.body) == ["http://prevu.example.test:8000/previews/pr-3-shop"]


def test_awaiting_page_names_the_command_the_forge_runs() -> None:
    """The page's command is the registry's `approve` verb, and it parses with the prefix."""
    reply = state_page(route("awaiting", commit=AWAITED, noindex=False), HOST, "a", LINKS, 5)
    shown = re.search(rb"<code id=prevu-command>([^<]*)</code>", reply.body)
    assert shown is not None
    assert VERBS["approve"].usage.startswith(APPROVE + " ")
    assert parse_command(shown.group(1).decode()) == Parsed("approve", ("3f2a9c1",))
    assert reply.headers == []  # this route is not noindex


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
PAGE_TAGS = {"!doctype", "html", "meta", "title", "style", "h1", "p", "b", "a", "small", "code"}


@settings(max_examples=100, deadline=None)
@given(repo=TEXT, error=TEXT, preview=TEXT, host=TEXT, user=st.sampled_from(["alice", None]))
def test_user_controlled_text_is_always_escaped(
    repo: str, error: str, preview: str, host: str, user: str | None
) -> None:
    """No markup a user controls survives: every `<` on the page is prevu's own."""
    for state in ("failed", "building", "closed", "awaiting"):
        r = route(
            state,  # type: ignore[arg-type]
            repo=repo,
            detail=error,
            preview=preview,
            since=0.0,
            commit=error,
        )
        body = state_page(r, host, user, LINKS, 5).body.decode()
        crashed = crashed_page(r, host, user, LINKS).body.decode()
        for page in (body, crashed):
            tags = re.findall(r"<([^ >/]+)", page)
            assert set(tags) <= PAGE_TAGS, tags
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


def awaiting_route(h: Harness, host: str, sha: str) -> Route:
    """The route of a preview whose fork commit `sha` awaits approval: a page, no upstream."""
    route = h.routes.lookup(host)
    assert route is not None and route.state == "awaiting" and route.upstream is None
    assert route.commit == sha and route.preview is not None and route.repo == "acme/shop"
    return route


def test_a_fork_commit_awaiting_approval_gets_its_page_then_builds_and_runs(
    tmp_path: Path,
) -> None:
    """awaiting -> (approve) building -> ready; nothing is built before the approval."""
    h = Harness(tmp_path)
    host = "pr-5-shop.localhost"
    h.publish(5, SHAS[0])
    h.deploy(5, SHAS[0], gate="approve", fork=True)
    awaiting = awaiting_route(h, host, SHAS[0])
    assert awaiting.noindex is True and h.docker.builds == []
    h.settle(2)
    assert h.routes.lookup(host) is awaiting  # nothing republished while it waits
    h.docker.pause("build")
    assert h.orchestrator.approve_commit("pr-5-shop", SHAS[0], "maintainer") is None
    building = h.routes.lookup(host)
    assert building is not None and building.state == "building" and building.commit is None
    h.docker.release("build")
    h.settle(2)
    ready = h.routes.lookup(host)
    assert ready is not None and ready.state == "ready" and ready.upstream is not None


def test_closing_a_preview_awaiting_approval_leaves_the_closed_page(tmp_path: Path) -> None:
    h = Harness(tmp_path, history=60.0)
    host = "pr-6-shop.localhost"
    h.publish(6, SHAS[0])
    h.deploy(6, SHAS[0], gate="approve", fork=True)
    awaiting_route(h, host, SHAS[0])
    h.close(6, SHAS[0])
    closed = h.routes.lookup(host)
    assert closed is not None and closed.state == "closed" and closed.upstream is None
    assert closed.commit is None and h.docker.builds == []
    h.clock.advance(61)
    assert h.routes.lookup(host) is None


def test_a_newer_fork_commit_awaiting_leaves_the_approved_one_serving(tmp_path: Path) -> None:
    """The route with an upstream is kept: the approved commit serves while the next waits."""
    h = Harness(tmp_path)
    host = "pr-7-shop.localhost"
    h.publish(7, SHAS[0])
    h.deploy(7, SHAS[0], gate="approve", fork=True)
    assert h.orchestrator.approve_commit("pr-7-shop", SHAS[0], "maintainer") is None
    h.settle(2)
    serving = h.routes.lookup(host)
    assert serving is not None and serving.state == "ready" and serving.upstream is not None
    h.publish(7, SHAS[1])
    h.deploy(7, SHAS[1], gate="approve", fork=True)
    h.settle(2)
    assert h.routes.lookup(host) is serving and len(h.docker.builds) == 1


def test_a_restart_publishes_the_awaiting_page_again(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.publish(8, SHAS[0])
    h.deploy(8, SHAS[0], gate="approve", fork=True)
    h.orchestrator.stop()
    h.routes = RouteRegistry()
    h.orchestrator = h.make()
    assert ensureDeferred(h.orchestrator.start()).called
    awaiting_route(h, "pr-8-shop.localhost", SHAS[0])


def test_a_denied_fork_replaces_the_awaiting_page_with_the_failed_one(tmp_path: Path) -> None:
    """A later push refused by the fork policy: the page says failed, with the reason."""
    h = Harness(tmp_path)
    host = "pr-9-shop.localhost"
    h.publish(9, SHAS[0])
    h.deploy(9, SHAS[0], gate="approve", fork=True)
    awaiting_route(h, host, SHAS[0])
    pr = h.pr(9, SHAS[1], fork=True)
    h.orchestrator.apply(policy.Deny(pr, RepoConfig("acme/shop"), "forks are not previewed"))
    failed = h.routes.lookup(host)
    assert failed is not None and failed.state == "failed" and failed.commit is None
    assert failed.detail == "forks are not previewed"
