"""
The reconcile runner: list the engine, plan (`prevu.orchestrator.reconcile`), feed, remove.

Runs at start, then every `reconcile_interval` on the clock, and once more
soon (within 5 s) after the engine could not be reached, since routes may be
missing then. One pass at a time; a failing removal is logged and the pass
goes on. Reactor thread only.

Self-healing (issue 15): each pass also reads the runtime's `observe()`
(exit code, OOM kill, restart count of every container) and keeps each
preview's restart `Tally` between passes (in memory: a restarted prevu
counts afresh), and the Compose part containers it saw (so that one
removed behind prevu's back is recreated). When the plan gives up on a
preview, the last `LOG_LINES` lines the failing container printed are
added to the reason.
"""

from __future__ import annotations

from typing import Any

from attrs import define, evolve, field
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from prevu import lifecycle as lc
from prevu.errors import DockerError, DockerUnavailable
from prevu.orchestrator.driver import Driver
from prevu.orchestrator.heal import HealRules, Tally
from prevu.orchestrator.metrics import Metrics
from prevu.orchestrator.reconcile import HealView, PartSeen, SlotView, plan
from prevu.orchestrator.registry import Registry
from prevu.orchestrator.settings import OrchestratorSettings
from prevu.ports import Git
from prevu.runtime import Runtime

LOG_LINES = 10
"""How many of a failed container's last lines go into the preview's error."""


