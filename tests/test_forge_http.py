"""
The forge clients' shared request loop (`prevu/adapters/forge_http.py`) through
GitHub's and GitLab's clients, against the fakes over real loopback HTTP: the
paths the per-forge tests leave out (no answer at all, an App token refused
once, a failing token look-up, the retry log line). Waits run on a Clock.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from prevu.adapters.github_api import AppKey, ForgeApiError, ForgeUnavailable, GithubApi
from prevu.adapters.gitlab_api import GitlabApi
from prevu.backoff import constant
from prevu.testing import fake_gitlab
from prevu.testing.fake_github import FakeGithub, listen
from prevu.testing.fake_gitlab import FakeGitlab
from tests.support.timeouts import sleep, within
from tests.test_github_api import EPOCH, rsa_pem

REPO = "acme/shop"
SHA = "d" * 40
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


async def waiting(clock: Clock) -> None:
    """Until the client waits on the clock to retry."""
    for _ in range(1000):
        if clock.getDelayedCalls():
            return
        await sleep(0.005)
    raise AssertionError("the client never waited on the clock")


@pytest.fixture
def clock() -> Clock:
    """The clock the clients wait on, at EPOCH (the fake GitHub's tokens expire on it)."""
    return at(EPOCH)


def at(seconds: float) -> Clock:
    """A Clock whose time is `seconds`."""
    clock = Clock()
    clock.advance(seconds)
    return clock


@pytest.fixture
def app(clock: Clock) -> Any:
    """A fake GitHub with App 42 installed on REPO; yields (fake, the App's client)."""
    private, public = rsa_pem()
    github = FakeGithub(now=clock.seconds)
    github.add_app(42, "prevu-app", public)
    github.install(REPO, 9001, 42)
    github.repositories[REPO] = True
    port = listen(reactor_(), github)
    yield (
        github,
        GithubApi(reactor_(), clock, github.base, app=AppKey(42, private), backoff=constant(60)),
    )
    port.stopListening()


def token_calls(fake: FakeGithub) -> int:
    return sum(1 for call in fake.calls if call.path.endswith("/access_tokens"))


@pytest_twisted.ensureDeferred
async def test_no_answer_is_retried_on_the_clock_then_unavailable(clock: Clock) -> None:
    """A refused connection is retried after the backoff; then ForgeUnavailable, status 0."""
    api = GitlabApi(reactor_(), clock, CLOSED, "glpat-secret", backoff=constant(7), attempts=2)
    done = ensureDeferred(api.set_status(REPO, SHA, "pending", "b", "", "prevu"))
    await waiting(clock)
    assert [call.getTime() for call in clock.getDelayedCalls()] == [EPOCH + 7]
    assert not done.called
    clock.advance(7)
    with pytest.raises(ForgeUnavailable) as raised:
        await within(done, 5)
    error = raised.value
    assert (error.forge, error.method, error.status) == ("GitLab", "POST", 0)
    assert error.reason == "ConnectionRefusedError"
    assert "glpat-secret" not in str(error)


@pytest_twisted.ensureDeferred
async def test_an_app_token_refused_once_is_renewed_and_sent_again_at_once(
    app: tuple[FakeGithub, GithubApi],
) -> None:
    """A 401 on an installation token: one fresh token and the call again, no wait."""
    fake, api = app
    await within(api.set_status(REPO, SHA, "pending", "b", "", "prevu"), 5)
    assert token_calls(fake) == 1
    fake.fail("/statuses/", 401, body={"message": "Bad credentials"})
    await within(api.set_status(REPO, SHA, "success", "r", "", "prevu"), 5)
    assert token_calls(fake) == 2 and fake.statuses[-1]["state"] == "success"


@pytest_twisted.ensureDeferred
async def test_an_app_token_refused_twice_is_a_refusal(
    app: tuple[FakeGithub, GithubApi],
) -> None:
    """A second 401, with a fresh token, is not retried: ForgeApiError 401."""
    fake, api = app
    fake.fail("/statuses/", 401, times=2, body={"message": "Bad credentials"})
    with pytest.raises(ForgeApiError) as raised:
        await within(api.set_status(REPO, SHA, "pending", "b", "", "prevu"), 5)
    assert type(raised.value) is ForgeApiError
    assert (raised.value.status, raised.value.reason) == (401, "Bad credentials")
    assert token_calls(fake) == 2


@pytest_twisted.ensureDeferred
async def test_a_failing_installation_lookup_is_raised_not_retried(
    app: tuple[FakeGithub, GithubApi],
) -> None:
    """The token look-up's own error is the call's: its path, and nothing sent."""
    fake, api = app
    with pytest.raises(ForgeApiError) as raised:
        await within(api.set_status("acme/elsewhere", SHA, "pending", "b", "", "prevu"), 5)
    assert raised.value.path == "/repos/acme/elsewhere/installation"
    assert raised.value.status == 404
    assert not any("/statuses/" in call.path for call in fake.calls)


@pytest_twisted.ensureDeferred
async def test_each_retry_is_logged_with_the_forges_name(clock: Clock) -> None:
    """One warning a retry: forge, method, path, status, count and delay."""
    events: list[dict[str, Any]] = []
    fake = FakeGitlab()
    port = fake_gitlab.listen(reactor_(), fake)
    try:
        fake.add_user(7, "prevu-bot", "glpat-secret")
        api = GitlabApi(
            reactor_(), clock, fake.base, "glpat-secret", backoff=constant(2),
            log=Logger(observer=events.append),
        )  # fmt: skip
        fake.fail("GET /api/v4/user", 503)
        done = ensureDeferred(api.identity())
        await waiting(clock)
        clock.advance(2)
        assert await within(done, 5) == "prevu-bot"
    finally:
        await port.stopListening()
    assert [formatEvent(event) for event in events] == [
        "GitLab GET /user answered 503; retry 1 in 2.0s"
    ]
    assert events[0]["log_level"].name == "warn"
