"""The preview lifecycle state machine: every (state, event) pair, invariants, scenarios."""

from __future__ import annotations

import pytest

from prevu.lifecycle import (
    Adopt,
    Approve,
    Build,
    BuildFailed,
    BuildStarted,
    Built,
    CancelBuild,
    Close,
    Deny,
    Deploy,
    Deployment,
    Discard,
    Effect,
    Event,
    Job,
    Poke,
    Preview,
    Redeploy,
    Resume,
    Revision,
    RouteBuilding,
    RouteTo,
    Sleep,
    Start,
    Started,
    StartFailed,
    Suspend,
    Suspended,
    Teardown,
    TornDown,
    Unroute,
    Vanished,
    Wake,
    transition,
)

A = "a" * 40
B = "b" * 40
C = "c" * 40
RA = Revision(A, "main", 1)
DA = Deployment(RA, "cA", "imgA", "10.0.0.2", 8080)

STATES: dict[str, Preview] = {
    "fresh": Preview(),
    "awaiting": Preview(awaiting=Revision(A, "fork", 1)),
    "queued": Preview(target=RA, job=Job("build", RA), clean=False),
    "building": Preview(target=RA, job=Job("build", RA, started=True), clean=False),
    "starting": Preview(target=RA, job=Job("start", RA, image="imgA", started=True), clean=False),
    "running": Preview(target=RA, serving=DA, clean=False),
    "suspending": Preview(target=RA, serving=DA, job=Job("suspend", RA), clean=False),
    "sleeping": Preview(target=RA, serving=DA, asleep=True, clean=False),
    "waking": Preview(target=RA, serving=DA, asleep=True, job=Job("resume", RA), clean=False),
    "failed": Preview(target=RA, failed=RA, error="boom", clean=False),
    "closing": Preview(closed=True, target=RA, job=Job("teardown"), clean=False),
    "stopped": Preview(closed=True, target=RA),
}

EVENTS: dict[str, Event] = {
    "deploy-new": Deploy(B, "main"),
    "deploy-same": Deploy(A, "main"),
    "deploy-fork": Deploy(B, "fork", gate="approve"),
    "reopen": Deploy(B, "main", revive=True),
    "deploy-full": Deploy(B, "main", room=False, limit=1),
    "deny": Deny(B, "fork", "no forks"),
    "approve": Approve("octocat"),
    "close": Close("closed"),
    "redeploy": Redeploy(),
    "poke": Poke(),
    "sleep": Sleep(),
    "wake": Wake(),
    "build-started": BuildStarted(RA),
    "built": Built(RA, "imgA"),
    "build-failed": BuildFailed(RA, "bad"),
    "started": Started(Deployment(RA, "cNew", "imgA", "10.0.0.3", 8080)),
    "start-failed": StartFailed(RA, "unhealthy"),
    "suspended": Suspended(),
    "torn-down": TornDown(),
    "vanished": Vanished("cA"),
    "adopt": Adopt(Deployment(RA, "cX", "imgX", "10.0.0.4", 8080)),
}

