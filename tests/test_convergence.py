"""
Issue 11, kind 1 and closes, with the orchestrator on fakes: the events of a
pull request are ordered by the forge's `updated_at`; a stale event never
cancels a newer build nor revives a closed pull request; whatever order a
forge history's deliveries come in (delayed, repeated), prevu ends with what
the newest says. The same inputs on the real engine: tests/test_convergence_e2e.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule
from twisted.internet.defer import ensureDeferred

from prevu.adapters.git import GitCli
from prevu.config import Config, RepoConfig, ServerConfig, parse_config
from prevu.errors import GitError
from prevu.forge import policy
from prevu.forge.events import PullRequest, PullRequestEvent, forge_time
from prevu.forge.github import pull_request as github_pull_request
from prevu.forge.gitlab import merge_request
from prevu.orchestrator import records
from prevu.ports import GitSource
from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import within
from tests.test_orchestrator import REPO, SHAS, URL, Harness
from tests.test_webhooks import FIXTURES

PREVIEW = "pr-1-" + REPO.rsplit("/", 1)[1]
T0 = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-05-15T15:21:18Z", 1557933678.0),
        ("2019-05-15T17:21:18+02:00", 1557933678.0),
        ("2019-05-15 15:21:18 UTC", 1557933678.0),
        ("2019-05-15T15:21:18", 1557933678.0),
        ("yesterday", None),
        ("", None),
        (None, None),
        (12, None),
    ],
)
def test_forge_time(text: Any, expected: float | None) -> None:
    """GitHub's and GitLab's timestamps read as epoch seconds; anything else as unknown."""
    assert forge_time(text) == expected


def test_parsers_read_updated_at() -> None:
    """`pull_request.updated_at` (GitHub) and `object_attributes.updated_at` (GitLab)."""
    import json

    github = json.loads((FIXTURES / "github/pull_request-closed.json").read_text())
    assert github_pull_request(github).updated_at == forge_time("2019-05-15T15:21:18Z")
    gitlab = json.loads((FIXTURES / "gitlab/merge_request-open.json").read_text())
    assert merge_request(gitlab).updated_at == forge_time("2013-12-03T17:23:34Z")


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def event(action: str, sha: str, at: float, raw: str = "") -> PullRequestEvent:
    pr = PullRequest("github", REPO, 1, sha, "feature", URL, "refs/pull/1/head", updated_at=at)
    return PullRequestEvent(f"d-{action}-{at}", action, pr, raw or action)  # type: ignore[arg-type]


def deliver(h: Harness, ev: PullRequestEvent) -> Any:
    return h.orchestrator.apply(policy.decide(h.config, ev))


def serving_sha(h: Harness) -> str | None:
    serving = h.orchestrator.serving(PREVIEW)
    return serving.revision.sha if serving else None


def test_a_late_event_for_an_older_commit_never_wins(h: Harness) -> None:
    """Kind 1: A -> B -> C; synchronize(C) then a delayed synchronize(B): C is served."""
    a, b, c = SHAS[:3]
    h.publish(1, a)
    assert deliver(h, event("open", a, T0 + 1)).status == "queued"
    h.settle()
    assert serving_sha(h) == a
    h.publish(1, c)
    h.git.pause("fetch")
    assert deliver(h, event("push", c, T0 + 3)).status == "queued"
    receipt = deliver(h, event("push", b, T0 + 2))
    assert receipt.status == "ignored" and "stale" in (receipt.reason or "")
    assert h.git.pauses.cancelled.get("fetch", 0) == 0, "C's build was not cancelled"
    h.git.release("fetch")
    h.settle()
    assert (h.status(PREVIEW), serving_sha(h)) == ("running", c)


def test_closed_then_late_events_run_nothing(h: Harness) -> None:
    """A close, then a late synchronize and a late opened (older): nothing runs."""
    a, b = SHAS[:2]
    h.publish(1, a)
    deliver(h, event("open", a, T0 + 1))
    h.settle()
    assert deliver(h, event("close", a, T0 + 5, "closed")).status == "queued"
    h.settle()
    h.publish(1, b)
    assert deliver(h, event("push", b, T0 + 3)).status == "ignored"
    assert deliver(h, event("open", a, T0 + 2, "opened")).status == "ignored"
    h.settle()
    assert h.status(PREVIEW) == "stopped" and h.leftovers(PREVIEW) == []
    assert [r for r in h.docker.builds if "pr-1" in r.tag] != [] and len(h.docker.builds) == 1


def test_a_push_newer_than_the_close_revives(h: Harness) -> None:
    """The reopen delivery is lost; a push newer than the close says the PR is open again."""
    a, b = SHAS[:2]
    h.publish(1, a)
    deliver(h, event("open", a, T0 + 1))
    deliver(h, event("close", a, T0 + 2, "closed"))
    h.settle()
    h.publish(1, b)
    assert deliver(h, event("push", b, T0 + 4)).status == "queued"
    h.settle()
    assert (h.status(PREVIEW), serving_sha(h)) == ("running", b)


def test_ordering_survives_a_restart(h: Harness) -> None:
    """What prevu saw of the forge is in the record: a late event after a restart is still stale."""
    a, b = SHAS[:2]
    h.publish(1, a)
    deliver(h, event("close", a, T0 + 1, "closed"))  # no preview yet: remembered in memory
    deliver(h, event("open", b, T0 + 2, "reopened"))
    deliver(h, event("close", b, T0 + 5, "closed"))
    h.settle()
    record = h.store.get(PREVIEW)
    assert record is not None
    restored = records.restore(record, h.orchestrator.settings)
    assert (restored.forge_seen, restored.forge_closed) == (T0 + 5, T0 + 5)
    h.orchestrator.stop()
    h.orchestrator = h.make()
    started = ensureDeferred(h.orchestrator.start())
    h.settle()
    assert started.called
    assert deliver(h, event("push", a, T0 + 3)).status == "ignored"


# --- the property: any delivery order of a forge history ends as its newest says ----------

Step = tuple[str, int]
"""(action, index of the head commit in SHAS) of one forge event."""


@st.composite
def histories(draw: Any) -> list[Step]:
    """A forge's history of PR 1: opened, then pushes, closes and reopens as a forge allows."""
    steps: list[Step] = [("open", 0)]
    head, is_open = 0, True
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        choices = ["push", "close"] if is_open else ["reopen"]
        action = draw(st.sampled_from(choices))
        if action == "push":
            head = min(head + 1, len(SHAS) - 1)
        is_open = action != "close"
        steps.append((action, head))
    return steps


