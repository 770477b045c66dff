"""
The driver: each preview's mailbox, and where the lifecycle's effects go.

Every event for a preview goes through `Driver.feed`: the pure transition
runs, the record is stored (and the watchers told), then the effects are
carried out *in order* - route changes on the route table at once, jobs
(build, start, suspend, resume, teardown) and discards as background tasks.
Events that arrive while a slot is busy (a fake adapter answering at once, a
job reporting) wait in the mailbox, so a preview's transitions never
interleave. Nothing here blocks the reactor or waits inside a web request.
Reactor thread only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from attrs import define, evolve, field
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from prevu import lifecycle as lc
from prevu.compose.write import service_host
from prevu.orchestrator import records
from prevu.orchestrator.jobs import Job, Jobs, failure_event
from prevu.orchestrator.metrics import Metrics
from prevu.orchestrator.registry import CancelToken, Slot
from prevu.orchestrator.settings import OrchestratorSettings
from prevu.ports import PreviewRecord, Store
from prevu.routing import Route, RouteRegistry, RouteState, Upstream

ROUTE_SOURCE = "previews"
Watcher = Callable[[PreviewRecord], None]


@define(eq=False)
class Driver:
    """Feeds slots, stores their records, and hands their effects to the jobs or the routes."""

    settings: OrchestratorSettings
    clock: Any
    routes: RouteRegistry
    store: Store
    jobs: Jobs
    metrics: Metrics
    log: Logger = field(factory=Logger)
    stopped: bool = False
    tasks: set[Deferred[Any]] = field(factory=set)
    _watchers: list[Watcher] = field(factory=list)
    _extra_hosts: dict[str, tuple[str, ...]] = field(factory=dict)
    """Compose previews: the hosts of `[compose] expose` services routed, per preview."""
    _forget_closed: dict[str, Any] = field(factory=dict)  # host -> the call dropping its page

    # --- watchers --------------------------------------------------------------------

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """Call `callback(record)` after each record is stored; returns the unsubscribe."""
        self._watchers.append(callback)

        def unsubscribe() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return unsubscribe

    def save(self, slot: Slot) -> None:
        """Store `slot`'s record now (a field outside the lifecycle changed: `keep_until`)."""
        self._store(slot)

    def _store(self, slot: Slot) -> None:
        record = records.encode(slot, self.settings)
        self.store.upsert(record)
        for watcher in list(self._watchers):
            try:
                watcher(record)
            except Exception:
                self.log.failure("record watcher failed for {preview}", preview=slot.id)

    # --- the mailbox --------------------------------------------------------------------

    def feed(self, slot: Slot, event: lc.Event) -> None:
        """Run `event` through the lifecycle and carry out its effects, one event at a time."""
        slot.mailbox.append(event)
        if slot.busy:
            return
        slot.busy = True
        try:
            while slot.mailbox:
                self._step(slot, slot.mailbox.popleft())
        finally:
            slot.busy = False

    def _step(self, slot: Slot, event: lc.Event) -> None:
        before = slot.state
        result = lc.transition(before, event)
        slot.state = result.state
        slot.epoch += 1
        if result.state != before:
            slot.updated_at = self.clock.seconds()
            self._store(slot)
        if result.state.status != before.status:
            detail = result.state.detail
            self.log.info(
                "preview {preview} {status} ({sha}){detail}",
                preview=slot.id,
                status=result.state.status,
                sha=(result.state.sha or "")[:12],
                detail=f": {detail}" if detail else "",
            )
            suffix = f": {detail}" if detail else ""
            self.jobs.note(slot, "system", f"status {result.state.status}{suffix}")
        for effect in result.effects:
            self._carry_out(slot, effect)
        self._publish_state(slot)

    def _carry_out(self, slot: Slot, effect: lc.Effect) -> None:
        jobs = self.jobs
        match effect:
            case lc.Build(revision=revision):
                self._job(slot, revision, jobs.build)
            case lc.CancelBuild(revision=revision):
                if slot.token is not None and slot.token.revision == revision:
                    jobs.note(slot, "system", f"cancelling the build of {revision.short}")
                    slot.token.cancel()
            case lc.Start(revision=revision, image=built):
                self._job(slot, revision, lambda s, c, r: jobs.start(s, c, built))
            case lc.RouteTo(deployment=deployment):
                self._route(slot, deployment, "ready")
                self.metrics.inc("prevu_deploys_total")
            case lc.RouteBuilding():
                self.routes.put(ROUTE_SOURCE, self._route_value(slot, None, "building"))
            case lc.RouteAsleep(deployment=deployment):
                self._route(slot, deployment, "sleeping")
            case lc.Unroute():
                self.routes.remove(ROUTE_SOURCE, slot.name.host)
                self._unroute_extra(slot)
            case lc.Discard(container=container, image=image):
                self.background(jobs.discard(slot, container, image))
            case lc.Suspend(deployment=deployment):
                revision = deployment.revision
                self._job(slot, revision, lambda s, c, r: jobs.suspend(s, c, deployment))
            case lc.Resume(deployment=deployment):
                revision = deployment.revision
                self._job(slot, revision, lambda s, c, r: jobs.resume(s, c, deployment))
            case lc.Teardown():
                # Route first: nothing reaches what is about to be removed.
                self.routes.remove(ROUTE_SOURCE, slot.name.host)
                self._unroute_extra(slot)
                self._job(slot, None, jobs.teardown)

    # --- routes ----------------------------------------------------------------------------

    def _route_value(
        self,
        slot: Slot,
        upstream: Upstream | None,
        state: RouteState,
        detail: str | None = None,
        since: float | None = None,
        commit: str | None = None,
    ) -> Route:
        repo = slot.identity.repo
        return Route(
            host=slot.name.host,
            upstream=upstream,
            access=slot.access,
            state=state,
            preview=slot.id,
            repo=repo,
            detail=detail,
            since=since,
            noindex=self.settings.repo_noindex.get(repo.lower(), True),
            commit=commit,
        )

    def _publish_state(self, slot: Slot) -> None:
        """
        Where no container serves the preview, put a route saying why, for the
        proxy's pages (`prevu.proxy.pages`): "building" while a job (build,
        start) is on its way, "awaiting" while a fork's commit waits for a
        maintainer's approval (`/preview approve`) and nothing is built,
        "failed" with its error, "closed" for `history` seconds after it was
        closed. A route with an upstream is left alone: a preview serving an
        approved commit keeps serving while a newer fork commit awaits.
        """
        host = slot.name.host
        current = self.routes.get(ROUTE_SOURCE, host)
        state = slot.state
        if current is not None and current.upstream is not None:
            return
        status = state.status
        wanted: Route | None
        if state.closed:
            if current is not None and current.state == "closed":
                return
            wanted = self._route_value(slot, None, "closed", since=slot.updated_at)
        elif status == "failed":
            wanted = self._route_value(slot, None, "failed", detail=state.error)
        elif state.job is not None:  # queued for a build slot, built or started
            wanted = self._route_value(slot, None, "building", detail=state.detail)
        elif state.awaiting is not None:
            wanted = self._route_value(slot, None, "awaiting", commit=state.awaiting.sha)
        else:
            wanted = None
        if wanted == current:
            return
        if wanted is None:
            self.routes.remove(ROUTE_SOURCE, host)
            return
        self.routes.put(ROUTE_SOURCE, wanted)
        if wanted.state == "closed":
            self._forget_later(wanted)

    def _forget_later(self, route: Route) -> None:
        """Drop a closed preview's route `history` seconds after the close."""
        delay = max(0.0, (route.since or 0.0) + self.settings.history - self.clock.seconds())
        previous = self._forget_closed.pop(route.host, None)
        if previous is not None and previous.active():
            previous.cancel()

        def forget() -> None:
            self._forget_closed.pop(route.host, None)
            if self.routes.get(ROUTE_SOURCE, route.host) is route:
                self.routes.remove(ROUTE_SOURCE, route.host)

        self._forget_closed[route.host] = self.clock.callLater(delay, forget)

    def _route(
        self, slot: Slot, deployment: lc.Deployment, state: Literal["ready", "sleeping"]
    ) -> None:
        upstream = Upstream(deployment.address, deployment.port)
        self.routes.put(ROUTE_SOURCE, self._route_value(slot, upstream, state))
        hosts = []
        for service, address, port in deployment.extra:
            host = service_host(service, slot.name.host)
            route = evolve(self._route_value(slot, Upstream(address, port), state), host=host)
            self.routes.put(ROUTE_SOURCE, route)
            hosts.append(host)
        for host in set(self._extra_hosts.get(slot.id, ())) - set(hosts):
            self.routes.remove(ROUTE_SOURCE, host)
        self._extra_hosts[slot.id] = tuple(hosts)

    def _unroute_extra(self, slot: Slot) -> None:
        for host in self._extra_hosts.pop(slot.id, ()):
            self.routes.remove(ROUTE_SOURCE, host)

    # --- jobs and background tasks ---------------------------------------------------------

    def _job(self, slot: Slot, revision: lc.Revision | None, body: Job) -> None:
        token = CancelToken(revision)
        slot.token = token

        def report(event: lc.Event) -> None:
            if not token.cancelled:
                self.feed(slot, event)

        async def run() -> None:
            try:
                event = await body(slot, token, report)
            except Exception as error:
                self.log.failure("job of preview {preview} crashed", preview=slot.id)
                event = failure_event(slot, revision, f"internal error: {error!r}")
            if slot.token is token:
                slot.token = None
            if self.stopped:
                # Shutting down: keep the stored state as it was, so that the
                # job is taken up again after the restart.
                return
            self.feed(slot, event)

        self.background(run())

    def background(self, coroutine: Awaitable[None]) -> None:
        """Run `coroutine` as a tracked task; its failure is logged, never raised."""
        deferred: Deferred[None] = ensureDeferred(coroutine)  # type: ignore[arg-type]
        if deferred.called:
            deferred.addErrback(lambda f: self.log.failure("background task", failure=f))
            return
        self.tasks.add(deferred)

        def done(result: object) -> None:
            self.tasks.discard(deferred)

        deferred.addErrback(lambda f: self.log.failure("background task", failure=f))
        deferred.addBoth(done)

    def stop(self, slots: list[Slot]) -> None:
        """Cancel the jobs in flight; their results are no longer fed."""
        self.stopped = True
        for call in self._forget_closed.values():
            if call.active():
                call.cancel()
        self._forget_closed.clear()
        for slot in slots:
            if slot.token is not None:
                slot.token.cancel()
