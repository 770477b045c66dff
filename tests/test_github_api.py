"""
The GitHub API client against the fake GitHub over real loopback HTTP; retries
and token expiry on a Clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
import treq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from prevu.adapters.github_api import (
    AppKey,
    ForgeApiError,
    ForgeUnavailable,
    GithubApi,
    load_private_key,
)
from prevu.backoff import constant
from prevu.errors import ConfigError
from prevu.testing.fake_github import FakeGithub, FakeUser, listen
from tests.support.timeouts import sleep, within

TOKEN = "ghp_feedbacktoken0123456789"
REPO = "acme/shop"
SHA = "c" * 40
EPOCH = 1_700_000_000.0


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Let the reactor run until `predicate()` holds."""
    for _ in range(int(seconds / 0.005)):
        if predicate():
            return
        await sleep(0.005)
    raise AssertionError("condition not reached")


async def retrying(fake: FakeGithub, clock: Clock, calls: int) -> None:
    """Until the fake got `calls` calls and the client waits on the clock to retry."""
    await until(lambda: len(fake.calls) == calls and bool(clock.getDelayedCalls()))


def rsa_pem() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(EPOCH)
    return clock


@pytest.fixture
def fake(clock: Clock) -> Any:
    github = FakeGithub(now=clock.seconds)
    github.users["prevu-bot"] = FakeUser("prevu-bot")
    github.tokens[TOKEN] = "prevu-bot"
    github.repositories[REPO] = True
    port = listen(reactor_(), github)
    yield github
    port.stopListening()


def token_api(fake: FakeGithub, clock: Clock, **kwargs: Any) -> GithubApi:
    kwargs.setdefault("backoff", constant(5.0))
    return GithubApi(reactor_(), clock, fake.base, token=TOKEN, **kwargs)


@pytest_twisted.ensureDeferred
async def test_token_calls_carry_the_token_and_githubs_headers(
    fake: FakeGithub, clock: Clock
) -> None:
    api = token_api(fake, clock)
    assert await within(api.identity(), 5) == "prevu-bot"
    await within(api.set_status(REPO, SHA, "pending", "Building", "https://x/1", "prevu"), 5)
    assert fake.statuses[-1]["state"] == "pending" and fake.statuses[-1]["context"] == "prevu"
    assert fake.calls[-1].authorization == f"Bearer {TOKEN}"
    assert await within(api.repository_private(REPO), 5) is True


@pytest_twisted.ensureDeferred
async def test_5xx_is_retried_after_the_backoff_on_the_clock(
    fake: FakeGithub, clock: Clock
) -> None:
    api = token_api(fake, clock)
    fake.fail("/statuses/", 503, times=2)
    done = ensureDeferred(api.set_status(REPO, SHA, "success", "ok", "", "prevu"))
    await retrying(fake, clock, 1)
    clock.advance(4.9)
    await sleep(0.05)
    assert len(fake.calls) == 1 and not done.called
    clock.advance(0.1)
    await retrying(fake, clock, 2)
    clock.advance(5)
    await within(done, 5)
    assert len(fake.calls) == 3 and len(fake.statuses) == 1


@pytest_twisted.ensureDeferred
async def test_a_secondary_rate_limit_waits_what_retry_after_says(
    fake: FakeGithub, clock: Clock
) -> None:
    api = token_api(fake, clock, backoff=constant(1.0))
    fake.rate_limit("/statuses/", 30)
    done = ensureDeferred(api.set_status(REPO, SHA, "success", "ok", "", "prevu"))
    await retrying(fake, clock, 1)
    clock.advance(29)
    await sleep(0.05)
    assert len(fake.calls) == 1, "retried before Retry-After"
    clock.advance(1)
    await within(done, 5)
    assert len(fake.statuses) == 1


@pytest_twisted.ensureDeferred
async def test_an_exhausted_primary_limit_waits_until_the_reset(
    fake: FakeGithub, clock: Clock
) -> None:
    api = token_api(fake, clock, backoff=constant(1.0))
    reset = str(int(clock.seconds()) + 40)
    fake.fail(
        "/statuses/",
        403,
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset},
        body={"message": "API rate limit exceeded for installation"},
    )
    done = ensureDeferred(api.set_status(REPO, SHA, "success", "ok", "", "prevu"))
    await retrying(fake, clock, 1)
    clock.advance(39)
    await sleep(0.05)
    assert len(fake.calls) == 1
    clock.advance(1)
    await within(done, 5)


@pytest_twisted.ensureDeferred
async def test_429_is_retried(fake: FakeGithub, clock: Clock) -> None:
    api = token_api(fake, clock)
    fake.fail("/statuses/", 429)
    done = ensureDeferred(api.set_status(REPO, SHA, "success", "ok", "", "prevu"))
    await retrying(fake, clock, 1)
    clock.advance(5)
    await within(done, 5)
    assert len(fake.statuses) == 1


@pytest_twisted.ensureDeferred
async def test_when_retries_run_out_the_error_names_no_token(
    fake: FakeGithub, clock: Clock
) -> None:
    api = token_api(fake, clock, attempts=2)
    fake.down = True
    done = ensureDeferred(api.set_status(REPO, SHA, "success", "ok", "", "prevu"))
    await retrying(fake, clock, 1)
    clock.advance(5)
    with pytest.raises(ForgeUnavailable) as caught:
        await within(done, 5)
    assert caught.value.status == 503
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)
    assert TOKEN not in repr(api)