@define(eq=False)
class Reconciler:
    """Makes the engine and the previews agree, now and periodically."""

    settings: OrchestratorSettings
    clock: Any
    registry: Registry
    driver: Driver
    runtime: Runtime
    git: Git
    metrics: Metrics
    log: Logger = field(factory=Logger)
    _loop: LoopingCall | None = None
    _running: Deferred[None] | None = None
    _unlisted: dict[str, float] = field(factory=dict)
    """Preview id → when a pass first found its repository out of `[[repos]]`."""
    _tallies: dict[str, Tally] = field(factory=dict)
    """Preview id → its restarts (issue 15), kept from one pass to the next."""
    _parts: dict[str, PartSeen] = field(factory=dict)
    """The Compose part containers the last pass saw (a removed one is recreated)."""

    def start(self) -> None:
        """Reconcile every `reconcile_interval` from now on."""
        self._loop = LoopingCall(self.periodic)
        self._loop.clock = self.clock
        self._loop.start(self.settings.reconcile_interval, now=False)

    def stop(self) -> None:
        """Stop reconciling periodically."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def periodic(self) -> None:
        """One pass in the background."""
        self.driver.background(self.reconcile())

    async def reconcile(self) -> None:
        """One pass, unless one is running; never raises DockerError."""
        if self._running is not None:
            return
        done: Deferred[None] = Deferred()
        self._running = done
        try:
            await self._once()
            self.metrics.inc("prevu_reconciles_total", result="ok")
        except DockerError as error:
            self.metrics.inc("prevu_reconciles_total", result="docker-error")
            self.log.warn("reconcile skipped: {error}", error=str(error))
            if isinstance(error, DockerUnavailable) and not self.driver.stopped:
                # Come back soon rather than at the next interval: routes are missing.
                self.clock.callLater(min(5.0, self.settings.reconcile_interval), self.periodic)
        finally:
            self._running = None
            done.callback(None)

    def _close_unlisted(self) -> None:
        """
        Close the previews of repositories no longer in `[[repos]]` once they have
        been unlisted for `unlisted_grace` seconds (counted from the first pass
        that found them so; a repository listed again keeps its previews).
        """
        listed, now = self.settings.listed, self.clock.seconds()
        for slot in self.registry:
            repo = slot.identity.repo
            served = listed is None or slot.identity.forge == "local" or repo.lower() in listed
            if served or slot.state.closed:
                self._unlisted.pop(slot.id, None)
                continue
            since = self._unlisted.setdefault(slot.id, now)
            grace = self.settings.unlisted_grace
            if now - since >= grace:
                self._unlisted.pop(slot.id, None)
                reason = f"repository {repo} is no longer in [[repos]] (unlisted_grace {grace:g}s)"
                self.log.info("closing {preview}: {reason}", preview=slot.id, reason=reason)
                self.driver.feed(slot, lc.Close(reason))

    async def _once(self) -> None:
        epochs = {slot.id: slot.epoch for slot in self.registry}
        observed = await self.runtime.list_owned()
        workspaces = self.git.workspaces()
        views = {
            slot.id: SlotView(slot.state, settled=slot.epoch == epochs.get(slot.id))
            for slot in self.registry
        }
        heal = HealView(
            {found.container: found for found in await self.runtime.observe()},
            self._tallies,
            HealRules(self.settings.restart_limit, self.settings.restart_window),
            self.clock.seconds(),
            self._parts,
        )
        self._close_unlisted()
        result = plan(observed, views, workspaces, self.settings.instance, heal)
        self._tallies = dict(result.tallies)
        self._parts = dict(result.parts)
        for preview, event in result.events:
            if isinstance(event, lc.Vanished) and event.reason is not None:
                culprit = result.culprits.get(preview, event.container)
                event = evolve(event, reason=await self._with_logs(culprit, event.reason))
            slot = self.registry.get(preview)
            if slot is None:
                continue
            serving = slot.state.serving
            if (
                isinstance(event, lc.Heal)
                and event.recreate
                and serving is not None
                and serving.image not in slot.built
            ):
                # Since prevu restarted, the app model (`.prevu.toml`'s command, env,
                # port, health) of this image is unknown: build the commit again.
                event = lc.Redeploy()
                self.driver.jobs.note(slot, "system", "rebuilding the removed container")
            if isinstance(event, lc.Heal | lc.Vanished) and event.reason is not None:
                what = "healing" if isinstance(event, lc.Heal) else "giving up on"
                self.log.warn(
                    "{what} preview {preview}: {reason}",
                    what=what,
                    preview=preview,
                    reason=event.reason,
                )
                outcome = "heal" if isinstance(event, lc.Heal) else "gave-up"
                self.metrics.inc("prevu_heals_total", result=outcome)
                self.driver.jobs.note(slot, "system", f"{what}: {event.reason}")
            self.driver.feed(slot, event)
        for removal in result.removals:
            try:
                if removal.kind == "workspace":
                    await self.git.remove_workspace(removal.name)
                elif removal.kind == "container":
                    await self.runtime.discard((removal.name,), ())
                elif removal.kind == "image":
                    await self.runtime.discard((), (removal.name,))
                else:
                    await self.runtime.discard((), (), (removal.name,))
            except DockerError as error:
                self.log.warn("orphan removal failed: {error}", error=str(error))
        if result.removals:
            self.log.info("reconcile removed {count} orphans", count=len(result.removals))
        await self._prune_caches()

    async def _with_logs(self, container: str, reason: str) -> str:
        """`reason` and the last `LOG_LINES` lines `container` printed (when it still exists)."""
        try:
            lines = await self.runtime.logs(container, tail=LOG_LINES)
        except DockerError:
            return reason
        if not lines:
            return reason
        return reason + "; last lines:\n" + "\n".join(line[:500] for line in lines)

    async def _prune_caches(self) -> None:
        """
        Remove the shared build cache image of each repository that has had no
        preview for `previews.ttl` (issue 10); a failure is logged, never raised.
        """
        keep = frozenset(
            f"{slot.identity.forge}/{slot.identity.repo.lower()}"
            for slot in self.registry
            if not slot.state.closed
        )
        try:
            removed = await self.runtime.prune_caches(
                keep, self.clock.seconds(), self.settings.cache_ttl
            )
        except DockerError as error:
            self.log.warn("cache image removal failed: {error}", error=str(error))
            return
        for repository in removed:
            self.log.info("removed the build cache image of {repo}", repo=repository)