@settings(max_examples=60, derandomize=True, deadline=None)
@given(data=st.data(), history=histories())
def test_any_delivery_order_converges_to_the_newest_event(data: Any, history: list[Step]) -> None:
    """Property: delayed, reordered and repeated deliveries end with the forge's final state."""
    timed = [(action, sha, T0 + i) for i, (action, sha) in enumerate(history)]
    order = data.draw(st.permutations(timed))
    repeats = data.draw(st.lists(st.sampled_from(timed), max_size=3))
    settles = data.draw(st.lists(st.booleans(), min_size=len(order) + 3, max_size=len(order) + 3))
    final_action, final_head = history[-1]
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp), Config(server=ServerConfig(state_dir=f"{tmp}/state")))
        h.publish(1, SHAS[final_head])  # the forge is at its final state when events arrive
        for (action, head, at), settle in zip([*order, *repeats], settles, strict=False):
            raw = {"open": "opened", "reopen": "reopened", "close": "closed"}.get(action, "")
            kind = "open" if action == "reopen" else action
            deliver(h, event(kind, SHAS[head], at, raw))
            if settle:
                h.settle()
        h.settle(10)
        record = h.store.get(PREVIEW)
        if final_action == "close":
            assert record is None or record.status == "stopped"
            assert h.leftovers(PREVIEW) == []
        else:
            assert record is not None and record.status == "running", record
            assert serving_sha(h) == SHAS[final_head]
            running = [c for c in h.docker.containers.values() if c.running]
            assert len(running) == 1


