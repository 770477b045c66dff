"""
The preview lifecycle's rules: `transition(state, event)` and the handlers behind it.

Pure core, no I/O and no clock. `transition(state, event)` returns the new
state and the *effects* (as data) that the orchestrator must carry out:
build an image, start a container, switch the route, tear everything down.
The results of those effects come back as events (`Built`, `Started`, ...).

The rules that make previews trustworthy live here, so that they can be
tested for every (state, event) pair:

- At most one job (build, start, teardown, suspend, resume) is in flight per
  preview: this *is* the per-preview serialized queue. A newer commit
  replaces the `target` (coalescing: queued commits that were never started
  are simply forgotten) and cancels a build in flight; when a job ends, the
  machine starts the next one only for the *current* target.
- Results of a superseded job are discarded, never routed.
- Once closed, nothing is created: a build or start that completes after the
  close only leads to a teardown. Teardown removes the route first.
- The route switches only to a started (healthy) container, and the old
  container is discarded after the switch (zero downtime).
- A fork pull request under `forks = "approve"` waits in `awaiting`; an
  approval pins the SHA it saw, and a later push waits again.

The status reported to users (`queued`, `building`, `starting`, `running`,
`sleeping`, `failed`, `stopped`) is derived from the state, never stored
separately, so it cannot disagree with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import evolve

from prevu.lifecycle.states import (
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
    Heal,
    Job,
    JobKind,
    Poke,
    Preview,
    Redeploy,
    Resume,
    Revision,
    RouteAsleep,
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
    Transition,
    Unroute,
    Vanished,
    Wake,
)


def transition(state: Preview, event: Event) -> Transition:
    """The state after `event`, and what must be done."""
    new, effects = _handle(state, event)
    new, more = _advance(new)
    return Transition(new, _keep_in_use(new, (*effects, *more)))


def _keep_in_use(state: Preview, effects: Sequence[Effect]) -> tuple[Effect, ...]:
    """Never discard what serves or what the job in flight uses, whatever asked for it."""
    in_use: set[str] = set()
    if state.serving is not None:
        in_use |= {state.serving.container, state.serving.image}
    if state.job is not None and state.job.image is not None:
        in_use.add(state.job.image)
    kept: list[Effect] = []
    for effect in effects:
        if isinstance(effect, Discard):
            container = effect.container if effect.container not in in_use else None
            image = effect.image if effect.image not in in_use else None
            if container is None and image is None:
                continue
            effect = Discard(container, image)
        kept.append(effect)
    return tuple(kept)


Step = tuple[Preview, Sequence[Effect]]


def _advance(state: Preview) -> Step:
    """Start the next job when none is in flight."""
    if state.job is not None:
        return state, ()
    if state.closed:
        if state.clean:
            return state, ()
        return evolve(state, job=Job("teardown")), (Teardown(),)
    target = state.target
    if target is None or state.failed == target:
        return state, ()
    if state.serving is not None and state.serving.revision == target:
        return state, ()
    building = evolve(state, job=Job("build", target), clean=False)
    effects: list[Effect] = [Build(target)]
    if state.serving is None:
        effects.append(RouteBuilding())
    return building, effects


def _next_revision(state: Preview, sha: str, branch: str) -> Revision:
    serials = [r.serial for r in (state.target, state.awaiting, state.failed) if r is not None]
    if state.serving is not None:
        serials.append(state.serving.revision.serial)
    return Revision(sha, branch, max(serials, default=0) + 1)


def _cancel_build(state: Preview) -> list[Effect]:
    job = state.job
    if job is not None and job.kind == "build" and job.revision is not None:
        return [CancelBuild(job.revision)]
    return []


def _on_deploy(state: Preview, event: Deploy) -> Step:
    if state.closed and not event.revive:
        return state, ()
    if state.closed:
        state = evolve(state, closed=False, failed=None, error=None, note=None)
    if event.gate == "approve" and event.sha != state.approved:
        if state.awaiting is not None and state.awaiting.sha == event.sha:
            return state, ()
        return evolve(state, awaiting=_next_revision(state, event.sha, event.branch)), ()
    state = evolve(state, awaiting=None)
    if state.target is not None and state.target.sha == event.sha:
        return state, ()
    revision = _next_revision(state, event.sha, event.branch)
    if not event.room and not state.active and state.clean:
        reason = (
            f"max_previews ({event.limit}) reached: close or delete another preview, "
            "then push or redeploy"
        )
        return evolve(state, target=revision, failed=revision, error=reason), ()
    effects = _cancel_build(state)
    return evolve(state, target=revision, error=None, note=None), effects


def _on_deny(state: Preview, event: Deny) -> Step:
    if state.closed:
        return state, ()
    revision = _next_revision(state, event.sha, event.branch)
    effects: list[Effect] = _cancel_build(state)
    if state.serving is not None:
        effects += [Unroute(), Discard(state.serving.container, state.serving.image)]
    new = evolve(
        state, target=revision, failed=revision, error=event.reason, awaiting=None, serving=None
    )
    return new, effects


def _on_approve(state: Preview, event: Approve) -> Step:
    awaiting = state.awaiting
    if awaiting is None or state.closed:
        return state, ()
    approved = evolve(
        state,
        target=awaiting,
        awaiting=None,
        approved=awaiting.sha,
        failed=None,
        error=None,
        note=f"approved by {event.by}",
    )
    return approved, _cancel_build(state)


def _on_close(state: Preview, event: Close) -> Step:
    if state.closed:
        return state, ()
    effects: list[Effect] = [Unroute(), *_cancel_build(state)]
    return evolve(state, closed=True, awaiting=None, note=event.reason, asleep=False), effects


def _on_redeploy(state: Preview) -> Step:
    target = state.target
    if state.closed or target is None:
        return state, ()
    revision = _next_revision(state, target.sha, target.branch)
    effects = _cancel_build(state)
    return evolve(state, target=revision, failed=None, error=None, note=None), effects


def _on_sleep(state: Preview) -> Step:
    serving = state.serving
    if state.status != "running" or serving is None:
        return state, ()
    return evolve(state, job=Job("suspend", serving.revision)), (
        RouteAsleep(serving),
        Suspend(serving),
    )


def _on_wake(state: Preview) -> Step:
    serving = state.serving
    if not state.asleep or state.job is not None or state.closed or serving is None:
        return state, ()
    return evolve(state, job=Job("resume", serving.revision)), (Resume(serving),)


def _is_job(state: Preview, kind: JobKind, revision: Revision | None = None) -> bool:
    job = state.job
    return job is not None and job.kind == kind and (revision is None or job.revision == revision)


def _on_build_started(state: Preview, event: BuildStarted) -> Step:
    if not _is_job(state, "build", event.revision):
        return state, ()
    return evolve(state, job=Job("build", event.revision, started=True)), ()


def _on_built(state: Preview, event: Built) -> Step:
    if not _is_job(state, "build", event.revision):
        return state, (Discard(image=event.image),)
    state = evolve(state, job=None)
    if state.closed or event.revision != state.target:
        return state, (Discard(image=event.image),)
    job = Job("start", event.revision, image=event.image, started=True)
    return evolve(state, job=job), (Start(event.revision, event.image),)


def _failed(state: Preview, revision: Revision, reason: str) -> Step:
    state = evolve(state, job=None)
    if state.closed or revision != state.target:
        return state, ()
    effects: list[Effect] = [] if state.serving is not None else [Unroute()]
    return evolve(state, failed=revision, error=reason, held=False), effects


def _on_build_failed(state: Preview, event: BuildFailed) -> Step:
    if not _is_job(state, "build", event.revision):
        return state, ()
    return _failed(state, event.revision, event.reason)


def _on_started(state: Preview, event: Started) -> Step:
    deployment = event.deployment
    discard_new = Discard(deployment.container, deployment.image)
    if _is_job(state, "resume", deployment.revision):
        state = evolve(state, job=None, asleep=False)
        if state.closed or state.serving is None:
            return state, (discard_new,)
        if state.failed != state.target:
            state = evolve(state, error=None)  # healed: what happened is over
        return evolve(state, serving=deployment), (RouteTo(deployment),)
    if not _is_job(state, "start", deployment.revision):
        return state, (discard_new,)
    state = evolve(state, job=None)
    if state.closed or deployment.revision != state.target:
        return state, (discard_new,)
    effects: list[Effect] = [RouteTo(deployment)]
    old = state.serving
    if old is not None and old.container != deployment.container:
        image = old.image if old.image != deployment.image else None
        effects.append(Discard(old.container, image))
    new = evolve(state, serving=deployment, failed=None, error=None, asleep=False, held=False)
    return new, effects


def _on_start_failed(state: Preview, event: StartFailed) -> Step:
    serving = state.serving
    if _is_job(state, "resume", event.revision) and serving is not None:
        gone = evolve(state, job=None, serving=None, asleep=False, failed=state.target)
        dropped = (Unroute(), Discard(serving.container, serving.image))
        if state.asleep:
            return evolve(gone, error=f"could not wake: {event.reason}"), dropped
        before = f"{state.error}; " if state.error else ""
        return evolve(gone, error=f"{before}could not restart: {event.reason}"), dropped
    if not _is_job(state, "start", event.revision):
        return state, ()
    if serving is not None and serving.revision == event.revision:
        # A heal's new container of what served (it was removed) did not start.
        gone = evolve(state, job=None, serving=None, asleep=False, failed=event.revision)
        before = f"{state.error}; " if state.error else ""
        error = f"{before}could not recreate: {event.reason}"
        return evolve(gone, error=error), (Unroute(), Discard(serving.container, serving.image))
    image = state.job.image if state.job is not None else None
    new, effects = _failed(state, event.revision, event.reason)
    # A failed on_push (migration) keeps the previous revision serving, status running.
    held = event.on_push and new.serving is not None and new.failed == event.revision
    new = evolve(new, held=held)
    if image is None:
        return new, effects
    return new, (*effects, Discard(image=image))


def _on_suspended(state: Preview) -> Step:
    if not _is_job(state, "suspend"):
        return state, ()
    return evolve(state, job=None, asleep=True), ()


def _on_torn_down(state: Preview) -> Step:
    if not _is_job(state, "teardown"):
        return state, ()
    return evolve(state, job=None, clean=True, serving=None, asleep=False), ()


def _on_vanished(state: Preview, event: Vanished) -> Step:
    serving = state.serving
    if serving is None or serving.container != event.container or state.job is not None:
        return state, ()
    reason = event.reason or f"container {serving.container[:12]} vanished or stopped"
    new = evolve(state, serving=None, asleep=False, failed=state.target, error=reason)
    return new, (Unroute(), Discard(serving.container, serving.image))


def _on_adopt(state: Preview, event: Adopt) -> Step:
    deployment = event.deployment
    if state.serving is not None:
        if state.serving.container == deployment.container:
            return _readdressed(state, deployment)
        return state, (Discard(deployment.container),)
    if state.job is not None:
        # The container may be the one an in-flight start is bringing up.
        return state, ()
    if state.closed:
        return evolve(state, clean=False), (Discard(deployment.container),)
    target = state.target
    failed, error = state.failed, state.error
    if target is None or target.sha == deployment.revision.sha:
        # The container is what was wanted: it serves, whatever failed before.
        target, failed, error = deployment.revision, None, None
    new = evolve(
        state,
        serving=deployment,
        target=target,
        failed=failed,
        error=error,
        asleep=event.asleep,
        clean=False,
    )
    route: Effect = RouteAsleep(deployment) if event.asleep else RouteTo(deployment)
    return new, (route,)


def _readdressed(state: Preview, deployment: Deployment) -> Step:
    """
    The serving container runs at another address (the engine restarted it,
    e.g. after a daemon restart): route to the new one, unless it sleeps or a
    job is in flight.
    """
    serving = state.serving
    if serving is None or state.asleep or state.job is not None or state.closed:
        return state, ()
    if deployment.address in ("", "0.0.0.0") or serving.address == deployment.address:
        return state, ()
    moved = evolve(serving, address=deployment.address)
    return evolve(state, serving=moved), (RouteTo(moved),)


def _on_heal(state: Preview, event: Heal) -> Step:
    """
    Start the serving container again (issue 15): `resume` it, or, when it
    was removed, `start` a new one from its image. Only what serves and is
    awake, with no job in flight; a removed container of an older revision
    than the target (a newer build failed) cannot be recreated as the
    target: the preview fails as `Vanished` says.
    """
    serving = state.serving
    if serving is None or serving.container != event.container:
        return state, ()
    if state.job is not None or state.asleep or state.closed:
        return state, ()
    failed = state.failed is not None and state.failed == state.target
    error = state.error if failed else event.reason
    if not event.recreate:
        return evolve(state, job=Job("resume", serving.revision), error=error), (
            RouteBuilding(),
            Resume(serving),
        )
    if serving.revision != state.target:
        return _on_vanished(state, Vanished(serving.container, event.reason))
    job = Job("start", serving.revision, image=serving.image, started=True)
    return evolve(state, job=job, error=error), (
        RouteBuilding(),
        Start(serving.revision, serving.image),
    )


def _handle(state: Preview, event: Event) -> Step:
    match event:
        case Deploy():
            return _on_deploy(state, event)
        case Deny():
            return _on_deny(state, event)
        case Approve():
            return _on_approve(state, event)
        case Close():
            return _on_close(state, event)
        case Redeploy():
            return _on_redeploy(state)
        case Poke():
            return state, ()
        case Sleep():
            return _on_sleep(state)
        case Wake():
            return _on_wake(state)
        case BuildStarted():
            return _on_build_started(state, event)
        case Built():
            return _on_built(state, event)
        case BuildFailed():
            return _on_build_failed(state, event)
        case Started():
            return _on_started(state, event)
        case StartFailed():
            return _on_start_failed(state, event)
        case Suspended():
            return _on_suspended(state)
        case TornDown():
            return _on_torn_down(state)
        case Vanished():
            return _on_vanished(state, event)
        case Adopt():
            return _on_adopt(state, event)
        case Heal():
            return _on_heal(state, event)