# state -> event -> "status after: effects in order" (reviewed by hand, one line each).
EXPECTED: dict[str, dict[str, str]] = {
    "fresh": {  # stopped
        "deploy-new": "queued: Build RouteBuilding",
        "deploy-same": "queued: Build RouteBuilding",
        "deploy-fork": "queued",
        "reopen": "queued: Build RouteBuilding",
        "deploy-full": "failed",
        "deny": "failed",
        "approve": "stopped",
        "close": "stopped: Unroute",
        "redeploy": "stopped",
        "poke": "stopped",
        "sleep": "stopped",
        "wake": "stopped",
        "build-started": "stopped",
        "built": "stopped: Discard",
        "build-failed": "stopped",
        "started": "stopped: Discard",
        "start-failed": "stopped",
        "suspended": "stopped",
        "torn-down": "stopped",
        "vanished": "stopped",
        "adopt": "running: RouteTo",
    },
    "awaiting": {  # queued
        "deploy-new": "queued: Build RouteBuilding",
        "deploy-same": "queued: Build RouteBuilding",
        "deploy-fork": "queued",
        "reopen": "queued: Build RouteBuilding",
        "deploy-full": "failed",
        "deny": "failed",
        "approve": "queued: Build RouteBuilding",
        "close": "stopped: Unroute",
        "redeploy": "queued",
        "poke": "queued",
        "sleep": "queued",
        "wake": "queued",
        "build-started": "queued",
        "built": "queued: Discard",
        "build-failed": "queued",
        "started": "queued: Discard",
        "start-failed": "queued",
        "suspended": "queued",
        "torn-down": "queued",
        "vanished": "queued",
        "adopt": "queued: RouteTo",
    },
    "queued": {  # queued
        "deploy-new": "queued: CancelBuild",
        "deploy-same": "queued",
        "deploy-fork": "queued",
        "reopen": "queued: CancelBuild",
        "deploy-full": "queued: CancelBuild",
        "deny": "queued: CancelBuild",
        "approve": "queued",
        "close": "stopped: Unroute CancelBuild",
        "redeploy": "queued: CancelBuild",
        "poke": "queued",
        "sleep": "queued",
        "wake": "queued",
        "build-started": "building",
        "built": "starting: Start",
        "build-failed": "failed: Unroute",
        "started": "queued: Discard",
        "start-failed": "queued",
        "suspended": "queued",
        "torn-down": "queued",
        "vanished": "queued",
        "adopt": "queued",
    },
    "building": {  # building
        "deploy-new": "building: CancelBuild",
        "deploy-same": "building",
        "deploy-fork": "building",
        "reopen": "building: CancelBuild",
        "deploy-full": "building: CancelBuild",
        "deny": "building: CancelBuild",
        "approve": "building",
        "close": "stopped: Unroute CancelBuild",
        "redeploy": "building: CancelBuild",
        "poke": "building",
        "sleep": "building",
        "wake": "building",
        "build-started": "building",
        "built": "starting: Start",
        "build-failed": "failed: Unroute",
        "started": "building: Discard",
        "start-failed": "building",
        "suspended": "building",
        "torn-down": "building",
        "vanished": "building",
        "adopt": "building",
    },
    "starting": {  # starting
        "deploy-new": "starting",
        "deploy-same": "starting",
        "deploy-fork": "starting",
        "reopen": "starting",
        "deploy-full": "starting",
        "deny": "starting",
        "approve": "starting",
        "close": "stopped: Unroute",
        "redeploy": "starting",
        "poke": "starting",
        "sleep": "starting",
        "wake": "starting",
        "build-started": "starting",
        "built": "starting",
        "build-failed": "starting",
        "started": "running: RouteTo",
        "start-failed": "failed: Unroute Discard",
        "suspended": "starting",
        "torn-down": "starting",
        "vanished": "starting",
        "adopt": "starting",
    },
    "running": {  # running
        "deploy-new": "queued: Build",
        "deploy-same": "running",
        "deploy-fork": "queued",
        "reopen": "queued: Build",
        "deploy-full": "queued: Build",
        "deny": "failed: Unroute Discard",
        "approve": "running",
        "close": "stopped: Unroute Teardown",
        "redeploy": "queued: Build",
        "poke": "running",
        "sleep": "sleeping: RouteAsleep Suspend",
        "wake": "running",
        "build-started": "running",
        "built": "running",
        "build-failed": "running",
        "started": "running: Discard",
        "start-failed": "running",
        "suspended": "running",
        "torn-down": "running",
        "vanished": "failed: Unroute Discard",
        "adopt": "running: Discard",
    },
    "suspending": {  # sleeping
        "deploy-new": "sleeping",
        "deploy-same": "sleeping",
        "deploy-fork": "sleeping",
        "reopen": "sleeping",
        "deploy-full": "sleeping",
        "deny": "sleeping: Unroute Discard",
        "approve": "sleeping",
        "close": "stopped: Unroute",
        "redeploy": "sleeping",
        "poke": "sleeping",
        "sleep": "sleeping",
        "wake": "sleeping",
        "build-started": "sleeping",
        "built": "sleeping",
        "build-failed": "sleeping",
        "started": "sleeping: Discard",
        "start-failed": "sleeping",
        "suspended": "sleeping",
        "torn-down": "sleeping",
        "vanished": "sleeping",
        "adopt": "sleeping: Discard",
    },
    "sleeping": {  # sleeping
        "deploy-new": "queued: Build",
        "deploy-same": "sleeping",
        "deploy-fork": "queued",
        "reopen": "queued: Build",
        "deploy-full": "queued: Build",
        "deny": "failed: Unroute Discard",
        "approve": "sleeping",
        "close": "stopped: Unroute Teardown",
        "redeploy": "queued: Build",
        "poke": "sleeping",
        "sleep": "sleeping",
        "wake": "starting: Resume",
        "build-started": "sleeping",
        "built": "sleeping",
        "build-failed": "sleeping",
        "started": "sleeping: Discard",
        "start-failed": "sleeping",
        "suspended": "sleeping",
        "torn-down": "sleeping",
        "vanished": "failed: Unroute Discard",
        "adopt": "sleeping: Discard",
    },
    "waking": {  # starting
        "deploy-new": "starting",
        "deploy-same": "starting",
        "deploy-fork": "starting",
        "reopen": "starting",
        "deploy-full": "starting",
        "deny": "starting: Unroute Discard",
        "approve": "starting",
        "close": "stopped: Unroute",
        "redeploy": "starting",
        "poke": "starting",
        "sleep": "starting",
        "wake": "starting",
        "build-started": "starting",
        "built": "starting",
        "build-failed": "starting",
        "started": "running: RouteTo",
        "start-failed": "failed: Unroute Discard",
        "suspended": "starting",
        "torn-down": "starting",
        "vanished": "starting",
        "adopt": "starting: Discard",
    },
    "failed": {  # failed
        "deploy-new": "queued: Build RouteBuilding",
        "deploy-same": "failed",
        "deploy-fork": "queued",
        "reopen": "queued: Build RouteBuilding",
        "deploy-full": "queued: Build RouteBuilding",
        "deny": "failed",
        "approve": "failed",
        "close": "stopped: Unroute Teardown",
        "redeploy": "queued: Build RouteBuilding",
        "poke": "failed",
        "sleep": "failed",
        "wake": "failed",
        "build-started": "failed",
        "built": "failed: Discard",
        "build-failed": "failed",
        "started": "failed: Discard",
        "start-failed": "failed",
        "suspended": "failed",
        "torn-down": "failed",
        "vanished": "failed",
        "adopt": "running: RouteTo",
    },
    "closing": {  # stopped
        "deploy-new": "stopped",
        "deploy-same": "stopped",
        "deploy-fork": "stopped",
        "reopen": "stopped",
        "deploy-full": "stopped",
        "deny": "stopped",
        "approve": "stopped",
        "close": "stopped",
        "redeploy": "stopped",
        "poke": "stopped",
        "sleep": "stopped",
        "wake": "stopped",
        "build-started": "stopped",
        "built": "stopped: Discard",
        "build-failed": "stopped",
        "started": "stopped: Discard",
        "start-failed": "stopped",
        "suspended": "stopped",
        "torn-down": "stopped",
        "vanished": "stopped",
        "adopt": "stopped",
    },
    "stopped": {  # stopped
        "deploy-new": "stopped",
        "deploy-same": "stopped",
        "deploy-fork": "stopped",
        "reopen": "queued: Build RouteBuilding",
        "deploy-full": "stopped",
        "deny": "stopped",
        "approve": "stopped",
        "close": "stopped",
        "redeploy": "stopped",
        "poke": "stopped",
        "sleep": "stopped",
        "wake": "stopped",
        "build-started": "stopped",
        "built": "stopped: Discard",
        "build-failed": "stopped",
        "started": "stopped: Discard",
        "start-failed": "stopped",
        "suspended": "stopped",
        "torn-down": "stopped",
        "vanished": "stopped",
        "adopt": "stopped: Discard Teardown",
    },
}

