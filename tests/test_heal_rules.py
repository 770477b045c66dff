"""Self-healing (issue 15), pure: the heal rules, the Heal event, and the plan's use of them."""

from __future__ import annotations

import tomllib

import pytest
from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st

from prevu import lifecycle as lc
from prevu.config import default_config, parse_config
from prevu.errors import ConfigError
from prevu.orchestrator import OrchestratorSettings
from prevu.orchestrator.heal import (
    HealRules,
    Tally,
    decide,
    format_size,
    format_window,
    what_happened,
)
from prevu.orchestrator.reconcile import HealView, SlotView, plan
from prevu.ports import Managed
from prevu.runtime import Observed
from tests.test_lifecycle import DA, RA, STATES, describe
from tests.test_reconcile_plan import CONTAINER, IMAGE, INSTANCE, NETWORK, P

RULES = HealRules(limit=3, window=600.0)


def observed(state: str = "exited", **kwargs: object) -> Observed:
    return Observed(P, "app", "cA", state, **kwargs)  # type: ignore[arg-type]


# --- the rules --------------------------------------------------------------------


def test_sizes_and_windows_read_as_in_the_config() -> None:
    """512m, 1g, 10m: the error names the limit the way the config writes it."""
    assert [format_size(n) for n in (512 << 20, 1 << 30, 64 << 20, 1536, 1000)] == [
        "512m",
        "1g",
        "64m",
        "1536b",
        "1000b",
    ]
    assert [format_window(s) for s in (600, 90, 3600, 86400, 1.5)] == [
        "10m",
        "90s",
        "1h",
        "1d",
        "1.5s",
    ]


def test_what_happened_names_the_exit_code_and_out_of_memory() -> None:
    """Exit code, OOM kill with the memory limit, removal."""
    oom = observed(exit_code=137, oom_killed=True, memory=512 << 20)
    assert what_happened("c" * 64, oom) == (
        f"container {'c' * 12} exited with code 137: out of memory (limit 512m)"
    )
    assert what_happened("cA", observed(exit_code=3)) == "container cA exited with code 3"
    assert what_happened("cA", None) == "container cA was removed"


@pytest.mark.parametrize("state", ["running", "restarting", "paused"])
def test_a_running_or_restarting_container_is_left_alone(state: str) -> None:
    """prevu never restarts what runs or what the engine is restarting itself."""
    decision = decide("cA", observed(state, restart_count=2), Tally(), RULES, 10.0)
    assert decision.action == "leave"
    assert decision.tally.restarts == (10.0, 10.0), "the engine's restarts are counted"


def test_an_exited_container_is_restarted_and_a_removed_one_recreated() -> None:
    """Exited: restart; gone: recreate; both counted at `now`."""
    restart = decide("cA", observed(exit_code=137), Tally(), RULES, 5.0)
    assert (restart.action, restart.tally.restarts) == ("restart", (5.0,))
    assert restart.reason == "container cA exited with code 137; restarting it (1 of 3 within 10m)"
    recreate = decide("cA", None, Tally(), RULES, 5.0)
    assert recreate.action == "recreate" and "was removed; recreating it" in recreate.reason


def test_past_the_limit_within_the_window_it_gives_up_and_after_it_heals_again() -> None:
    """Three restarts in 10 minutes: the fourth gives up; 10 minutes later it restarts again."""
    tally = Tally()
    for now in (0.0, 60.0, 120.0):
        decision = decide("cA", observed(exit_code=1), tally, RULES, now)
        assert decision.action == "restart"
        tally = decision.tally
    gave_up = decide(
        "cA", observed(exit_code=1, oom_killed=True, memory=64 << 20), tally, RULES, 180.0
    )
    assert gave_up.action == "give-up"
    assert "out of memory (limit 64m)" in gave_up.reason
    assert "restarted 3 times within 10m (restart_limit 3): gave up" in gave_up.reason
    assert decide("cA", observed(exit_code=1), tally, RULES, 600.0).action == "restart"


