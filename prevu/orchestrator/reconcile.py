"""
The reconcile plan: what to do so that the engine and the previews agree.

Pure core (attrs, the lifecycle, the labels; no Twisted, no adapter):
`plan(observed, slots, workspaces, instance)` looks at what the runtime lists
(`list_owned`), the previews' states and the workspaces on disk, and answers
the events to feed and the objects to remove, in order. The runner
(`prevu.orchestrator.reconciler`) lists, plans, feeds and removes.

The rules, per object of this instance (another prevu's objects are never
touched):

- A running container that carries a deployment of a settled preview and is
  not what it serves is adopted (it serves: the route comes back after a
  restart). A stopped container of the wanted revision of a preview serving
  nothing is adopted asleep. The serving container, gone or stopped, marks
  its preview failed (`Vanished`) unless it sleeps.
- Containers, images and networks of unknown previews, or of closed previews
  that are clean, are orphans and are removed; so are containers no preview
  can use. An image is kept while its preview serves it, or may still use
  it (an asleep or failed preview: teardown removes it later).
- A workspace is removed unless its preview is building.
- With `heal` (issue 15, `prevu.orchestrator.heal`), the serving container
  of an awake preview that exited or is gone is not marked `Vanished` but
  started again (`Heal`), until the restart limit: then `Vanished` with
  the reason (the runner adds the last log lines). A container the engine
  is restarting itself is left alone. A running serving container found at
  another address (an engine restart) is adopted again: the route follows.
- A preview is *settled* when nothing happened to it while the engine was
  listed and no job runs; only settled previews get events, and a preview
  that gets an event is not settled for the rest of the plan (one event per
  preview per pass; the next pass sees the result).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from attrs import field, frozen

from prevu import lifecycle as lc
from prevu.labels import PART, PROJECT, deployment_of, owned
from prevu.orchestrator.heal import HealRules, Tally, decide
from prevu.ports import ContainerInfo, Managed
from prevu.runtime import Observed

ObjectKind = Literal["container", "image", "network", "workspace"]


@frozen
class SlotView:
    """A preview as the plan sees it: its state, and whether it is settled."""

    state: lc.Preview
    settled: bool = True


@frozen
class Removal:
    """An orphan to remove: a container or image id, a network or workspace name."""

    kind: ObjectKind
    name: str


def _tallies(value: Mapping[str, Tally] | None) -> dict[str, Tally]:
    return dict(value or {})


@frozen
class HealView:
    """
    What the heal rules need: the runtime's `observe()` by container id, each
    preview's `Tally` from the last pass, the rules, and now (the clock's seconds).
    """

    observations: Mapping[str, Observed] = field(factory=dict)
    tallies: Mapping[str, Tally] = field(factory=dict, converter=_tallies)
    rules: HealRules = field(factory=HealRules)
    now: float = 0.0


@frozen
class Plan:
    """
    The events to feed (preview, event) and then the orphans to remove, in
    order; with a `HealView`, the previews' tallies to keep for the next pass.
    """

    events: tuple[tuple[str, lc.Event], ...] = ()
    removals: tuple[Removal, ...] = ()
    tallies: Mapping[str, Tally] = field(factory=dict, converter=_tallies)


def _gone(view: SlotView | None) -> bool:
    """True when nothing may be kept for this preview (unknown, or closed and clean)."""
    if view is None:
        return True
    state = view.state
    return state.closed and state.clean and state.job is None


def plan(
    observed: Managed,
    slots: Mapping[str, SlotView],
    workspaces: Iterable[str],
    instance: str,
    heal: HealView | None = None,
) -> Plan:
    """What to feed and what to remove (see the module docstring for the rules)."""
    events: list[tuple[str, lc.Event]] = []
    removals: list[Removal] = []
    fed: set[str] = set()
    tallies: dict[str, Tally] = {}

    def settled(preview: str) -> lc.Preview | None:
        view = slots.get(preview)
        if view is None or not view.settled or preview in fed or view.state.job is not None:
            return None
        return view.state

    def feed(preview: str, event: lc.Event) -> None:
        events.append((preview, event))
        fed.add(preview)

    def lost(preview: str, container: str, listed: ContainerInfo | None = None) -> None:
        """The serving `container` of `preview` is stopped or gone: heal, or mark it."""
        if heal is None:
            feed(preview, lc.Vanished(container))
            return
        tally = heal.tallies.get(preview, Tally())
        observed = heal.observations.get(container)
        if observed is None and listed is not None:
            # Listed but not inspected (it changed in between): it exists, as listed.
            observed = Observed(preview, "", container, listed.state)
        decision = decide(container, observed, tally, heal.rules, heal.now)
        tallies[preview] = decision.tally
        if decision.action == "give-up":
            feed(preview, lc.Vanished(container, decision.reason))
        elif decision.action in ("restart", "recreate"):
            feed(preview, lc.Heal(container, decision.reason, decision.action == "recreate"))

    present: set[str] = set()
    removals += _compose_parts(observed, slots, instance, settled)
    for container in observed.containers:
        preview = owned(container.labels, instance)
        if preview is None or container.labels.get(PART):
            continue
        present.add(container.id)
        if _gone(slots.get(preview)):
            removals.append(Removal("container", container.id))
            continue
        state = settled(preview)
        if state is None:
            continue
        deployment = deployment_of(container, observed.containers)
        serving = state.serving
        if container.running and deployment is not None:
            if serving is None or serving.container != container.id:
                feed(preview, lc.Adopt(deployment))
            elif deployment.address not in (serving.address, "0.0.0.0") and not state.asleep:
                feed(preview, lc.Adopt(deployment))  # the engine restarted it elsewhere
        elif serving is not None and serving.container == container.id:
            if not state.asleep:
                lost(preview, container.id, container)
        elif serving is None and deployment is not None and not state.closed:
            if container.state == "restarting" and heal is not None:
                continue  # the engine's restart policy is on it: decide when it settles
            if container.state in ("exited", "created") and state.target == deployment.revision:
                # A stopped container of the wanted revision: treat as asleep.
                feed(preview, lc.Adopt(deployment, asleep=True))
            else:
                removals.append(Removal("container", container.id))
        else:
            removals.append(Removal("container", container.id))
    for preview in slots:
        state = settled(preview)
        if state is None or state.serving is None:
            continue
        if state.serving.container not in present:
            if state.asleep or heal is None:
                feed(preview, lc.Vanished(state.serving.container))
            else:
                lost(preview, state.serving.container)
    projects = {c.labels.get(PROJECT) for c in observed.containers} - {None}
    for image in observed.images:
        preview = owned(image.labels, instance)
        if preview is None or image.labels.get(PROJECT) in projects:
            continue  # a Compose service's image while its project has containers
        view = slots.get(preview)
        if view is not None and settled(preview) is None:
            continue
        serving = view.state.serving if view else None
        if serving is not None and serving.image == image.id:
            continue
        if view is not None and not view.state.closed and serving is None:
            continue  # an asleep or failed preview may still use it; teardown removes it
        removals.append(Removal("image", image.id))
    for network in observed.networks:
        preview = owned(network.labels, instance)
        if preview is not None and _gone(slots.get(preview)):
            removals.append(Removal("network", network.name))
    for workspace in workspaces:
        view = slots.get(workspace)
        job = view.state.job if view is not None else None
        if (job is None or job.kind != "build") and workspace not in fed:
            removals.append(Removal("workspace", workspace))
    return Plan(tuple(events), tuple(removals), _kept(heal, tallies, slots))


def _kept(
    heal: HealView | None, decided: Mapping[str, Tally], slots: Mapping[str, SlotView]
) -> dict[str, Tally]:
    """
    The tallies for the next pass: the ones decided now, else last pass's
    with the engine's restart counts of running serving containers added;
    pruned to the window and to previews that still serve.
    """
    if heal is None:
        return {}
    kept: dict[str, Tally] = {}
    for preview, view in slots.items():
        serving = view.state.serving
        if serving is None or view.state.closed:
            continue
        tally = decided.get(preview)
        if tally is None:
            tally = heal.tallies.get(preview, Tally())
            observed = heal.observations.get(serving.container)
            if observed is not None:
                tally = tally.seen(serving.container, observed.restart_count, heal.now)
        kept[preview] = tally.pruned(heal.now, heal.rules.window, frozenset({serving.container}))
    return {preview: tally for preview, tally in kept.items() if tally != Tally()}
def _compose_parts(
    observed: Managed,
    slots: Mapping[str, SlotView],
    instance: str,
    settled: Callable[[str], lc.Preview | None],
) -> list[Removal]:
    """
    Compose previews (docs/compose.md): a container labelled `prevu.part`
    follows its preview, not a deployment. It is removed when its preview is
    gone, or (a "revision" part of a settled preview) when no container with
    a deployment of its Compose project is left (a revision that never served).
    """
    heads = {
        c.labels.get(PROJECT)
        for c in observed.containers
        if not c.labels.get(PART) and deployment_of(c) is not None
    }
    removals = []
    for container in observed.containers:
        preview = owned(container.labels, instance)
        part = container.labels.get(PART)
        if preview is None or not part:
            continue
        if _gone(slots.get(preview)) or (
            part == "revision"
            and settled(preview) is not None
            and container.labels.get(PROJECT) not in heads
        ):
            removals.append(Removal("container", container.id))
    return removals
