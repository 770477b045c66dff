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
- Compose previews (docs/compose.md), with `heal`: every other container of
  an awake, settled preview whose serving container runs is judged by the
  same rules and the same tally: its kept (`prevu.part = keep`) containers
  and those of the serving container's project. One that exited (but not
  with code 0 by itself: a one-shot service that finished), or that
  was seen at the last pass and is gone with no container of its service
  left in its project, gets `Heal` of the serving container (the resume
  job starts the stopped ones and creates the missing ones); past the limit
  `Vanished` with the service named (the runner adds that container's last
  lines: `Plan.culprits`). The part containers seen (`Plan.parts`) are what
  the next pass compares with.
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
from prevu.labels import PART, PROJECT, SERVICE, deployment_of, owned
from prevu.orchestrator.heal import WAITING, HealRules, Tally, decide
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
class PartSeen:
    """A Compose part container seen by a pass: its preview, service, project and part."""

    preview: str
    service: str
    project: str
    part: str


def _parts(value: Mapping[str, PartSeen] | None) -> dict[str, PartSeen]:
    return dict(value or {})


def _names(value: Mapping[str, str] | None) -> dict[str, str]:
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
    parts: Mapping[str, PartSeen] = field(factory=dict, converter=_parts)
    """The part containers (by id) the last pass saw (`Plan.parts`)."""


@frozen
class Plan:
    """
    The events to feed (preview, event) and then the orphans to remove, in
    order; with a `HealView`, the previews' tallies and the part containers
    seen to keep for the next pass, and per preview given up on for one of
    its part containers that container (whose last lines tell why).
    """

    events: tuple[tuple[str, lc.Event], ...] = ()
    removals: tuple[Removal, ...] = ()
    tallies: Mapping[str, Tally] = field(factory=dict, converter=_tallies)
    parts: Mapping[str, PartSeen] = field(factory=dict, converter=_parts)
    culprits: Mapping[str, str] = field(factory=dict, converter=_names)


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
    culprits: dict[str, str] = {}
    parts: dict[str, PartSeen] = {}
    if heal is not None:

        def part_lost(preview: str, part: PartSeen, container: str, state: str | None) -> None:
            """A part container of `preview` exited (`state`) or is gone (None): heal, or fail."""
            view = slots[preview]
            serving = view.state.serving
            assert serving is not None and heal is not None
            observed_part = heal.observations.get(container)
            if observed_part is None and state is not None:
                observed_part = Observed(preview, part.service, container, state)
            tally = heal.tallies.get(preview, Tally())
            decision = decide(container, observed_part, tally, heal.rules, heal.now)
            tallies[preview] = decision.tally
            reason = f"service {part.service}: {decision.reason}"
            if decision.action == "give-up":
                feed(preview, lc.Vanished(serving.container, reason))
                culprits[preview] = container
            elif decision.action in ("restart", "recreate"):
                feed(preview, lc.Heal(serving.container, reason))

        parts = _heal_parts(observed, slots, instance, heal, settled, part_lost)
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
    return Plan(
        tuple(events),
        tuple(removals),
        _kept(heal, tallies, slots, parts),
        {c: seen for c, seen in parts.items() if not _gone(slots.get(seen.preview))},
        culprits,
    )


def _heal_parts(
    observed: Managed,
    slots: Mapping[str, SlotView],
    instance: str,
    heal: HealView,
    settled: Callable[[str], lc.Preview | None],
    lost: Callable[[str, PartSeen, str, str | None], None],
) -> dict[str, PartSeen]:
    """
    Judge the part containers of every awake, settled Compose preview whose
    serving container runs (see the module docstring): call `lost` for the
    first one (by service) that exited, else for the first one seen at the
    last pass that is gone; answer the part containers to remember.
    """
    listed: dict[str, PartSeen] = {}
    states: dict[str, str] = {}
    heads: dict[str, str] = {}
    for container in observed.containers:
        preview = owned(container.labels, instance)
        if preview is None:
            continue
        part = container.labels.get(PART)
        if part:
            service = container.labels.get(SERVICE, container.name)
            project = container.labels.get(PROJECT, "")
            listed[container.id] = PartSeen(preview, service, project, part)
            states[container.id] = container.state
        elif container.running and PROJECT in container.labels:
            heads[container.id] = container.labels[PROJECT]
    remembered = {c: seen for c, seen in heal.parts.items() if c not in listed}
    present = {(seen.preview, seen.project, seen.service) for seen in listed.values()}
    keep = dict(listed)
    for gone_id, seen in remembered.items():
        view = slots.get(seen.preview)
        serving = view.state.serving if view is not None else None
        if serving is None or view is None or view.state.closed:
            continue
        if (seen.preview, seen.project, seen.service) in present:
            continue  # it was created again
        head = heads.get(serving.container)
        if (
            settled(seen.preview) is not None
            and head is not None
            and seen.part != "keep"
            and seen.project != head
        ):
            continue  # of an older revision, discarded
        keep[gone_id] = seen
    for preview in sorted(slots):
        state = settled(preview)
        if state is None or state.serving is None or state.asleep or state.closed:
            continue
        head = heads.get(state.serving.container)
        if head is None:
            continue

        def mine(seen: PartSeen, head: str = head, preview: str = preview) -> bool:
            return seen.preview == preview and (seen.part == "keep" or seen.project == head)

        order = sorted((seen.service, c) for c, seen in listed.items() if mine(seen))
        stopped = [c for _, c in order if states[c] not in WAITING and not _done(heal, c)]
        if stopped:
            lost(preview, listed[stopped[0]], stopped[0], states[stopped[0]])
            continue
        gone = sorted(
            (seen.service, c) for c, seen in keep.items() if c in remembered and mine(seen)
        )
        if gone:
            lost(preview, keep[gone[0][1]], gone[0][1], None)
    return keep


def _done(heal: HealView, container: str) -> bool:
    """
    True for a part container that exited by itself with code 0: a one-shot
    service (a migration) that finished, which Docker's `on-failure` policy
    does not restart either.
    """
    found = heal.observations.get(container)
    return (
        found is not None
        and found.state == "exited"
        and found.exit_code == 0
        and not found.oom_killed
    )


def _kept(
    heal: HealView | None,
    decided: Mapping[str, Tally],
    slots: Mapping[str, SlotView],
    parts: Mapping[str, PartSeen] | None = None,
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
        mine = {c for c, seen in (parts or {}).items() if seen.preview == preview}
        for container in sorted(mine):  # the engine's restarts of a Compose preview's parts
            observed = heal.observations.get(container)
            if observed is not None:
                tally = tally.seen(container, observed.restart_count, heal.now)
        containers = frozenset({serving.container, *mine})
        kept[preview] = tally.pruned(heal.now, heal.rules.window, containers)
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