def test_the_engines_own_restarts_count_towards_the_limit() -> None:
    """Docker gave up after on-failure:3 (RestartCount 3): prevu does not add a fourth."""
    decision = decide("cA", observed(exit_code=137, restart_count=3), Tally(), RULES, 1.0)
    assert decision.action == "give-up"


def test_a_limit_of_zero_never_restarts() -> None:
    """restart_limit = 0: the preview fails at once, saying why."""
    decision = decide("cA", None, Tally(), HealRules(limit=0), 1.0)
    assert decision.action == "give-up" and "restart_limit = 0" in decision.reason


def test_a_count_that_went_down_was_reset_by_a_start() -> None:
    """`docker start` resets RestartCount: what is seen after it counts from zero."""
    tally = Tally(counts={"cA": 3})
    assert tally.seen("cA", 1, 5.0).restarts == (5.0,)
    assert tally.seen("cA", 3, 5.0).restarts == ()


OBSERVATION = st.one_of(
    st.none(),
    st.builds(
        observed,
        st.sampled_from(["running", "exited", "restarting", "created", "dead"]),
        restart_count=st.integers(0, 4),
        exit_code=st.one_of(st.none(), st.integers(0, 255)),
        oom_killed=st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 400), OBSERVATION), max_size=30),
    st.integers(0, 4),
    st.sampled_from([60.0, 600.0]),
)
def test_prevu_never_restarts_more_than_the_limit_within_any_window(
    steps: list[tuple[float, Observed | None]], limit: int, window: float
) -> None:
    """Over any sequence of observations: prevu restarts at most `limit` times within any
    window, gives up only at the limit, and never touches a running container."""
    rules = HealRules(limit, window)
    tally, now, made = Tally(), 0.0, []
    for gap, seen in steps:
        now += gap
        decision = decide("cA", seen, tally, rules, now)
        recent = decision.tally.recent(now, window)
        if seen is not None and seen.state in ("running", "restarting"):
            assert decision.action == "leave"
        elif decision.action == "give-up":
            assert len(recent) >= limit
        else:
            assert decision.action in ("restart", "recreate") and len(recent) <= limit
            made.append(now)
        assert all(
            earlier <= later
            for earlier, later in zip(
                decision.tally.restarts, decision.tally.restarts[1:], strict=False
            )
        )
        tally = decision.tally
    for at in made:
        assert len([other for other in made if 0 <= at - other < window]) <= limit


# --- the lifecycle ------------------------------------------------------------------

HEAL = lc.Heal("cA", "container cA exited with code 137; restarting it")
RECREATE = lc.Heal("cA", "container cA was removed; recreating it", recreate=True)
# state -> (after HEAL, after RECREATE): "status: effects"
HEALED: dict[str, tuple[str, str]] = {
    "fresh": ("stopped", "stopped"),
    "awaiting": ("queued", "queued"),
    "queued": ("queued", "queued"),
    "building": ("building", "building"),
    "starting": ("starting", "starting"),
    "running": ("starting: RouteBuilding Resume", "starting: RouteBuilding Start"),
    "suspending": ("sleeping", "sleeping"),
    "sleeping": ("sleeping", "sleeping"),
    "waking": ("starting", "starting"),
    "failed": ("failed", "failed"),
    "closing": ("stopped", "stopped"),
    "stopped": ("stopped", "stopped"),
}


@pytest.mark.parametrize("name", sorted(STATES))
def test_heal_in_every_state(name: str) -> None:
    """Only an awake serving preview with no job heals; sleeping and closed ones never."""
    assert set(HEALED) == set(STATES)
    for event, expected in zip((HEAL, RECREATE), HEALED[name], strict=True):
        result = lc.transition(STATES[name], event)
        assert describe(result.state, result.effects) == expected
        if result.effects:
            assert result.state.error == event.reason


