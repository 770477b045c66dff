"""Self-healing of every container of a Compose preview (issue 15), pure: the plan's rules."""

from __future__ import annotations

import pytest
from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st

from prevu import lifecycle as lc
from prevu.labels import PART, PROJECT, SERVICE
from prevu.orchestrator.heal import HealRules, Tally
from prevu.orchestrator.reconcile import HealView, PartSeen, Plan, SlotView, plan
from prevu.ports import ContainerInfo, Managed
from prevu.runtime import Observed
from tests.test_lifecycle import STATES
from tests.test_reconcile_plan import CONTAINER, IDENTITY, IMAGE, INSTANCE, NETWORK, P

HEAD = "prevu-pr-1-shop-a-1"
HEAD_CONTAINER = evolve(CONTAINER, labels={**CONTAINER.labels, PROJECT: HEAD})
PART_LABELS = IDENTITY.labels()


def part(
    cid: str, service: str, state: str = "running", kind: str = "revision", project: str = HEAD
) -> ContainerInfo:
    labels = {**PART_LABELS, PART: kind, PROJECT: project, SERVICE: service}
    return ContainerInfo(cid, f"{project}-{service}-1", "imgD", state, labels)


def engine(*parts: ContainerInfo) -> Managed:
    return Managed((HEAD_CONTAINER, *parts), (NETWORK,), (IMAGE,))


def view(
    *found: Observed,
    limit: int = 3,
    now: float = 100.0,
    tallies: dict[str, Tally] | None = None,
    parts: dict[str, PartSeen] | None = None,
) -> HealView:
    return HealView(
        {o.container: o for o in found}, tallies or {}, HealRules(limit, 600.0), now, parts or {}
    )


RUNNING = {P: SlotView(STATES["running"])}


def test_the_fixture_is_a_running_compose_preview() -> None:
    """Sanity: the part is owned by the preview, and all running gives no event."""
    result = plan(engine(part("cD", "db")), RUNNING, [], INSTANCE, view())
    assert result.events == () and result.removals == ()
    assert result.parts == {"cD": PartSeen(P, "db", HEAD, "revision")}


def test_an_exited_part_heals_the_preview_naming_the_service() -> None:
    """`docker kill` of the db: Heal of the serving container (its resume starts the db)."""
    killed = Observed(P, "db", "cD", "exited", exit_code=137)
    result = plan(engine(part("cD", "db", "exited")), RUNNING, [], INSTANCE, view(killed))
    ((preview, event),) = result.events
    assert preview == P and isinstance(event, lc.Heal)
    assert event.container == "cA" and not event.recreate
    assert event.reason.startswith("service db: container cD exited with code 137; restarting it")
    assert result.tallies == {P: Tally((100.0,), {"cD": 0})}


def test_a_one_shot_service_that_finished_is_left_alone() -> None:
    """Exit code 0 by itself (a migration): not restarted, as Docker's on-failure does."""
    done = Observed(P, "migrate", "cM", "exited", exit_code=0)
    result = plan(engine(part("cM", "migrate", "exited")), RUNNING, [], INSTANCE, view(done))
    assert result.events == ()


def test_a_removed_part_is_recreated_once_and_then_forgotten() -> None:
    """Seen at one pass, gone at the next: Heal; its service back with a new id: no event."""
    first = plan(engine(part("cD", "db")), RUNNING, [], INSTANCE, view())
    gone = plan(engine(), RUNNING, [], INSTANCE, view(parts=dict(first.parts)))
    ((_, event),) = gone.events
    assert isinstance(event, lc.Heal) and event.container == "cA"
    assert event.reason.startswith("service db: container cD was removed; recreating it")
    assert "cD" in gone.parts  # remembered until its service is back
    back = plan(engine(part("cE", "db")), RUNNING, [], INSTANCE, view(parts=dict(gone.parts)))
    assert back.events == ()
    assert back.parts == {"cE": PartSeen(P, "db", HEAD, "revision")}