PAIRS = [(state, event) for state in STATES for event in EVENTS]
CREATES = (Build, Start, RouteTo, RouteBuilding, Resume)
JOBS = (Build, Start, Teardown, Suspend, Resume)


def describe(preview: Preview, effects: tuple[Effect, ...]) -> str:
    names = " ".join(type(effect).__name__ for effect in effects)
    return f"{preview.status}: {names}" if names else preview.status


def test_the_table_covers_every_state_and_event() -> None:
    """The expected table has a row for every state and a cell for every event."""
    assert set(EXPECTED) == set(STATES)
    for row in EXPECTED.values():
        assert set(row) == set(EVENTS)


@pytest.mark.parametrize(("state", "event"), PAIRS)
def test_transition(state: str, event: str) -> None:
    """Each (state, event) pair gives the expected status and effects."""
    result = transition(STATES[state], EVENTS[event])
    assert describe(result.state, result.effects) == EXPECTED[state][event]


@pytest.mark.parametrize(("state", "event"), PAIRS)
def test_nothing_is_created_for_a_closed_preview(state: str, event: str) -> None:
    """A closed preview never builds, starts, wakes or routes, whatever the event."""
    result = transition(STATES[state], EVENTS[event])
    if result.state.closed:
        assert not [effect for effect in result.effects if isinstance(effect, CREATES)]
        assert result.state.serving is None or not result.state.clean


