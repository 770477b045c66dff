"""
The orchestrator's facade: requests in (webhooks, API, proxy, idle), previews out.

`Orchestrator` turns decisions and API calls into lifecycle events for the
driver (`driver.py`: mailbox, effects), answers queries from the registry
(`registry.py`), restores previews from the store (`records.py`) and runs the
reconciler (`reconciler.py`, planned by the pure `reconcile.py`); the jobs
(`jobs.py`) do the git and runtime work. It is configured by an
`OrchestratorSettings` value, not the whole config. Nothing here waits for
git or the engine; reactor thread only. See docs/orchestrator.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from attrs import define, field, frozen
from twisted.logger import Logger

from prevu import lifecycle as lc
from prevu.config import RepoConfig
from prevu.errors import GitError
from prevu.forge import policy
from prevu.forge.events import PullRequest
from prevu.orchestrator import data, records
from prevu.orchestrator.driver import ROUTE_SOURCE, Driver, Watcher
from prevu.orchestrator.jobs import Jobs
from prevu.orchestrator.keeping import Keeping
from prevu.orchestrator.metrics import Metrics
from prevu.orchestrator.reconciler import Reconciler
from prevu.orchestrator.registry import Registry, Slot
from prevu.orchestrator.settings import OrchestratorSettings
from prevu.ports import Git, GitSource, PreviewRecord, Store
from prevu.routing import Route, RouteRegistry
from prevu.runtime import Runtime

STATUSES = ("queued", "building", "starting", "running", "sleeping", "failed", "stopped")


@frozen
class Receipt:
    """What the orchestrator did with a request: `queued` (with the preview) or `ignored`."""

    status: Literal["queued", "ignored"]
    preview: str | None = None
    url: str | None = None
    reason: str | None = None


@define(eq=False)
class Orchestrator(Keeping):
    """
    Runs previews: accepts decisions (webhooks, API), carries out lifecycle
    effects, reconciles with the runtime; keep/extend/approve from `Keeping`.
    Reactor thread only.
    """

    settings: OrchestratorSettings
    clock: Any
    routes: RouteRegistry
    runtime: Runtime
    git: Git
    store: Store
    metrics: Metrics = field(factory=Metrics)
    log: Logger = field(factory=Logger)
    registry: Registry = field(init=False)
    jobs: Jobs = field(init=False)
    driver: Driver = field(init=False)
    reconciler: Reconciler = field(init=False)

    def __attrs_post_init__(self) -> None:
        s = self.settings
        jobs = Jobs(s, self.clock, self.runtime, self.git, self.store, self.metrics, self.log)
        self.jobs = jobs
        self.registry = Registry(s)
        self.driver = Driver(s, self.clock, self.routes, self.store, jobs, self.metrics, self.log)
        self.reconciler = Reconciler(
            s, self.clock, self.registry, self.driver, self.runtime, self.git, self.metrics,
            self.log,
        )

    @property
    def instance(self) -> str:
        """The `prevu.instance` label of this prevu's objects."""
        return self.settings.instance

    # --- queries ------------------------------------------------------------------

    def previews(self) -> list[PreviewRecord]:
        """Every preview, oldest first."""
        slots = sorted(self.registry, key=lambda slot: slot.created_at)
        return [records.encode(slot, self.settings) for slot in slots]

    def get(self, preview: str) -> PreviewRecord | None:
        """One preview by id."""
        slot = self.registry.get(preview)
        return records.encode(slot, self.settings) if slot else None

    def state(self, preview: str) -> lc.Preview | None:
        """The lifecycle state of one preview (tests, dashboard)."""
        slot = self.registry.get(preview)
        return slot.state if slot else None

    def serving(self, preview: str) -> lc.Deployment | None:
        """What serves the preview now, or None."""
        slot = self.registry.get(preview)
        return slot.state.serving if slot else None

    def idle(self) -> bool:
        """True when no job, discard or reconcile is in flight (tests wait for this)."""
        return not self.driver.tasks and all(s.state.job is None for s in self.registry)

    def gauges(self) -> list[tuple[str, Mapping[str, str], float]]:
        """The preview-count gauges for /metrics."""
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for slot in self.registry:
            counts[slot.state.status] += 1
        return [("prevu_previews", {"status": s}, float(n)) for s, n in counts.items()]

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """
        Call `callback(record)` on the reactor thread after each preview record
        is stored, with the new record; returns the function that unsubscribes.
        An exception in `callback` is logged and never breaks the orchestrator.
        """
        return self.driver.watch(callback)

    # --- requests -----------------------------------------------------------------

    def feed(self, slot: Slot, event: lc.Event) -> None:
        """Feed one event to a preview (see `Driver.feed`)."""
        self.driver.feed(slot, event)

    def _receipt(self, slot: Slot) -> Receipt:
        return Receipt("queued", slot.id, slot.name.url)

    def apply(self, decision: policy.Decision) -> Receipt:
        """
        Carry out a webhook decision; never waits for git or the engine.

        Events of one pull request are ordered by the forge's `updated_at`:
        one older than an event already applied is stale and ignored (a late
        `synchronize` of an older commit never cancels a newer build; a late
        `opened` never revives a pull request closed after it), and an open
        view newer than the forge's close revives the preview (it was reopened
        since, whatever the order its deliveries come in).
        """
        stale = self._stale(decision)
        if stale is not None:
            return stale
        match decision:
            case policy.Skip(reason=reason):
                return Receipt("ignored", reason=reason)
            case policy.Deploy(pull_request=pr):
                slot = self.registry.slot_for(pr, decision.settings.access, self.clock.seconds())
                # Kept in the record: a restart never hands an allowed fork the secrets.
                slot.untrusted = pr.fork and decision.settings.forks == "allow"
                if slot.tied(pr):
                    self.driver.background(self._deploy_head(slot, decision))
                    return self._receipt(slot)
                revive = decision.revive or slot.reopened(pr)
                slot.saw(pr)
                self.feed(slot, self._deploy(slot, decision, pr.sha, revive))
                return self._receipt(slot)
            case policy.Deny(pull_request=pr):
                slot = self.registry.slot_for(pr, decision.settings.access, self.clock.seconds())
                slot.saw(pr)
                self.feed(slot, lc.Deny(pr.sha, pr.branch, decision.reason))
                return self._receipt(slot)
            case policy.Destroy(pull_request=pr):
                found = self.registry.find(pr.forge, pr.repo, pr.number)
                if found is None:
                    self.registry.note_close(pr)
                    return Receipt("ignored", reason=f"no preview for {pr.repo}#{pr.number}")
                found.saw(pr)
                found.forge_closed = pr.updated_at
                self.feed(found, lc.Close(decision.reason))
                return self._receipt(found)
            case policy.Act():
                return Receipt("ignored", reason="commands run through the command runner")
        raise AssertionError(f"unknown decision {decision!r}")

    def _deploy(self, slot: Slot, decision: policy.Deploy, sha: str, revive: bool) -> lc.Deploy:
        room, limit = self.registry.has_room(slot), self.settings.max_previews
        branch = decision.pull_request.branch
        return lc.Deploy(sha, branch, decision.gate, revive, room=room, limit=limit)

    async def _deploy_head(self, slot: Slot, decision: policy.Deploy) -> None:
        """
        Two events as new as each other disagree on the head: ask the repository
        what `refs/pull/N/head` is now (never on the webhook's path) and deploy
        that; nothing changes when the target is the head already.
        """
        pr = decision.pull_request
        source = GitSource(
            url=slot.clone_url,
            ref=slot.ref,
            sha=pr.sha,
            token=self.settings.clone_token(pr.forge),
            timeout=self.settings.fetch_timeout,
        )
        try:
            head = await self.git.remote_head(source)
        except GitError as error:
            self.store.append_log(slot.id, "system", f"cannot read {slot.ref}: {error}")
            head = pr.sha
        target = slot.state.target
        line = f"events disagree on the head ({pr.sha[:12]}); {slot.ref} is at {head[:12]}"
        self.store.append_log(slot.id, "system", line)
        if (target is not None and target.sha == head) or slot.state.closed:
            return
        self.feed(slot, self._deploy(slot, decision, head, decision.revive))

    def _stale(self, decision: policy.Decision) -> Receipt | None:
        """An `ignored` receipt for a decision made from a stale event, else None."""
        if not isinstance(decision, policy.Deploy | policy.Deny | policy.Destroy):
            return None
        pr = decision.pull_request
        if not self.registry.stale(pr):
            return None
        slot = self.registry.find(pr.forge, pr.repo, pr.number)
        reason = (
            f"stale: {pr.repo}#{pr.number} at {pr.sha[:12]} is older than an event "
            "already applied (the forge's updated_at)"
        )
        if slot is None:
            return Receipt("ignored", reason=reason)
        return Receipt("ignored", slot.id, slot.name.url, reason)

    def deploy_local(
        self, repo: str, branch: str, sha: str, clone_url: str, access: str | None = None
    ) -> Receipt:
        """
        `prevu up`: deploy a branch of a repository the server can read, numbered by branch.

        Access is the one asked for, else the `[[repos]]` entry's, else private
        when a way to log in is configured and public when none is (nobody
        could open a private preview then).
        """
        number = self.registry.local_number(repo, branch)
        ref = f"refs/heads/{branch}"
        pr = PullRequest("local", repo, number, sha, branch, clone_url, ref)
        listed = self.settings.repo_access.get(repo.lower())
        chosen = access or listed or ("private" if self.settings.login else "public")
        settings = RepoConfig(name=repo, access="public" if chosen == "public" else "private")
        return self.apply(policy.Deploy(pr, settings, "open", revive=True))

    def _by_id(self, preview: str, event: lc.Event) -> bool:
        slot = self.registry.get(preview)
        if slot is not None:
            self.feed(slot, event)
        return slot is not None

    def redeploy(self, preview: str) -> bool:
        """Build the preview's current commit again; False when unknown."""
        return self._by_id(preview, lc.Redeploy())

    def reset(self, preview: str) -> bool:
        """Drop the preview's data, start its commit again (docs/data.md); False: cannot."""
        return data.reset(self.registry.get(preview), self.driver, ROUTE_SOURCE)

    def destroy(self, preview: str, reason: str = "deleted through the API") -> bool:
        """Tear the preview down (it stays listed as stopped); False when unknown."""
        return self._by_id(preview, lc.Close(reason))

    def sleep(self, preview: str) -> None:
        """Stop an idle preview's container; it wakes on the next request."""
        self._by_id(preview, lc.Sleep())

    def wake(self, route: Route) -> None:
        """The proxy's Waker: start the sleeping preview behind `route`."""
        self._by_id(route.preview or "", lc.Wake())

    # --- start, stop, reconcile ------------------------------------------------------

    async def start(self) -> None:
        """Load the store, reconcile at once (routes back within a second), then periodically."""
        self.driver.stopped = False
        self.log.info("prevu instance {instance}", instance=self.instance)
        for record in self.store.list_previews():
            if record.id not in self.registry:
                self.registry.add(records.restore(record, self.settings))
        await self.reconcile()
        for slot in self.registry:
            self.feed(slot, lc.Poke())
        self.reconciler.start()

    def stop(self) -> None:
        """Stop reconciling and cancel jobs in flight (their previews resume after a restart)."""
        self.reconciler.stop()
        self.driver.stop(list(self.registry))

    async def reconcile(self) -> None:
        """Make the engine and the previews agree (see prevu.orchestrator.reconcile)."""
        await self.reconciler.reconcile()