def test_previews_of_repositories_no_longer_listed_close_after_the_grace(tmp_path: Path) -> None:
    """Restarted without its repository in [[repos]]: served for unlisted_grace, then closed."""
    listed = Config(
        server=ServerConfig(state_dir=str(tmp_path / "state")), repos=(RepoConfig(REPO),)
    )
    h = Harness(tmp_path, listed)
    h.publish(1, SHAS[0])
    deliver(h, event("open", SHAS[0], T0))
    h.settle()
    assert h.status(PREVIEW) == "running"
    assert parse_config({}).previews.unlisted_grace == 3600.0
    unlisted = evolve(
        listed,
        repos=(RepoConfig("acme/other"),),
        previews=parse_config({"previews": {"unlisted_grace": "5m"}}).previews,
    )
    h.orchestrator.stop()
    h.config = unlisted
    h.orchestrator = h.make()
    started = ensureDeferred(h.orchestrator.start())
    h.settle()
    assert started.called and h.status(PREVIEW) == "running"
    for _ in range(4):  # four reconcile intervals (60 s): still within the grace
        h.clock.advance(60)
        h.settle(1)
    assert h.status(PREVIEW) == "running"
    h.clock.advance(60)
    h.settle()
    h.clock.advance(60)
    h.settle()
    assert h.status(PREVIEW) == "stopped" and h.leftovers(PREVIEW) == []
    lines = h.store.lines(PREVIEW)
    assert any("no longer in [[repos]]" in line for line in lines), lines


# --- the stateful property: random forge histories, deliveries and restarts ------------


class Convergence(RuleBasedStateMachine):
    """
    A forge with two pull requests of one repository, whose events reach prevu
    late, out of order and repeated, while prevu restarts (also with a fetch in
    flight). After every event is delivered and prevu settled, exactly the open
    pull requests have a running preview, each serving the forge's head, and
    nothing else runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        config = Config(server=ServerConfig(state_dir=f"{self.tmp.name}/state"))
        self.h = Harness(Path(self.tmp.name), config)
        self.at = T0
        self.commits = 0
        self.forge: dict[int, tuple[bool, str]] = {}
        """Number → (open, head SHA): the forge's truth."""
        self.pending: list[PullRequestEvent] = []
        self.delivered: list[PullRequestEvent] = []

    def _emit(self, number: int, action: str, raw: str) -> None:
        self.at += 1
        head = self.forge[number][1]
        pr = PullRequest(
            "github", REPO, number, head, f"b{number}", URL, f"refs/pull/{number}/head",
            updated_at=self.at,
        )  # fmt: skip
        self.pending.append(PullRequestEvent(f"d{self.at}", action, pr, raw))  # type: ignore[arg-type]

    def _commit(self, number: int) -> str:
        self.commits += 1
        sha = f"{self.commits:040x}"
        self.h.publish(number, sha)  # the forge's ref moves at once
        return sha

    @rule(number=st.sampled_from([1, 2]))
    def forge_open(self, number: int) -> None:
        if number not in self.forge:
            self.forge[number] = (True, self._commit(number))
            self._emit(number, "open", "opened")

    @rule(number=st.sampled_from([1, 2]))
    def forge_push(self, number: int) -> None:
        if self.forge.get(number, (False, ""))[0]:
            self.forge[number] = (True, self._commit(number))
            self._emit(number, "push", "synchronize")

    @rule(number=st.sampled_from([1, 2]))
    def forge_close(self, number: int) -> None:
        if self.forge.get(number, (False, ""))[0]:
            self.forge[number] = (False, self.forge[number][1])
            self._emit(number, "close", "closed")

    @rule(number=st.sampled_from([1, 2]))
    def forge_reopen(self, number: int) -> None:
        if number in self.forge and not self.forge[number][0]:
            self.forge[number] = (True, self.forge[number][1])
            self._emit(number, "open", "reopened")

    @rule(data=st.data())
    def deliver_one(self, data: Any) -> None:
        if self.pending:
            index = data.draw(st.integers(0, len(self.pending) - 1))
            ev = self.pending.pop(index)
            deliver(self.h, ev)
            self.delivered.append(ev)

    @rule(data=st.data())
    def redeliver(self, data: Any) -> None:
        if self.delivered:
            deliver(self.h, data.draw(st.sampled_from(self.delivered)))

    @rule(seconds=st.sampled_from([0.1, 1.0, 5.0]))
    def settle(self, seconds: float) -> None:
        self.h.settle(seconds)

    @rule(mid_fetch=st.booleans())
    def restart(self, mid_fetch: bool) -> None:
        if mid_fetch:
            self.h.git.pause("fetch")
            self.h.settle(0.5)
        self.h.orchestrator.stop()
        self.h.git.release("fetch")
        self.h.orchestrator = self.h.make()
        ensureDeferred(self.h.orchestrator.start())
        self.h.settle(0.5)

    def teardown(self) -> None:
        try:
            for ev in self.pending:
                deliver(self.h, ev)
            self.h.settle(10)
            ensureDeferred(self.h.orchestrator.reconciler.reconcile())
            self.h.settle(10)
            running = {c.labels.get("prevu.preview") for c in self.h.docker.containers.values()
                       if c.running}  # fmt: skip
            wanted = set()
            for number, (is_open, head) in self.forge.items():
                preview = f"pr-{number}-shop"
                record = self.h.store.get(preview)
                if is_open:
                    wanted.add(preview)
                    assert record is not None and record.status == "running", (number, record)
                    serving = self.h.orchestrator.serving(preview)
                    assert serving is not None and serving.revision.sha == head
                else:
                    assert record is None or record.status == "stopped", (number, record)
                    assert self.h.leftovers(preview) == []
            assert running == wanted
            assert len([c for c in self.h.docker.containers.values() if c.running]) == len(wanted)
        finally:
            self.h.orchestrator.stop()
            self.tmp.cleanup()