def test_a_healed_restart_serves_again_and_clears_the_error() -> None:
    """Heal -> starting with the error -> Started -> running at the new address, no error."""
    healing = lc.transition(STATES["running"], HEAL).state
    assert (healing.status, healing.error) == ("starting", HEAL.reason)
    moved = evolve(DA, address="10.0.0.7")
    result = lc.transition(healing, lc.Started(moved))
    assert (result.state.status, result.state.error, result.state.serving) == (
        "running",
        None,
        moved,
    )
    assert result.effects == (lc.RouteTo(moved),)


def test_a_restart_that_fails_fails_the_preview_with_both_reasons() -> None:
    """The container does not come back: failed, unrouted, what happened and why."""
    healing = lc.transition(STATES["running"], HEAL).state
    result = lc.transition(healing, lc.StartFailed(RA, "container exited before it was healthy"))
    assert result.state.status == "failed" and result.state.serving is None
    assert (
        result.state.error
        == f"{HEAL.reason}; could not restart: container exited before it was healthy"
    )
    assert lc.Unroute() in result.effects


def test_a_recreated_container_replaces_the_removed_one() -> None:
    """Recreate -> Started (a new container) -> running, the removed one discarded."""
    healing = lc.transition(STATES["running"], RECREATE).state
    assert healing.job == lc.Job("start", RA, image="imgA", started=True)
    new = evolve(DA, container="cB", address="10.0.0.8")
    result = lc.transition(healing, lc.Started(new))
    assert (result.state.status, result.state.serving, result.state.error) == ("running", new, None)
    assert result.effects == (lc.RouteTo(new), lc.Discard("cA", None))
    failed = lc.transition(healing, lc.StartFailed(RA, "No such image"))
    assert failed.state.status == "failed" and failed.state.serving is None
    assert "could not recreate: No such image" in (failed.state.error or "")


def test_vanished_with_a_reason_fails_with_it() -> None:
    """The plan's give-up reason becomes the preview's error."""
    result = lc.transition(STATES["running"], lc.Vanished("cA", "out of memory (limit 64m)"))
    assert (result.state.status, result.state.error) == ("failed", "out of memory (limit 64m)")


def test_the_same_container_at_a_new_address_is_routed_again() -> None:
    """After an engine restart the route follows the container's new address."""
    moved = evolve(DA, address="10.0.0.9")
    result = lc.transition(STATES["running"], lc.Adopt(moved))
    assert result.state.serving == moved and result.effects == (lc.RouteTo(moved),)
    asleep = lc.transition(STATES["sleeping"], lc.Adopt(moved))
    assert asleep.effects == () and asleep.state == STATES["sleeping"]


# --- the plan ----------------------------------------------------------------------------


def heal_view(
    *found: Observed, limit: int = 3, tallies: dict[str, Tally] | None = None
) -> HealView:
    return HealView({o.container: o for o in found}, tallies or {}, HealRules(limit, 600.0), 100.0)


def stopped_engine(state: str = "exited") -> Managed:
    return Managed((evolve(CONTAINER, state=state),), (NETWORK,), (IMAGE,))


def test_the_plan_heals_an_exited_or_removed_serving_container() -> None:
    """Exited -> Heal; removed -> Heal(recreate); the tally is kept for the next pass."""
    view = {P: SlotView(STATES["running"])}
    exited = plan(stopped_engine(), view, [], INSTANCE, heal_view(observed(exit_code=137)))
    ((preview, event),) = exited.events
    assert preview == P and isinstance(event, lc.Heal) and not event.recreate
    assert exited.tallies == {P: Tally((100.0,), {"cA": 0})}
    removed = plan(Managed((), (NETWORK,), (IMAGE,)), view, [], INSTANCE, heal_view())
    ((_, event),) = removed.events
    assert isinstance(event, lc.Heal) and event.recreate


