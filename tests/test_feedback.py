"""
The feedback publisher against the fake GitHub over real loopback HTTP: one
sticky comment, statuses and deployments, converging when the forge comes back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from prevu import lifecycle as lc
from prevu.adapters.github_api import GithubApi
from prevu.backoff import constant
from prevu.feedback.comment import marker
from prevu.feedback.memory import FILE_NAME, FeedbackMemory
from prevu.feedback.publisher import Publisher
from prevu.masking import masker
from prevu.orchestrator import records
from prevu.ports import PreviewRecord
from prevu.testing.fake_github import FakeGithub, FakeUser, listen
from tests.support.timeouts import sleep

TOKEN = "ghp_feedbacktoken0123456789"
REPO = "acme/shop"
A = "a" * 40
B = "b" * 40
URL = "http://pr-7.preview.test"
PUBLIC = "https://prevu.example.com"


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeGithub]:
    github = FakeGithub(now=clock.seconds)
    github.users["prevu-bot"] = FakeUser("prevu-bot")
    github.tokens[TOKEN] = "prevu-bot"
    github.repositories[REPO] = True
    port = listen(reactor_(), github)
    yield github
    port.stopListening()


def publisher(fake: FakeGithub, clock: Clock, state: Path, **kwargs: Any) -> Publisher:
    api = GithubApi(reactor_(), clock, fake.base, token=TOKEN, backoff=constant(0), attempts=2)
    kwargs.setdefault("retry", constant(10))
    return Publisher(api, clock, FeedbackMemory.load(str(state)), PUBLIC, **kwargs)


async def settle(clock: Clock, feed: Publisher) -> None:
    """Run the publisher's work (timers due now, HTTP on the real reactor) until idle."""
    for _ in range(1000):
        clock.advance(0)
        due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
        if feed.idle() and not due:
            return
        await sleep(0.005)
    raise AssertionError("the publisher did not settle")


def record(status: str, sha: str = A, **kwargs: Any) -> PreviewRecord:
    data = kwargs.pop("data", {"clean": "0"})
    return PreviewRecord(
        id="pr-7", repo=REPO, number=7, sha=sha, status=status, url=URL, data=data, **kwargs
    )  # type: ignore[arg-type]


async def feed_all(clock: Clock, feed: Publisher, *statuses: str, sha: str = A) -> None:
    for status in statuses:
        feed.on_record(record(status, sha))
        clock.advance(1)
        await settle(clock, feed)


def states(fake: FakeGithub, sha: str) -> list[str]:
    return [s["state"] for s in fake.statuses if s["url"].endswith(sha)]


def deployment_states(fake: FakeGithub) -> list[str]:
    return [s["state"] for s in fake.deployment_statuses]