@pytest.mark.parametrize(("state", "event"), PAIRS)
def test_at_most_one_job_in_flight(state: str, event: str) -> None:
    """A transition starts at most one job, and only when the new state records it."""
    result = transition(STATES[state], EVENTS[event])
    started = [effect for effect in result.effects if isinstance(effect, JOBS)]
    assert len(started) <= 1
    if started:
        assert result.state.job is not None


@pytest.mark.parametrize(("state", "event"), PAIRS)
def test_routes_only_go_to_the_serving_container(state: str, event: str) -> None:
    """RouteTo always names the deployment the new state serves."""
    result = transition(STATES[state], EVENTS[event])
    for effect in result.effects:
        if isinstance(effect, RouteTo):
            assert result.state.serving == effect.deployment


@pytest.mark.parametrize(("state", "event"), PAIRS)
def test_never_discards_what_serves(state: str, event: str) -> None:
    """Discard never names the serving container or image, nor the image a job uses."""
    result = transition(STATES[state], EVENTS[event])
    new = result.state
    in_use = set()
    if new.serving is not None:
        in_use |= {new.serving.container, new.serving.image}
    if new.job is not None and new.job.image:
        in_use.add(new.job.image)
    for effect in result.effects:
        if isinstance(effect, Discard):
            assert effect.container not in in_use or effect.container is None
            assert effect.image not in in_use or effect.image is None


@pytest.mark.parametrize(("state", "event"), PAIRS)
def test_unroute_comes_before_teardown(state: str, event: str) -> None:
    """Teardown is always preceded by the route removal in the same preview's history."""
    result = transition(STATES[state], EVENTS[event])
    kinds = [type(effect) for effect in result.effects]
    if Teardown in kinds and STATES[state].status != "stopped":
        assert Unroute in kinds[: kinds.index(Teardown)]


# --- scenarios -----------------------------------------------------------------


def run(state: Preview, *events: Event) -> tuple[Preview, list[Effect]]:
    effects: list[Effect] = []
    for event in events:
        result = transition(state, event)
        state = result.state
        effects.extend(result.effects)
    return state, effects


def started(revision: Revision, container: str, image: str) -> Started:
    return Started(Deployment(revision, container, image, "10.0.0.9", 8080))


def test_first_deploy_builds_starts_and_routes() -> None:
    """opened -> queued -> building -> starting -> running with the route switched."""
    state, effects = run(Preview(), Deploy(A, "main"))
    assert state.status == "queued"
    revision = state.target
    assert revision is not None
    assert effects == [Build(revision), RouteBuilding()]
    state, _ = run(state, BuildStarted(revision))
    assert state.status == "building"
    state, effects = run(state, Built(revision, "img1"))
    assert (state.status, effects) == ("starting", [Start(revision, "img1")])
    state, effects = run(state, started(revision, "c1", "img1"))
    assert state.status == "running"
    assert effects == [RouteTo(Deployment(revision, "c1", "img1", "10.0.0.9", 8080))]


def test_push_switches_then_discards_the_old_container() -> None:
    """synchronize: the new container is routed first, then the old one is discarded."""
    state = STATES["running"]
    state, effects = run(state, Deploy(B, "main"))
    revision = state.target
    assert revision is not None and revision.sha == B
    state, effects = run(
        state, BuildStarted(revision), Built(revision, "imgB"), started(revision, "cB", "imgB")
    )
    new = Deployment(revision, "cB", "imgB", "10.0.0.9", 8080)
    assert effects[-2:] == [RouteTo(new), Discard("cA", "imgA")]
    assert state.serving == new


def test_three_rapid_pushes_build_only_the_first_and_the_last() -> None:
    """Coalescing: B is never built; A's build is cancelled; C ends up serving."""
    state, effects = run(Preview(), Deploy(A, "main"))
    first = state.target
    assert first is not None
    state, more = run(state, BuildStarted(first), Deploy(B, "main"), Deploy(C, "main"))
    effects += more
    builds = [effect.revision.sha for effect in effects if isinstance(effect, Build)]
    assert builds == [A]
    assert CancelBuild(first) in effects
    state, effects = run(state, BuildFailed(first, "cancelled"))
    last = state.target
    assert last is not None and last.sha == C
    assert effects == [Build(last), RouteBuilding()]
    state, _ = run(state, BuildStarted(last), Built(last, "imgC"), started(last, "cC", "imgC"))
    assert state.status == "running"
    assert state.serving is not None and state.serving.revision.sha == C