Convergence.TestCase.settings = settings(
    max_examples=25, stateful_step_count=30, derandomize=True, deadline=None
)
TestConvergence = Convergence.TestCase


@pytest.mark.parametrize(("head_index", "cancelled"), [(2, 0), (1, 1)])
def test_events_as_new_as_each_other_ask_the_repository(
    h: Harness, head_index: int, cancelled: int
) -> None:
    """
    synchronize(C) and a late synchronize(B) with the same updated_at (one-second
    resolution): the repository's refs/pull/1/head decides; C's build is cancelled
    only when the ref really is at B.
    """
    a, b, c = SHAS[:3]
    h.publish(1, a)
    deliver(h, event("open", a, T0))
    h.settle()
    h.publish(1, c)
    h.git.pause("fetch")
    deliver(h, event("push", c, T0 + 3))
    h.publish(1, SHAS[head_index])
    assert deliver(h, event("push", b, T0 + 3)).status == "queued"
    h.settle(1)
    assert ("remote_head", "refs/pull/1/head") in h.git.calls
    assert h.git.pauses.cancelled.get("fetch", 0) == cancelled
    h.git.release("fetch")
    h.settle()
    assert (h.status(PREVIEW), serving_sha(h)) == ("running", SHAS[head_index])
    assert any("events disagree on the head" in line for line in h.store.lines(PREVIEW))


@pytest_twisted.ensureDeferred
async def test_remote_head_reads_the_ref_with_real_git(
    reactor: Any, thread_pool: Any, tmp_path: Path
) -> None:
    """`GitCli.remote_head` is `git ls-remote`: the ref's SHA, or GitError for a missing ref."""
    forge = ForgeRepo.create(tmp_path / "forge", "app")
    sha = forge.push_pull(3, {"index.html": "x\n"})
    git = GitCli(reactor, str(tmp_path / "workspaces"), thread_pool)
    source = GitSource(forge.url, "refs/pull/3/head", "0" * 40, timeout=30)
    assert await within(git.remote_head(source), 30) == sha
    with pytest.raises(GitError, match="does not exist"):
        await within(git.remote_head(evolve(source, ref="refs/pull/4/head")), 30)