@pytest_twisted.ensureDeferred
async def test_one_comment_edited_only_on_visible_changes(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    feed = publisher(fake, clock, tmp_path)
    await feed_all(clock, feed, "queued", "building", "starting", "running")
    # Sleep, wake and a self-healing restart: nothing visible changes.
    await feed_all(clock, feed, "sleeping", "starting", "running", "running")
    [comment] = fake.comments_on(REPO, 7)
    assert comment["_edits"] == 2  # queued -> building -> running
    assert comment["user"]["login"] == "prevu-bot"
    assert URL in comment["body"] and "`aaaaaaa`" in comment["body"]
    assert f"{PUBLIC}/previews/pr-7" in comment["body"]
    assert states(fake, A) == ["pending", "pending", "success"]
    assert fake.statuses[-1]["target_url"] == URL
    assert deployment_states(fake) == ["in_progress", "success"]
    [deployment] = fake.deployments.values()
    assert deployment["environment"] == "pr-7" and deployment["sha"] == A


@pytest_twisted.ensureDeferred
async def test_close_says_removed_and_deactivates_the_deployment(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    feed = publisher(fake, clock, tmp_path)
    await feed_all(clock, feed, "building", "running")
    feed.on_record(record("stopped", closed=True, data={"detail": "pull request closed"}))
    await settle(clock, feed)
    [comment] = fake.comments_on(REPO, 7)
    assert "removed" in comment["body"].lower()
    assert deployment_states(fake) == ["in_progress", "success", "inactive"]
    assert "acme/shop:pr-7" not in fake.environments


@pytest_twisted.ensureDeferred
async def test_a_failed_build_shows_the_reason_and_the_masked_tail_when_private(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    lines = [f"step {n}" for n in range(30)] + [f"fetch with {TOKEN} failed"]
    feed = publisher(
        fake, clock, tmp_path, read_tail=lambda preview, n: lines[-n:], mask=masker([TOKEN])
    )
    await feed_all(clock, feed, "building")
    feed.on_record(record("failed", error="RUN make: exit status 2"))
    await settle(clock, feed)
    body = fake.comments_on(REPO, 7)[0]["body"]
    assert "RUN make: exit status 2" in body
    assert "fetch with *** failed" in body and TOKEN not in body
    assert "step 11" in body and "step 10" not in body  # the last 20 lines
    assert states(fake, A)[-1] == "failure"
    assert deployment_states(fake)[-1] == "failure"


@pytest_twisted.ensureDeferred
async def test_a_public_repository_gets_the_logs_link_not_the_tail(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    fake.repositories[REPO] = False
    feed = publisher(fake, clock, tmp_path, read_tail=lambda preview, n: ["secret-ish line"])
    feed.on_record(record("failed", error="boom"))
    await settle(clock, feed)
    body = fake.comments_on(REPO, 7)[0]["body"]
    assert "secret-ish line" not in body and f"{PUBLIC}/previews/pr-7/logs" in body
    # `[[repos]] comment_logs = true` shows it anyway.
    feed2 = publisher(
        fake,
        clock,
        tmp_path / "2",
        read_tail=lambda preview, n: ["shown line"],
        comment_logs=lambda repo: True,
    )
    fake.comments.clear()
    feed2.on_record(record("failed", error="boom"))
    await settle(clock, feed2)
    assert "shown line" in fake.comments_on(REPO, 7)[0]["body"]


@pytest_twisted.ensureDeferred
async def test_a_502_after_create_leaves_exactly_one_comment(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    fake.fail("POST /repos/acme/shop/issues/7/comments", 502, after=True)
    feed = publisher(fake, clock, tmp_path)
    await feed_all(clock, feed, "building")
    assert len(fake.comments_on(REPO, 7)) == 1
    await feed_all(clock, feed, "running")
    [comment] = fake.comments_on(REPO, 7)
    assert comment["_edits"] == 1


@pytest_twisted.ensureDeferred
async def test_a_restart_mid_pr_edits_the_same_comment(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    first = publisher(fake, clock, tmp_path)
    await feed_all(clock, first, "queued", "building")
    first.stop()
    lookups = sum(1 for call in fake.calls if call.method == "GET" and "/comments" in call.path)
    restarted = publisher(fake, clock, tmp_path)
    await feed_all(clock, restarted, "running")
    [comment] = fake.comments_on(REPO, 7)
    assert comment["_edits"] == 2 and "Preview ready" in comment["body"]
    # The stored comment id was used: no lookup by marker.
    assert lookups == sum(
        1 for call in fake.calls if call.method == "GET" and "/comments" in call.path
    )
    # Even with prevu's memory lost, the marker among its own comments finds it.
    (tmp_path / FILE_NAME).unlink()
    amnesic = publisher(fake, clock, tmp_path)
    await feed_all(clock, amnesic, "building", sha=B)
    [comment] = fake.comments_on(REPO, 7)
    assert "`bbbbbbb`" in comment["body"]


@pytest_twisted.ensureDeferred
async def test_a_marker_in_someone_elses_comment_is_never_edited(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    fake.comments[1] = {
        "id": 1,
        "body": marker("github", REPO, 7) + " copied",
        "user": {"login": "mallory"},
        "_repo": REPO,
        "_number": 7,
        "_edits": 0,
    }
    feed = publisher(fake, clock, tmp_path)
    await feed_all(clock, feed, "building", "running")
    (mine,) = (c for c in fake.comments_on(REPO, 7) if c["user"]["login"] == "prevu-bot")
    assert fake.comments[1]["_edits"] == 0 and fake.comments[1]["body"].endswith(" copied")
    assert "Preview ready" in mine["body"]


@pytest_twisted.ensureDeferred
async def test_a_superseded_sha_says_by_which(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    feed = publisher(fake, clock, tmp_path)
    await feed_all(clock, feed, "building")
    await feed_all(clock, feed, "queued", "building", sha=B)
    assert states(fake, A) == ["pending", "error"]
    assert (
        fake.statuses[[s["url"].endswith(A) for s in fake.statuses].index(True, 1)]["description"]
        == "Superseded by bbbbbbb"
    )
    assert "Supersedes the build of `aaaaaaa`" in fake.comments_on(REPO, 7)[0]["body"]
    by_sha = {d["sha"]: d["_state"] for d in fake.deployments.values()}
    assert by_sha == {A: "inactive", B: "in_progress"}


def held(error: str, status: str = "running") -> PreviewRecord:
    """B's `[data] on_push` failed while A serves: status running, error set, `held`."""
    serving = lc.Deployment(lc.Revision(A, "f", 1), "c1", "i1", "10.0.0.1", 8080)
    state = lc.Preview(
        target=lc.Revision(B, "f", 2),
        failed=lc.Revision(B, "f", 2),
        serving=serving,
        error=error,
        held=True,
        clean=False,
        asleep=status == "sleeping",
    )
    data = {"clean": "0", "state": json.dumps(records.state_to_json(state))}
    return record(status, B, error=error, data=data)


@pytest_twisted.ensureDeferred
async def test_a_failed_on_push_says_not_deployed_and_the_old_deployment_is_active_again(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    """Not "ready": the comment names the error and A serving, B fails, A's deployment is back."""
    feed = publisher(fake, clock, tmp_path, read_tail=lambda preview, n: ["migrating 0042"])
    await feed_all(clock, feed, "building", "running")
    await feed_all(clock, feed, "building", sha=B)
    feed.on_record(held("on_push failed (exit 3): relation exists"))
    clock.advance(1)
    await settle(clock, feed)
    body = fake.comments_on(REPO, 7)[0]["body"]
    assert "New commit not deployed" in body and "Preview ready" not in body
    assert "`bbbbbbb` was **not deployed**" in body and "keeps serving `aaaaaaa`" in body
    assert "on_push failed (exit 3): relation exists" in body and "migrating 0042" in body
    assert states(fake, B) == ["pending", "failure"]
    status = fake.statuses[-1]
    assert status["description"].startswith("Not deployed, aaaaaaa still serves: on_push")
    assert status["target_url"] == f"{PUBLIC}/previews/pr-7/logs"
    by_sha = {d["sha"]: d["_state"] for d in fake.deployments.values()}
    assert by_sha == {A: "success", B: "failure"}
    # Sleeping and waking A change nothing shown: no edit, no new status.
    edits, published = fake.comments_on(REPO, 7)[0]["_edits"], len(fake.statuses)
    for status in ("sleeping", "running"):
        feed.on_record(held("on_push failed (exit 3): relation exists", status))
        clock.advance(1)
        await settle(clock, feed)
    assert fake.comments_on(REPO, 7)[0]["_edits"] == edits and len(fake.statuses) == published


@pytest_twisted.ensureDeferred
async def test_a_forge_that_is_down_never_blocks_and_feedback_converges_later(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    fake.down = True
    feed = publisher(fake, clock, tmp_path)
    for status in ("queued", "building", "starting", "running"):
        feed.on_record(record(status))  # never raises, never waits
    await settle(clock, feed)
    assert fake.comments == {} and fake.statuses == []
    fake.down = False
    clock.advance(10)  # the publisher's retry
    await settle(clock, feed)
    [comment] = fake.comments_on(REPO, 7)
    assert "Preview ready" in comment["body"] and comment["_edits"] == 0
    assert states(fake, A)[-1] == "success"
    assert deployment_states(fake)[-1] == "success"


@pytest_twisted.ensureDeferred
async def test_what_was_not_published_before_a_restart_is_published_after(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    fake.down = True
    feed = publisher(fake, clock, tmp_path)
    feed.on_record(record("running"))
    await settle(clock, feed)
    feed.stop()
    fake.down = False
    restarted = publisher(fake, clock, tmp_path)
    restarted.start()
    await settle(clock, restarted)
    assert "Preview ready" in fake.comments_on(REPO, 7)[0]["body"]


@pytest_twisted.ensureDeferred
async def test_feedback_kinds_can_be_chosen(fake: FakeGithub, clock: Clock, tmp_path: Path) -> None:
    feed = publisher(fake, clock, tmp_path, kinds=("status",))
    await feed_all(clock, feed, "building", "running")
    assert fake.comments == {} and fake.deployments == {}
    assert states(fake, A) == ["pending", "success"]


@pytest_twisted.ensureDeferred
async def test_a_refused_comment_does_not_hold_back_the_status(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    refusal = {"message": "Resource not accessible by integration"}
    fake.fail("/issues/7/comments", 403, times=100, body=refusal)
    feed = publisher(fake, clock, tmp_path)
    await feed_all(clock, feed, "building", "running")
    assert fake.comments == {}
    assert states(fake, A) == ["pending", "success"]
    assert deployment_states(fake) == ["in_progress", "success"]


@pytest_twisted.ensureDeferred
async def test_a_closed_pull_request_is_forgotten_a_week_later(
    fake: FakeGithub, clock: Clock, tmp_path: Path
) -> None:
    feed = publisher(fake, clock, tmp_path)
    await feed_all(clock, feed, "running")
    feed.on_record(record("stopped", closed=True, data={"detail": "pull request closed"}))
    await settle(clock, feed)
    clock.advance(1)  # the memory is written
    assert FeedbackMemory.load(str(tmp_path)).items
    clock.advance(8 * 86400)
    feed.stop()
    assert FeedbackMemory.load(str(tmp_path)).items == {}