@pytest_twisted.ensureDeferred
async def test_a_refusal_is_not_retried(fake: FakeGithub, clock: Clock) -> None:
    api = token_api(fake, clock)
    fake.fail("/statuses/", 422, body={"message": "Validation Failed"})
    with pytest.raises(ForgeApiError) as caught:
        await within(api.set_status(REPO, SHA, "bogus", "", "", "prevu"), 5)
    assert caught.value.status == 422 and len(fake.calls) == 1


@pytest_twisted.ensureDeferred
async def test_a_comment_created_before_a_502_is_found_not_sent_again(
    fake: FakeGithub, clock: Clock
) -> None:
    api = token_api(fake, clock)
    fake.fail("POST /repos/acme/shop/issues/7/comments", 502, after=True)

    async def recover() -> int | None:
        for found in await api.comments(REPO, 7):
            if "<!-- mine -->" in found.body:
                return found.id
        return None

    done = ensureDeferred(api.create_comment(REPO, 7, "<!-- mine --> hello", recover))
    await retrying(fake, clock, 1)
    clock.advance(5)
    made = await within(done, 5)
    assert [c["id"] for c in fake.comments_on(REPO, 7)] == [made]


@pytest_twisted.ensureDeferred
async def test_a_deployment_is_transient_with_no_required_contexts(
    fake: FakeGithub, clock: Clock
) -> None:
    api = token_api(fake, clock)
    deployment = await within(api.create_deployment(REPO, SHA, "pr-7"), 5)
    body = fake.calls[-1].body
    assert body["required_contexts"] == [] and body["auto_merge"] is False
    assert body["transient_environment"] is True and body["production_environment"] is False
    assert await within(api.find_deployment(REPO, SHA, "pr-7"), 5) == deployment
    # As GitHub does while prevu's own status is pending: 409 without required_contexts.
    answer = await within(
        treq.post(
            f"{fake.base}/repos/{REPO}/deployments",
            json={"ref": SHA, "environment": "pr-7"},
            headers={"authorization": f"Bearer {TOKEN}"},
        ),
        5,
    )
    assert answer.code == 409
    await answer.content()


@pytest_twisted.ensureDeferred
async def test_an_environment_delete_without_admin_is_reported(
    fake: FakeGithub, clock: Clock
) -> None:
    api = token_api(fake, clock)
    await within(api.create_deployment(REPO, SHA, "pr-8"), 5)
    fake.admin = False
    assert await within(api.delete_environment(REPO, "pr-8"), 5) is False
    fake.admin = True
    assert await within(api.delete_environment(REPO, "pr-8"), 5) is True


@pytest_twisted.ensureDeferred
async def test_an_app_installation_token_is_fetched_cached_and_renewed(
    fake: FakeGithub, clock: Clock
) -> None:
    private, public = rsa_pem()
    fake.add_app(42, "prevu-app", public)
    fake.install(REPO, 9001, 42)
    api = GithubApi(reactor_(), clock, fake.base, app=AppKey(42, private), backoff=constant(1))
    assert await within(api.identity(), 5) == "prevu-app[bot]"
    await within(api.set_status(REPO, SHA, "pending", "b", "", "prevu"), 5)
    await within(api.set_status(REPO, SHA, "success", "r", "", "prevu"), 5)

    def token_calls() -> int:
        return sum(1 for call in fake.calls if call.path.endswith("/access_tokens"))

    assert token_calls() == 1, "the installation token is cached"
    assert await within(api.clone_token(REPO), 5) in fake.installation_tokens
    assert token_calls() == 1, "clones use the same cached installation token"
    assert sum(1 for call in fake.calls if call.path.endswith("/installation")) == 1
    assert fake.statuses[-1]["state"] == "success"
    clock.advance(fake.token_lifetime - 200)  # within the renewal margin
    await within(api.set_status(REPO, SHA, "success", "r", "", "prevu"), 5)
    assert token_calls() == 2
    jwts = [c.authorization.split(" ")[1] for c in fake.calls if c.path.endswith("access_tokens")]
    claims = jwt.decode(jwts[0], public, algorithms=["RS256"], options={"verify_exp": False})
    assert claims["exp"] - claims["iat"] <= 600 and claims["iss"] == "42"


@pytest_twisted.ensureDeferred
async def test_a_webhooks_installation_saves_the_lookup(fake: FakeGithub, clock: Clock) -> None:
    private, public = rsa_pem()
    fake.add_app(42, "prevu-app", public)
    fake.install(REPO, 9001, 42)
    api = GithubApi(reactor_(), clock, fake.base, app=AppKey(42, private))
    api.remember_installation(REPO, 9001)
    await within(api.set_status(REPO, SHA, "pending", "b", "", "prevu"), 5)
    assert not any(call.path.endswith("/installation") for call in fake.calls)


@pytest_twisted.ensureDeferred
async def test_the_fake_refuses_a_jwt_valid_for_more_than_10_minutes(
    fake: FakeGithub, clock: Clock
) -> None:
    private, public = rsa_pem()
    fake.add_app(42, "prevu-app", public)
    now = int(clock.seconds())
    token = jwt.encode({"iat": now - 60, "exp": now + 900, "iss": "42"}, private, "RS256")
    answer = await within(
        treq.get(f"{fake.base}/app", headers={"authorization": f"Bearer {token}"}), 5
    )
    assert answer.code == 401
    assert "exp" in (await answer.json())["message"]


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    private, _ = rsa_pem()
    path = tmp_path / "app.pem"
    path.write_text(private)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        load_private_key(str(path))
    os.chmod(path, 0o600)
    assert load_private_key(str(path)) == private
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM"):
        load_private_key(str(path))
    assert private not in repr(AppKey(1, private))
