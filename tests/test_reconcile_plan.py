"""The pure reconcile plan: every lifecycle state against what the engine lists."""

from __future__ import annotations

import pytest
from attrs import evolve

from prevu import lifecycle as lc
from prevu.labels import Identity
from prevu.orchestrator.reconcile import Plan, Removal, SlotView, plan
from prevu.ports import ContainerInfo, ImageInfo, Managed, NetworkInfo
from tests.test_lifecycle import DA, RA, STATES

INSTANCE = "inst"
P = "pr-1-shop"
IDENTITY = Identity(INSTANCE, P, "acme/shop", 1, "github")
CONTAINER = ContainerInfo(
    "cA", "prevu-pr-1-shop-a-1", "imgA", "running",
    IDENTITY.container_labels(RA, "pr-1-shop.localhost", 8080, "imgA"),
    {"prevu-pr-1-shop": "10.0.0.2"},
)
IMAGE = ImageInfo("imgA", ("prevu/pr-1-shop:a-1",), IDENTITY.labels())
NETWORK = NetworkInfo("n1", "prevu-pr-1-shop", IDENTITY.labels())
RUNNING = Managed((CONTAINER,), (NETWORK,), (IMAGE,))
STOPPED = Managed((evolve(CONTAINER, state="exited"),), (NETWORK,), (IMAGE,))

WS = Removal("workspace", P)
GONE = (Removal("container", "cA"), Removal("image", "imgA"), Removal("network", NETWORK.name))

# state -> (events, removals) with the serving container running and a workspace on disk
WITH_RUNNING: dict[str, tuple[tuple[lc.Event, ...], tuple[Removal, ...]]] = {
    "fresh": ((lc.Adopt(DA),), ()),
    "awaiting": ((lc.Adopt(DA),), ()),
    "queued": ((), ()),
    "building": ((), ()),
    "starting": ((), (WS,)),
    "running": ((), (WS,)),
    "suspending": ((), (WS,)),
    "sleeping": ((), (WS,)),
    "waking": ((), (WS,)),
    "failed": ((lc.Adopt(DA),), ()),
    "closing": ((), (WS,)),
    "stopped": ((), (*GONE, WS)),
}
# state -> events when the engine lists nothing at all
WITH_NOTHING: dict[str, tuple[lc.Event, ...]] = {
    name: (lc.Vanished("cA"),) if name in ("running", "sleeping") else () for name in STATES
}
# state -> (events, removals) with the container stopped and no workspace
WITH_STOPPED: dict[str, tuple[tuple[lc.Event, ...], tuple[Removal, ...]]] = {
    "fresh": ((), (Removal("container", "cA"),)),
    "awaiting": ((), (Removal("container", "cA"),)),
    "queued": ((), ()),
    "building": ((), ()),
    "starting": ((), ()),
    "running": ((lc.Vanished("cA"),), ()),
    "suspending": ((), ()),
    "sleeping": ((), ()),
    "waking": ((), ()),
    "failed": ((lc.Adopt(DA, asleep=True),), ()),
    "closing": ((), ()),
    "stopped": ((), GONE),
}


def test_the_tables_cover_every_lifecycle_state() -> None:
    """No state is left out of any table."""
    assert set(WITH_RUNNING) == set(WITH_NOTHING) == set(WITH_STOPPED) == set(STATES)


def _events(result: Plan) -> tuple[lc.Event, ...]:
    assert all(preview == P for preview, _ in result.events)
    return tuple(event for _, event in result.events)


@pytest.mark.parametrize("name", sorted(STATES))
def test_plan_with_the_container_running(name: str) -> None:
    """A running labelled container: adopted, kept, or an orphan, by state."""
    result = plan(RUNNING, {P: SlotView(STATES[name])}, [P], INSTANCE)
    assert (_events(result), result.removals) == WITH_RUNNING[name]


@pytest.mark.parametrize("name", sorted(STATES))
def test_plan_with_nothing_listed(name: str) -> None:
    """Nothing in the engine: what served has vanished (asleep or not); nothing to remove."""
    result = plan(Managed(), {P: SlotView(STATES[name])}, [], INSTANCE)
    assert (_events(result), result.removals) == (WITH_NOTHING[name], ())


@pytest.mark.parametrize("name", sorted(STATES))
def test_plan_with_the_container_stopped(name: str) -> None:
    """A stopped container: asleep if it is the wanted revision, else vanished or an orphan."""
    result = plan(STOPPED, {P: SlotView(STATES[name])}, [], INSTANCE)
    assert (_events(result), result.removals) == WITH_STOPPED[name]


@pytest.mark.parametrize("name", sorted(STATES))
def test_an_unsettled_preview_gets_no_event(name: str) -> None:
    """A preview that changed while the engine was listed is left for the next pass."""
    result = plan(RUNNING, {P: SlotView(STATES[name], settled=False)}, [], INSTANCE)
    assert result.events == ()


def test_unknown_previews_objects_are_orphans_and_foreign_ones_are_left() -> None:
    """Objects of a preview nobody knows go; another instance's objects stay."""
    foreign = evolve(CONTAINER, id="other", labels={**CONTAINER.labels, "prevu.instance": "x"})
    observed = Managed((CONTAINER, foreign), (NETWORK,), (IMAGE,))
    result = plan(observed, {}, ["pr-9-gone"], INSTANCE)
    assert result.events == ()
    assert result.removals == (*GONE, Removal("workspace", "pr-9-gone"))


def test_one_event_per_preview_per_pass() -> None:
    """Two running containers for a preview serving nothing: only the first is adopted."""
    second = evolve(CONTAINER, id="cB")
    observed = Managed((CONTAINER, second), (), ())
    result = plan(observed, {P: SlotView(lc.Preview(target=RA, clean=False))}, [], INSTANCE)
    assert result.events == ((P, lc.Adopt(DA)),)
    assert result.removals == ()