def test_a_stale_build_that_completes_is_discarded_not_started() -> None:
    """A build that finishes after being superseded only leads to the next build."""
    state, _ = run(Preview(), Deploy(A, "main"))
    first = state.target
    assert first is not None
    state, effects = run(state, Deploy(B, "main"), Built(first, "imgA"))
    assert [type(effect) for effect in effects] == [CancelBuild, Discard, Build, RouteBuilding]
    assert not [effect for effect in effects if isinstance(effect, Start)]


def test_close_during_build_ends_with_a_teardown() -> None:
    """A pull request closed mid-build: cancel, then teardown; nothing is started."""
    state, _ = run(Preview(), Deploy(A, "main"))
    revision = state.target
    assert revision is not None
    state, effects = run(state, BuildStarted(revision), Close("closed"))
    assert effects == [Unroute(), CancelBuild(revision)]
    state, effects = run(state, Built(revision, "imgA"))
    assert effects == [Discard(image="imgA"), Teardown()]
    state, effects = run(state, TornDown())
    assert (state.status, state.clean, effects) == ("stopped", True, [])


def test_close_during_start_tears_down_the_new_container() -> None:
    """A container that comes up after the close is never routed."""
    state, _ = run(Preview(), Deploy(A, "main"))
    revision = state.target
    assert revision is not None
    state, _ = run(state, BuildStarted(revision), Built(revision, "imgA"), Close("closed"))
    state, effects = run(state, started(revision, "cA", "imgA"))
    assert effects == [Discard("cA", "imgA"), Teardown()]


def test_reopen_during_teardown_builds_after_it() -> None:
    """reopened while tearing down: the teardown finishes, then a new build starts."""
    state, _ = run(STATES["running"], Close("closed"), Deploy(B, "main", revive=True))
    assert state.status == "stopped"
    state, effects = run(state, TornDown())
    assert state.status == "queued"
    assert [type(effect) for effect in effects] == [Build, RouteBuilding]


def test_fork_waits_for_approval_pinned_to_its_sha() -> None:
    """Fork: waits; approval builds that SHA; a later push waits again."""
    state, effects = run(Preview(), Deploy(A, "fork", gate="approve"))
    assert (state.status, effects) == ("queued", [])
    assert state.detail is not None and "approve" in state.detail
    state, effects = run(state, Approve("maintainer"))
    assert state.approved == A
    assert [type(effect) for effect in effects] == [Build, RouteBuilding]
    revision = state.target
    assert revision is not None
    state, _ = run(state, BuildStarted(revision), Built(revision, "i"), started(revision, "c", "i"))
    state, effects = run(state, Deploy(B, "fork", gate="approve"))
    assert (state.status, effects) == ("queued", [])
    assert state.serving is not None and state.serving.revision.sha == A
    state, _ = run(state, Deploy(A, "fork", gate="approve"))
    assert state.awaiting is None and state.status == "running"


def test_a_failed_build_keeps_the_old_container_serving() -> None:
    """A push whose build fails leaves the previous deployment routed, status failed."""
    state, _ = run(STATES["running"], Deploy(B, "main"))
    revision = state.target
    assert revision is not None
    state, effects = run(state, BuildFailed(revision, ".prevu.toml: run.port: bad"))
    assert (state.status, effects) == ("failed", [])
    assert state.serving == DA
    assert state.detail == ".prevu.toml: run.port: bad"


def test_max_previews_refuses_with_a_clear_reason() -> None:
    """A new preview over the limit fails with a reason naming max_previews."""
    state, effects = run(Preview(), Deploy(A, "main", room=False, limit=3))
    assert (state.status, effects) == ("failed", [])
    assert state.error is not None and "max_previews (3)" in state.error


def test_redeploy_builds_the_same_sha_again() -> None:
    """Redeploy makes a new revision of the same SHA and builds it."""
    state, effects = run(STATES["running"], Redeploy())
    assert state.target is not None and state.target.sha == A
    assert state.target != RA
    assert [type(effect) for effect in effects] == [Build]


def test_sleep_and_wake() -> None:
    """Sleep stops the container and marks the route; a wake starts it again."""
    state, effects = run(STATES["running"], Sleep())
    assert [type(effect) for effect in effects] == [type(effects[0]), Suspend]
    state, _ = run(state, Suspended())
    assert state.status == "sleeping"
    state, effects = run(state, Wake())
    assert effects == [Resume(DA)]
    moved = Deployment(RA, "cA", "imgA", "10.0.0.7", 8080)
    state, effects = run(state, Started(moved))
    assert (state.status, effects) == ("running", [RouteTo(moved)])


def test_revision_rejects_a_bad_sha() -> None:
    """A Revision cannot hold something that is not a full hex SHA."""
    with pytest.raises(ValueError):
        Revision("not-a-sha")