def test_past_the_limit_the_preview_fails_with_the_service_and_out_of_memory() -> None:
    """The db OOM-killed after the engine's 3 restarts: Vanished, its logs are the culprit's."""
    oom = Observed(P, "db", "cD", "exited", 137, True, 3, 64 << 20)
    result = plan(engine(part("cD", "db", "exited")), RUNNING, [], INSTANCE, view(oom))
    ((_, event),) = result.events
    assert isinstance(event, lc.Vanished) and event.container == "cA"
    reason = event.reason or ""
    assert reason.startswith("service db: container cD exited with code 137: out of memory")
    assert "(limit 64m)" in reason and "gave up" in reason
    assert result.culprits == {P: "cD"}


def test_parts_of_an_older_revision_are_not_judged_and_kept_ones_are() -> None:
    """An exited container of another revision's project is not healed; a kept one is."""
    old = part("cO", "worker", "exited", project="prevu-pr-1-shop-0-1")
    stale = Observed(P, "worker", "cO", "exited", exit_code=1)
    assert plan(engine(old), RUNNING, [], INSTANCE, view(stale)).events == ()
    kept = part("cK", "db", "exited", kind="keep", project="prevu-pr-1-shop-keep")
    crashed = Observed(P, "db", "cK", "exited", exit_code=1)
    ((_, event),) = plan(engine(kept), RUNNING, [], INSTANCE, view(crashed)).events
    assert isinstance(event, lc.Heal) and "service db" in event.reason


@pytest.mark.parametrize("name", sorted(STATES))
def test_only_an_awake_settled_preview_without_a_job_is_healed(name: str) -> None:
    """Sleeping, closed, failed, building... previews: their parts are never healed."""
    killed = Observed(P, "db", "cD", "exited", exit_code=137)
    slots = {P: SlotView(STATES[name])}
    result = plan(engine(part("cD", "db", "exited")), slots, [], INSTANCE, view(killed))
    heals = [e for _, e in result.events if isinstance(e, lc.Heal | lc.Vanished)]
    assert bool(heals) == (name == "running")
    unsettled = {P: SlotView(STATES["running"], settled=False)}
    assert (
        plan(engine(part("cD", "db", "exited")), unsettled, [], INSTANCE, view(killed)).events == ()
    )


def test_the_engines_restarts_of_a_part_count_towards_the_limit() -> None:
    """A db Docker restarted twice since the last pass: two restarts in the preview's tally."""
    restarted = Observed(P, "db", "cD", "running", restart_count=2)
    result = plan(engine(part("cD", "db")), RUNNING, [], INSTANCE, view(restarted))
    assert result.events == () and result.tallies == {P: Tally((100.0, 100.0), {"cD": 2})}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["db", "cache"]), st.floats(1, 400)), max_size=12))
def test_parts_are_never_restarted_more_than_the_limit_within_the_window(
    kills: list[tuple[str, float]],
) -> None:
    """Any sequence of kills of any service, passes apart: at most `limit` heals per window."""
    limit, now, tallies, seen = 3, 0.0, {}, {}  # type: ignore[var-annotated]
    heals: list[float] = []
    for service, gap in kills:
        now += gap
        cid = f"c-{service}"
        killed = Observed(P, service, cid, "exited", exit_code=137)
        result: Plan = plan(
            engine(part(cid, service, "exited")),
            RUNNING,
            [],
            INSTANCE,
            view(killed, limit=limit, now=now, tallies=tallies, parts=seen),
        )
        tallies, seen = dict(result.tallies), dict(result.parts)
        heals += [now for _, e in result.events if isinstance(e, lc.Heal)]
        if any(isinstance(e, lc.Vanished) for _, e in result.events):
            break
    for at in heals:
        assert len([t for t in heals if at <= t < at + 600.0]) <= limit