def test_the_plan_gives_up_at_the_limit_and_leaves_what_the_engine_restarts() -> None:
    """Past the limit: Vanished with the reason; `restarting`: nothing; asleep: nothing."""
    view = {P: SlotView(STATES["running"])}
    oom = observed(exit_code=137, oom_killed=True, memory=64 << 20, restart_count=3)
    ((_, event),) = plan(stopped_engine(), view, [], INSTANCE, heal_view(oom)).events
    assert isinstance(event, lc.Vanished) and "out of memory (limit 64m)" in (event.reason or "")
    restarting = plan(
        stopped_engine("restarting"), view, [], INSTANCE, heal_view(observed("restarting"))
    )
    assert restarting.events == ()
    asleep = {P: SlotView(STATES["sleeping"])}
    assert plan(stopped_engine(), asleep, [], INSTANCE, heal_view(observed())).events == ()


def test_the_plan_counts_the_engines_restarts_of_a_running_container() -> None:
    """A container Docker restarted twice since the last pass: two restarts in the tally."""
    view = {P: SlotView(STATES["running"])}
    running = Managed((CONTAINER,), (NETWORK,), (IMAGE,))
    result = plan(running, view, [], INSTANCE, heal_view(observed("running", restart_count=2)))
    assert result.events == () and result.tallies == {P: Tally((100.0, 100.0), {"cA": 2})}


def test_the_plan_routes_a_running_container_found_at_a_new_address() -> None:
    """Same container, new address (the engine restarted it): Adopt, so the route follows."""
    moved = Managed((evolve(CONTAINER, networks={"prevu-pr-1-shop": "10.0.0.5"}),), (NETWORK,))
    result = plan(moved, {P: SlotView(STATES["running"])}, [], INSTANCE, heal_view())
    ((_, event),) = result.events
    assert event == lc.Adopt(evolve(DA, address="10.0.0.5"))
    asleep = plan(moved, {P: SlotView(STATES["sleeping"])}, [], INSTANCE, heal_view())
    assert asleep.events == ()


# --- the config ----------------------------------------------------------------------


def test_restart_limit_and_window_are_read_from_previews() -> None:
    """`[previews] restart_limit` and `restart_window`: defaults 3 and 10m, and set."""
    assert (default_config().previews.restart_limit, default_config().previews.restart_window) == (
        3,
        600.0,
    )
    text = '[previews]\nrestart_limit = 5\nrestart_window = "1h"\n'
    previews = parse_config(tomllib.loads(text)).previews
    assert (previews.restart_limit, previews.restart_window) == (5, 3600.0)
    settings = OrchestratorSettings.from_config(parse_config(tomllib.loads(text)), instance="i")
    assert (settings.restart_limit, settings.restart_window) == (5, 3600.0)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("restart_limit = -1", "previews.restart_limit", "at least 0"),
        ('restart_limit = "3"', "previews.restart_limit", "whole number"),
        ('restart_window = "0"', "previews.restart_window", "more than 0"),
        ('restart_window = "soon"', "previews.restart_window", ""),
    ],
)
def test_bad_restart_settings_name_the_key(text: str, key: str, reason: str) -> None:
    """A bad value stops start-up naming file, key and reason."""
    with pytest.raises(ConfigError) as raised:
        parse_config(tomllib.loads(f"[previews]\n{text}\n"), "/etc/prevu.toml")
    assert (raised.value.path, raised.value.key) == ("/etc/prevu.toml", key)
    assert reason in raised.value.reason


def test_a_container_listed_but_not_inspected_is_judged_as_listed() -> None:
    """Listed yet gone from observe() (it changed in between): never recreated in its place."""
    view = {P: SlotView(STATES["running"])}
    assert plan(stopped_engine("restarting"), view, [], INSTANCE, heal_view()).events == ()
    ((_, event),) = plan(stopped_engine(), view, [], INSTANCE, heal_view()).events
    assert isinstance(event, lc.Heal) and not event.recreate
