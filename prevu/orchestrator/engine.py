"""
The engine that turns lifecycle effects into git, Docker and route changes.

Each preview has a `Slot`: its identity, its lifecycle state and a mailbox.
Every event for a preview goes through `Orchestrator.feed`, which runs the
pure transition, stores the record and carries out the effects *in order*;
events that arrive while a slot is busy (a fake adapter answering at once, a
job finishing) wait in the mailbox, so a preview's transitions never
interleave. Jobs (build, start, teardown, ...) run as coroutines on the
reactor; blocking work happens in the adapters (git child processes, Docker
on prevu's thread pool). Nothing here blocks the reactor or waits inside a
web request.

Guarantees carried out here, on top of the lifecycle's:

- Re-check before each side effect: a job checks between steps that its
  revision is still the one wanted and that the preview is not closed, and
  stops (cleaning up what it made) when not.
- A build waits for one of `build_concurrency` slots (a DeferredSemaphore).
- `DockerUnavailable` is retried with exponential backoff on the clock;
  other errors fail the preview with their reason.
- Reconcile (at start, then every `reconcile_interval`): routes come back
  from labelled running containers, orphans are removed, vanished containers
  are marked.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Literal, TypeVar

from attrs import define, evolve, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from prevu import lifecycle as lc
from prevu.config import Config, RepoConfig
from prevu.errors import DockerError, DockerUnavailable, GitError, PrevuError, RepoConfigError
from prevu.forge import policy
from prevu.forge.events import PullRequest
from prevu.instance import load_or_create as load_instance
from prevu.lifecycle import Deployment, Preview, Revision
from prevu.naming import PreviewName, preview_label
from prevu.orchestrator import labels as lb
from prevu.orchestrator.health import HealthChecker
from prevu.orchestrator.metrics import Metrics
from prevu.ports import (
    BuildRequest,
    Docker,
    Git,
    GitSource,
    LogStream,
    PreviewRecord,
    RunRequest,
    Store,
)
from prevu.repoconfig import FILE_NAME, Limits, RepoSettings, parse_repo_config
from prevu.routing import Route, RouteRegistry, Upstream

T = TypeVar("T")
ROUTE_SOURCE = "previews"


class Superseded(Exception):
    """The job's revision is no longer wanted (newer commit, close, cancel)."""


@frozen
class Receipt:
    """What the orchestrator did with a request: `queued` (with the preview) or `ignored`."""

    status: Literal["queued", "ignored"]
    preview: str | None = None
    url: str | None = None
    reason: str | None = None


@define
class Token:
    """Cancels one job: the awaited step is cancelled and the next check raises Superseded."""

    revision: Revision | None
    cancelled: bool = False
    current: Deferred[Any] | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.current is not None:
            self.current.cancel()

    def check(self) -> None:
        if self.cancelled:
            raise Superseded()

    async def wait(self, awaitable: Awaitable[T]) -> T:
        self.check()
        deferred: Deferred[T] = ensureDeferred(awaitable)  # type: ignore[arg-type]
        self.current = deferred
        try:
            return await deferred
        except CancelledError:
            raise Superseded() from None
        finally:
            self.current = None


@define(eq=False)
class Slot:
    """One preview: who it is, where it lives, its lifecycle state and its mailbox."""

    identity: lb.Identity
    name: PreviewName
    branch: str
    clone_url: str
    ref: str
    access: Literal["private", "public"]
    created_at: float
    updated_at: float
    state: Preview = field(factory=Preview)
    settings: dict[str, RepoSettings] = field(factory=dict)
    token: Token | None = None
    epoch: int = 0
    mailbox: deque[lc.Event] = field(factory=deque)
    busy: bool = False

    @property
    def id(self) -> str:
        return self.identity.preview

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.identity.forge, self.identity.repo.lower(), self.identity.number)


def _endpoint_port(description: str | None) -> int | None:
    if not description:
        return None
    for part in description.split(":")[1:]:
        if part.startswith("port="):
            part = part.split("=", 1)[1]
        if part.isdigit():
            return int(part)
    return None


@define(eq=False)
class Orchestrator:
    """
    Runs previews: accepts decisions (webhooks, API), carries out lifecycle
    effects, reconciles with Docker. Reactor thread only.
    """

    config: Config
    clock: Any
    routes: RouteRegistry
    docker: Docker
    git: Git
    store: Store
    health: HealthChecker
    metrics: Metrics = field(factory=Metrics)
    drain_delay: float = 1.0
    start_timeout: float = 60.0
    probe_interval: float = 0.1
    retry_initial: float = 0.5
    retry_max: float = 30.0
    fetch_timeout: float = 300.0
    log: Logger = field(factory=Logger)
    instance: str = ""
    _slots: dict[str, Slot] = field(factory=dict)
    _keys: dict[tuple[str, str, int], str] = field(factory=dict)
    _semaphore: DeferredSemaphore = field(init=False)
    _loop: LoopingCall | None = None
    _tasks: set[Deferred[Any]] = field(factory=set)
    _reconciling: Deferred[None] | None = None
    _stopped: bool = False

    def __attrs_post_init__(self) -> None:
        self._semaphore = DeferredSemaphore(self.config.docker.build_concurrency)
        if not self.instance:
            server = self.config.server
            self.instance = load_instance(server.state_dir, server.instance)
        self.log.info("prevu instance {instance}", instance=self.instance)

    # --- queries ------------------------------------------------------------------

    def previews(self) -> list[PreviewRecord]:
        """Every preview, oldest first."""
        return [self._record(slot) for slot in sorted(self._slots.values(), key=_created)]

    def get(self, preview: str) -> PreviewRecord | None:
        """One preview by id."""
        slot = self._slots.get(preview)
        return self._record(slot) if slot else None

    def state(self, preview: str) -> Preview | None:
        """The lifecycle state of one preview (tests, dashboard)."""
        slot = self._slots.get(preview)
        return slot.state if slot else None

    def serving(self, preview: str) -> Deployment | None:
        slot = self._slots.get(preview)
        return slot.state.serving if slot else None

    def idle(self) -> bool:
        """True when no job, discard or reconcile is in flight (tests wait for this)."""
        return not self._tasks and all(s.state.job is None for s in self._slots.values())

    def gauges(self) -> list[tuple[str, Mapping[str, str], float]]:
        """The preview-count gauges for /metrics."""
        counts: dict[str, int] = dict.fromkeys(
            ("queued", "building", "starting", "running", "sleeping", "failed", "stopped"), 0
        )
        for slot in self._slots.values():
            counts[slot.state.status] += 1
        return [("prevu_previews", {"status": s}, float(n)) for s, n in counts.items()]

    # --- requests -----------------------------------------------------------------

    def apply(self, decision: policy.Decision) -> Receipt:
        """Carry out a webhook decision; never waits for git or Docker."""
        match decision:
            case policy.Skip(reason=reason):
                return Receipt("ignored", reason=reason)
            case policy.Deploy():
                pr = decision.pull_request
                slot = self._slot_for(pr, decision.settings.access)
                event = lc.Deploy(
                    pr.sha,
                    pr.branch,
                    gate=decision.gate,
                    revive=decision.revive,
                    room=self._has_room(slot),
                    limit=self.config.docker.max_previews,
                )
                self.feed(slot, event)
                return self._receipt(slot)
            case policy.Deny():
                pr = decision.pull_request
                slot = self._slot_for(pr, decision.settings.access)
                self.feed(slot, lc.Deny(pr.sha, pr.branch, decision.reason))
                return self._receipt(slot)
            case policy.Destroy():
                pr = decision.pull_request
                found = self._find(pr.forge, pr.repo, pr.number)
                if found is None:
                    return Receipt("ignored", reason=f"no preview for {pr.repo}#{pr.number}")
                self.feed(found, lc.Close(decision.reason))
                return self._receipt(found)
            case policy.Approve():
                found = self._find(decision.forge, decision.repo, decision.number)
                if found is None or found.state.awaiting is None:
                    reason = f"nothing awaits approval for {decision.repo}#{decision.number}"
                    return Receipt("ignored", reason=reason)
                self.feed(found, lc.Approve(decision.by))
                return self._receipt(found)
        raise AssertionError(f"unknown decision {decision!r}")

    def deploy_local(
        self, repo: str, branch: str, sha: str, clone_url: str, access: str | None = None
    ) -> Receipt:
        """
        `prevu up`: deploy a branch of a repository the server can read, numbered by branch.

        Access is the one asked for, else the `[[repos]]` entry's, else private
        when a way to log in is configured and public when none is (nobody
        could open a private preview then).
        """
        pr = PullRequest(
            forge="local",
            repo=repo,
            number=self._local_number(repo, branch),
            sha=sha,
            branch=branch,
            clone_url=clone_url,
            ref=f"refs/heads/{branch}",
        )
        listed = self.config.repo(repo)
        login = bool(self.config.auth.users_file or self.config.auth.github)
        chosen = access or (listed.access if listed else "private" if login else "public")
        settings = RepoConfig(name=repo, access="public" if chosen == "public" else "private")
        return self.apply(policy.Deploy(pr, settings, "open", revive=True))

    def redeploy(self, preview: str) -> bool:
        """Build the preview's current commit again; False when unknown."""
        slot = self._slots.get(preview)
        if slot is None:
            return False
        self.feed(slot, lc.Redeploy())
        return True

    def destroy(self, preview: str, reason: str = "deleted through the API") -> bool:
        """Tear the preview down (it stays listed as stopped); False when unknown."""
        slot = self._slots.get(preview)
        if slot is None:
            return False
        self.feed(slot, lc.Close(reason))
        return True

    def sleep(self, preview: str) -> None:
        """Stop an idle preview's container; it wakes on the next request."""
        slot = self._slots.get(preview)
        if slot is not None:
            self.feed(slot, lc.Sleep())

    def wake(self, route: Route) -> None:
        """The proxy's Waker: start the sleeping preview behind `route`."""
        slot = self._slots.get(route.preview or "")
        if slot is not None:
            self.feed(slot, lc.Wake())

    # --- slots --------------------------------------------------------------------

    def _receipt(self, slot: Slot) -> Receipt:
        return Receipt("queued", slot.id, slot.name.url)

    def _find(self, forge: str, repo: str, number: int) -> Slot | None:
        preview = self._keys.get((forge, repo.lower(), number))
        return self._slots.get(preview) if preview else None

    def _has_room(self, slot: Slot) -> bool:
        if slot.state.active:
            return True
        active = sum(1 for other in self._slots.values() if other.state.active)
        return active < self.config.docker.max_previews

    def _local_number(self, repo: str, branch: str) -> int:
        """The number of `prevu up` previews: one per branch, counted per repository."""
        local = [
            slot
            for slot in self._slots.values()
            if slot.identity.forge == "local" and slot.identity.repo.lower() == repo.lower()
        ]
        for slot in local:
            if slot.ref == f"refs/heads/{branch}":
                return slot.identity.number
        return max((slot.identity.number for slot in local), default=0) + 1

    def _naming(self, label: str) -> PreviewName:
        server = self.config.server
        if self.config.tls.mode != "off" and server.https:
            return PreviewName.build(label, server.domain, "https", _endpoint_port(server.https))
        return PreviewName.build(label, server.domain, "http", _endpoint_port(server.http))

    def _slot_for(self, pr: PullRequest, access: Literal["private", "public"]) -> Slot:
        slot = self._find(pr.forge, pr.repo, pr.number)
        if slot is not None:
            slot.clone_url, slot.ref, slot.branch = pr.clone_url, pr.ref, pr.branch
            return slot
        template = self.config.server.label
        label = preview_label(template, pr.repo, pr.number, pr.branch)
        if label in self._slots:
            label = preview_label(
                template, pr.repo, pr.number, pr.branch, salt=f"{pr.forge}:{pr.repo}"
            )
        now = self.clock.seconds()
        identity = lb.Identity(self.instance, label, pr.repo, pr.number, pr.forge)
        slot = Slot(
            identity, self._naming(label), pr.branch, pr.clone_url, pr.ref, access, now, now
        )
        self._slots[label] = slot
        self._keys[slot.key] = label
        return slot

    # --- the mailbox ----------------------------------------------------------------

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
            self.store.upsert(self._record(slot))
        if result.state.status != before.status:
            detail = result.state.detail
            self.log.info(
                "preview {preview} {status} ({sha}){detail}",
                preview=slot.id,
                status=result.state.status,
                sha=(result.state.sha or "")[:12],
                detail=f": {detail}" if detail else "",
            )
            self._log(
                slot, "system", f"status {result.state.status}" + (f": {detail}" if detail else "")
            )
        for effect in result.effects:
            self._carry_out(slot, effect)

    def _carry_out(self, slot: Slot, effect: lc.Effect) -> None:
        match effect:
            case lc.Build(revision=revision):
                self._job(slot, revision, self._build)
            case lc.CancelBuild(revision=revision):
                if slot.token is not None and slot.token.revision == revision:
                    self._log(slot, "system", f"cancelling the build of {revision.short}")
                    slot.token.cancel()
            case lc.Start(revision=revision, image=built):
                self._job(slot, revision, lambda s, t: self._start(s, t, built))
            case lc.RouteTo(deployment=deployment):
                self._route(slot, deployment, "ready")
                self.metrics.inc("prevu_deploys_total")
            case lc.RouteBuilding():
                self.routes.put(ROUTE_SOURCE, self._route_value(slot, None, "building"))
            case lc.RouteAsleep(deployment=deployment):
                self._route(slot, deployment, "sleeping")
            case lc.Unroute():
                self.routes.remove(ROUTE_SOURCE, slot.name.host)
            case lc.Discard(container=container, image=image):
                self._background(self._discard(slot, container, image))
            case lc.Suspend(deployment=deployment):
                self._job(slot, deployment.revision, lambda s, t: self._suspend(s, t, deployment))
            case lc.Resume(deployment=deployment):
                self._job(slot, deployment.revision, lambda s, t: self._resume(s, t, deployment))
            case lc.Teardown():
                self._job(slot, None, self._teardown)

    def _route_value(
        self, slot: Slot, upstream: Upstream | None, state: Literal["ready", "building", "sleeping"]
    ) -> Route:
        return Route(
            host=slot.name.host,
            upstream=upstream,
            access=slot.access,
            state=state,
            preview=slot.id,
            repo=slot.identity.repo,
        )

    def _route(
        self, slot: Slot, deployment: Deployment, state: Literal["ready", "sleeping"]
    ) -> None:
        upstream = Upstream(deployment.address, deployment.port)
        self.routes.put(ROUTE_SOURCE, self._route_value(slot, upstream, state))

    def _job(
        self,
        slot: Slot,
        revision: Revision | None,
        body: Callable[[Slot, Token], Awaitable[lc.Event]],
    ) -> None:
        token = Token(revision)
        slot.token = token

        async def run() -> None:
            try:
                event = await body(slot, token)
            except Exception as error:
                self.log.failure("job of preview {preview} crashed", preview=slot.id)
                event = _failure_event(slot, revision, f"internal error: {error!r}")
            if slot.token is token:
                slot.token = None
            if self._stopped:
                # Shutting down: keep the stored state as it was, so that the
                # job is taken up again after the restart.
                return
            self.feed(slot, event)

        self._background(run())

    def _background(self, coroutine: Awaitable[None]) -> None:
        deferred: Deferred[None] = ensureDeferred(coroutine)  # type: ignore[arg-type]
        if deferred.called:
            deferred.addErrback(lambda f: self.log.failure("background task", failure=f))
            return
        self._tasks.add(deferred)

        def done(result: object) -> None:
            self._tasks.discard(deferred)

        deferred.addErrback(lambda f: self.log.failure("background task", failure=f))
        deferred.addBoth(done)

    def _log(self, slot: Slot, stream: LogStream, line: str) -> None:
        self.store.append_log(slot.id, stream, line)

    # --- jobs -----------------------------------------------------------------------

    def _wanted(self, slot: Slot, token: Token) -> None:
        """Re-check before a side effect: raise Superseded if this revision is not wanted."""
        token.check()
        state = slot.state
        if state.closed or (token.revision is not None and state.target != token.revision):
            raise Superseded()

    async def _docker(self, slot: Slot, token: Token, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a Docker call, retrying with backoff while the engine is unavailable."""
        delay = self.retry_initial
        while True:
            try:
                return await token.wait(operation())
            except DockerUnavailable as error:
                self.metrics.inc("prevu_docker_retries_total")
                self.log.warn(
                    "Docker unavailable for preview {preview} ({error}); retrying in {delay}s",
                    preview=slot.id,
                    error=str(error),
                    delay=delay,
                )
                self._log(slot, "system", f"Docker unavailable, retrying in {delay:g}s: {error}")
                await token.wait(deferLater(self.clock, delay, lambda: None))
                delay = min(delay * 2, self.retry_max)

    async def _build(self, slot: Slot, token: Token) -> lc.Event:
        revision = token.revision
        assert revision is not None
        waited = ensureDeferred(token.wait(self._semaphore.acquire()))
        try:
            await waited
        except Superseded:
            return lc.BuildFailed(revision, "superseded before it started")
        started = time.monotonic()
        try:
            self._wanted(slot, token)
            self.feed(slot, lc.BuildStarted(revision))
            image, settings = await self._fetch_and_build(slot, token, revision)
        except Superseded:
            self._result("cancelled", started)
            return lc.BuildFailed(revision, "superseded or closed")
        except (GitError, DockerError, RepoConfigError) as error:
            self._log(slot, "system", f"build failed: {error}")
            self._result("failed", started)
            return lc.BuildFailed(revision, str(error))
        finally:
            self._semaphore.release()
            await self.git.remove_workspace(slot.id)
        self._result("succeeded", started)
        slot.settings[image] = settings
        if settings.access is not None and settings.access != slot.access:
            slot.access = settings.access
        return lc.Built(revision, image)

    def _result(self, result: str, started: float) -> None:
        self.metrics.inc("prevu_builds_total", result=result)
        self.metrics.inc("prevu_build_seconds_total", time.monotonic() - started)

    def _token_for(self, slot: Slot) -> str | None:
        if slot.identity.forge == "github":
            return self.config.github.token
        if slot.identity.forge == "gitlab":
            return self.config.gitlab.token
        return None

    def _prevu_env(self, slot: Slot, revision: Revision) -> dict[str, str]:
        return {
            "PREVU_URL": slot.name.url,
            "PREVU_HOST": slot.name.host,
            "PREVU_PR": str(slot.identity.number),
            "PREVU_SHA": revision.sha,
            "PREVU_BRANCH": revision.branch,
            "PREVU_REPO": slot.identity.repo,
        }

    async def _fetch_and_build(
        self, slot: Slot, token: Token, revision: Revision
    ) -> tuple[str, RepoSettings]:
        self._log(slot, "system", f"fetching {slot.ref} at {revision.sha}")
        source = GitSource(
            url=slot.clone_url,
            ref=slot.ref,
            sha=revision.sha,
            token=self._token_for(slot),
            timeout=self.fetch_timeout,
        )
        checkout = await token.wait(self.git.fetch(source, slot.id))
        self._wanted(slot, token)
        limits = Limits(memory=self.config.docker.memory, cpus=self.config.docker.cpus)
        settings = parse_repo_config(_read_repo_file(checkout.path), limits)
        dockerfile = os.path.join(checkout.path, settings.dockerfile)
        if not os.path.isfile(dockerfile):
            raise RepoConfigError(
                "build.dockerfile", f"{settings.dockerfile} not found in the repository"
            )
        context = os.path.join(checkout.path, settings.context)
        if not os.path.isdir(context):
            raise RepoConfigError("build.context", f"{settings.context} is not a directory")
        request = BuildRequest(
            context=context,
            tag=f"prevu/{slot.id}:{revision.short}-{revision.serial}",
            dockerfile=settings.dockerfile_in_context,
            args=settings.build_args,
            prevu_args=self._prevu_env(slot, revision),
            labels={**slot.identity.labels(), lb.SHA: revision.sha},
            memory=self.config.docker.memory,
            timeout=self.config.docker.build_timeout,
        )
        self._log(slot, "system", f"building {request.tag}")
        image = await self._docker(
            slot,
            token,
            lambda: self.docker.build(request, lambda line: self._log(slot, "build", line)),
        )
        return image.id, settings

    def _network(self, slot: Slot) -> str:
        return f"{self.config.docker.network}-{slot.id}"

    async def _start(self, slot: Slot, token: Token, image: str) -> lc.Event:
        revision = token.revision
        assert revision is not None
        settings = slot.settings.get(image, RepoSettings())
        name = f"{self._network(slot)}-{revision.short}-{revision.serial}"
        container: str | None = None
        try:
            self._wanted(slot, token)
            network = self._network(slot)
            await self._docker(
                slot, token, lambda: self.docker.create_network(network, slot.identity.labels())
            )
            self._wanted(slot, token)
            await self._docker(slot, token, lambda: self.docker.remove_container(name))
            docker = self.config.docker
            memory = min(settings.memory or docker.memory, docker.memory)
            cpus = min(settings.cpus or docker.cpus, docker.cpus)
            request = RunRequest(
                image=image,
                name=name,
                network=network,
                port=settings.port,
                env={**settings.env, **self._prevu_env(slot, revision)},
                labels=slot.identity.container_labels(
                    revision, slot.name.host, settings.port, image
                ),
                command=settings.command,
                memory=memory,
                nano_cpus=int(cpus * 1e9),
                pids=docker.pids,
            )
            self._wanted(slot, token)
            running = await self._docker(slot, token, lambda: self.docker.run(request))
            container = running.id
            self._log(
                slot, "system", f"container {running.name} at {running.address}:{running.port}"
            )
            upstream = Upstream(running.address, running.port)
            await self._until_healthy(slot, token, container, upstream, settings.health)
            self._wanted(slot, token)
        except Superseded:
            await self._remove_quietly(container)
            return lc.StartFailed(revision, "superseded or closed")
        except DockerError as error:
            await self._remove_quietly(container)
            self._log(slot, "system", f"start failed: {error}")
            return lc.StartFailed(revision, str(error))
        except _Unhealthy as error:
            await self._keep_run_logs(slot, container)
            await self._remove_quietly(container)
            self._log(slot, "system", str(error))
            return lc.StartFailed(revision, str(error))
        return lc.Started(Deployment(revision, container, image, running.address, running.port))

    async def _until_healthy(
        self, slot: Slot, token: Token, container: str, upstream: Upstream, path: str | None
    ) -> None:
        deadline = self.clock.seconds() + self.start_timeout
        while True:
            self._wanted(slot, token)
            if await token.wait(self.health.check(upstream, path, slot.name.host)):
                return
            info = await self._docker(slot, token, lambda: self.docker.inspect_container(container))
            if info is None or not info.running:
                state = info.state if info else "gone"
                raise _Unhealthy(f"container exited before it was healthy ({state})")
            if self.clock.seconds() >= deadline:
                what = f"GET {path} < 500" if path else "a TCP connection"
                raise _Unhealthy(
                    f"no {what} on port {upstream.port} within {self.start_timeout:g}s"
                )
            await token.wait(deferLater(self.clock, self.probe_interval, lambda: None))

    async def _keep_run_logs(self, slot: Slot, container: str | None) -> None:
        if container is None:
            return
        try:
            lines = await self.docker.container_logs(container, tail=200)
        except DockerError:
            return
        for line in lines:
            self._log(slot, "run", line)

    async def _remove_quietly(self, container: str | None) -> None:
        if container is None:
            return
        try:
            await self.docker.remove_container(container)
        except DockerError as error:
            self.log.warn(
                "could not remove container {container}: {error}",
                container=container,
                error=str(error),
            )

    async def _discard(self, slot: Slot, container: str | None, image: str | None) -> None:
        if container is not None and self.drain_delay > 0:
            # Requests already forwarded to the old container finish first.
            await deferLater(self.clock, self.drain_delay, lambda: None)
        token = Token(None)
        try:
            if container is not None:
                await self._docker(slot, token, lambda: self.docker.remove_container(container))
            if image is not None:
                await self._docker(slot, token, lambda: self.docker.remove_image(image))
        except DockerError as error:
            self.log.warn(
                "discard for {preview} failed: {error}", preview=slot.id, error=str(error)
            )

    async def _suspend(self, slot: Slot, token: Token, deployment: Deployment) -> lc.Event:
        try:
            await self._docker(slot, token, lambda: self.docker.stop(deployment.container))
        except (DockerError, Superseded) as error:
            self.log.warn("could not stop {preview}: {error}", preview=slot.id, error=str(error))
        return lc.Suspended()

    async def _resume(self, slot: Slot, token: Token, deployment: Deployment) -> lc.Event:
        revision = deployment.revision
        try:
            running = await self._docker(
                slot, token, lambda: self.docker.start(deployment.container)
            )
            settings = slot.settings.get(deployment.image, RepoSettings(port=deployment.port))
            upstream = Upstream(running.address, deployment.port)
            await self._until_healthy(slot, token, running.id, upstream, settings.health)
        except (DockerError, _Unhealthy, Superseded) as error:
            return lc.StartFailed(revision, str(error) or "superseded")
        return lc.Started(evolve(deployment, address=running.address))

    async def _teardown(self, slot: Slot, token: Token) -> lc.Event:
        """Route first, then containers, images, network and workspace; idempotent."""
        self.routes.remove(ROUTE_SOURCE, slot.name.host)
        managed = await self._docker(slot, token, self.docker.list_managed)
        for container in managed.containers:
            if lb.owned(container.labels, self.instance) == slot.id:
                await self._docker(slot, token, partial(self.docker.remove_container, container.id))
        for image in managed.images:
            if lb.owned(image.labels, self.instance) == slot.id:
                await self._docker(slot, token, partial(self.docker.remove_image, image.id))
        networks = {self._network(slot)} | {
            n.name for n in managed.networks if lb.owned(n.labels, self.instance) == slot.id
        }
        for network in sorted(networks):
            await self._docker(slot, token, partial(self.docker.remove_network, network))
        await self.git.remove_workspace(slot.id)
        slot.settings.clear()
        self._log(slot, "system", "torn down: no container, image, network or workspace left")
        return lc.TornDown()

    # --- records ----------------------------------------------------------------------

    def _record(self, slot: Slot) -> PreviewRecord:
        state = slot.state
        serving = state.serving
        target = state.target
        data = {
            "serial": str(target.serial) if target else "0",
            "clean": "1" if state.clean else "0",
            "failed": "1" if state.failed is not None and state.failed == target else "0",
        }
        if state.approved:
            data["approved"] = state.approved
        if state.awaiting is not None:
            data["awaiting"] = state.awaiting.sha
            data["awaiting_branch"] = state.awaiting.branch
        if state.detail:
            data["detail"] = state.detail
        return PreviewRecord(
            id=slot.id,
            repo=slot.identity.repo,
            number=slot.identity.number,
            branch=(target.branch if target else slot.branch) or slot.branch,
            sha=state.sha or "",
            status=state.status,
            url=slot.name.url,
            host=slot.name.host,
            error=state.error if state.status == "failed" else None,
            created_at=slot.created_at,
            updated_at=slot.updated_at,
            access=slot.access,
            forge=slot.identity.forge,
            clone_url=slot.clone_url,
            ref=slot.ref,
            container=serving.container if serving else None,
            image=serving.image if serving else None,
            network=self._network(slot) if not state.clean else None,
            closed=state.closed,
            data=data,
        )

    def _restore(self, record: PreviewRecord) -> Slot:
        identity = lb.Identity(self.instance, record.id, record.repo, record.number, record.forge)
        name = self._naming(record.id)
        data = record.data
        target = None
        if record.sha and "awaiting" not in data:
            target = Revision(record.sha, record.branch, int(data.get("serial", "0") or 0))
        awaiting = None
        if "awaiting" in data:
            awaiting = Revision(data["awaiting"], data.get("awaiting_branch", ""), 1)
        failed = target if data.get("failed") == "1" else None
        state = Preview(
            closed=record.closed,
            target=target,
            awaiting=awaiting,
            approved=data.get("approved"),
            failed=failed,
            error=record.error if failed else None,
            note=data.get("detail") if record.closed else None,
            clean=data.get("clean", "0") == "1",
        )
        slot = Slot(
            identity,
            name,
            record.branch,
            record.clone_url,
            record.ref,
            record.access,
            record.created_at,
            record.updated_at,
            state,
        )
        return slot

    # --- start, stop, reconcile ------------------------------------------------------

    async def start(self) -> None:
        """Load the store, reconcile at once (routes back within a second), then periodically."""
        self._stopped = False
        for record in self.store.list_previews():
            if record.id in self._slots:
                continue
            slot = self._restore(record)
            self._slots[slot.id] = slot
            self._keys[slot.key] = slot.id
        await self.reconcile()
        for slot in list(self._slots.values()):
            self.feed(slot, lc.Poke())
        self._loop = LoopingCall(self._periodic)
        self._loop.clock = self.clock
        self._loop.start(self.config.docker.reconcile_interval, now=False)

    def stop(self) -> None:
        """Stop reconciling and cancel jobs in flight (their previews resume after a restart)."""
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for slot in self._slots.values():
            if slot.token is not None:
                slot.token.cancel()

    def _periodic(self) -> None:
        self._background(self.reconcile())

    async def reconcile(self) -> None:
        """Make Docker and the previews agree (see the module docstring)."""
        if self._reconciling is not None:
            return
        done: Deferred[None] = Deferred()
        self._reconciling = done
        try:
            await self._reconcile_once()
            self.metrics.inc("prevu_reconciles_total", result="ok")
        except DockerError as error:
            self.metrics.inc("prevu_reconciles_total", result="docker-error")
            self.log.warn("reconcile skipped: {error}", error=str(error))
            if isinstance(error, DockerUnavailable) and not self._stopped:
                # Come back soon rather than at the next interval: routes are missing.
                self.clock.callLater(
                    min(5.0, self.config.docker.reconcile_interval), self._periodic
                )
        finally:
            self._reconciling = None
            done.callback(None)

    async def _reconcile_once(self) -> None:
        epochs = {slot.id: slot.epoch for slot in self._slots.values()}
        managed = await self.docker.list_managed()
        workspaces = self.git.workspaces()

        def settled(preview: str) -> Slot | None:
            """The slot, when nothing happened to it during the listing and no job runs."""
            slot = self._slots.get(preview)
            if slot is None or slot.epoch != epochs.get(preview) or slot.state.job is not None:
                return None
            return slot

        orphans: list[Callable[[], Awaitable[None]]] = []
        present: set[str] = set()
        for container in managed.containers:
            preview = lb.owned(container.labels, self.instance)
            if preview is None:
                continue
            present.add(container.id)
            slot = self._slots.get(preview)
            if slot is None or (slot.state.closed and slot.state.clean and slot.state.job is None):
                orphans.append(partial(self.docker.remove_container, container.id))
                continue
            slot = settled(preview)
            if slot is None:
                continue
            deployment = lb.deployment_of(container)
            serving = slot.state.serving
            if container.running and deployment is not None:
                if serving is None or serving.container != container.id:
                    self.feed(slot, lc.Adopt(deployment))
            elif serving is not None and serving.container == container.id:
                if not slot.state.asleep:
                    self.feed(slot, lc.Vanished(container.id))
            elif serving is None and deployment is not None and not slot.state.closed:
                if (
                    container.state in ("exited", "created")
                    and slot.state.target == deployment.revision
                ):
                    # A stopped container of the wanted revision: treat as asleep.
                    self.feed(slot, lc.Adopt(deployment, asleep=True))
                else:
                    orphans.append(partial(self.docker.remove_container, container.id))
            else:
                orphans.append(partial(self.docker.remove_container, container.id))
        for preview in list(epochs):
            slot = settled(preview)
            if slot is None or slot.state.serving is None:
                continue
            if slot.state.serving.container not in present:
                self.feed(slot, lc.Vanished(slot.state.serving.container))
        for image in managed.images:
            preview = lb.owned(image.labels, self.instance)
            if preview is None:
                continue
            slot = self._slots.get(preview)
            if slot is not None and (
                slot.state.job is not None or slot.epoch != epochs.get(preview)
            ):
                continue
            serving = slot.state.serving if slot else None
            if serving is not None and serving.image == image.id:
                continue
            if slot is not None and not slot.state.closed and serving is None:
                continue  # an asleep or failed preview may still use it; teardown removes it
            orphans.append(partial(self.docker.remove_image, image.id))
        for network in managed.networks:
            preview = lb.owned(network.labels, self.instance)
            if preview is None:
                continue
            slot = self._slots.get(preview)
            if slot is None or (slot.state.closed and slot.state.clean and slot.state.job is None):
                orphans.append(partial(self.docker.remove_network, network.name))
        for workspace in workspaces:
            slot = self._slots.get(workspace)
            building = (
                slot is not None and slot.state.job is not None and slot.state.job.kind == "build"
            )
            if not building:
                orphans.append(partial(self.git.remove_workspace, workspace))
        for remove in orphans:
            try:
                await remove()
            except DockerError as error:
                self.log.warn("orphan removal failed: {error}", error=str(error))
        if orphans:
            self.log.info("reconcile removed {count} orphans", count=len(orphans))


class _Unhealthy(PrevuError):
    """The container did not become healthy."""


def _failure_event(slot: Slot, revision: Revision | None, reason: str) -> lc.Event:
    job = slot.state.job
    if job is None:
        return lc.Poke()
    if job.kind == "build" and revision is not None:
        return lc.BuildFailed(revision, reason)
    if job.kind in ("start", "resume") and revision is not None:
        return lc.StartFailed(revision, reason)
    if job.kind == "suspend":
        return lc.Suspended()
    return lc.TornDown()


def _created(slot: Slot) -> float:
    return slot.created_at


def _read_repo_file(path: str) -> str | None:
    # A few hundred bytes on local disk, read once per build: not worth a thread hop.
    try:
        with open(os.path.join(path, FILE_NAME), encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise RepoConfigError("", f"cannot read {FILE_NAME}: {error}") from None


class OrchestratorService(Service):
    """Starts the orchestrator (load, reconcile, periodic reconcile) with the service tree."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    def startService(self) -> None:
        super().startService()
        deferred = ensureDeferred(self.orchestrator.start())
        deferred.addErrback(
            lambda f: self.orchestrator.log.failure("orchestrator start", failure=f)
        )

    def stopService(self) -> Any:
        super().stopService()
        self.orchestrator.stop()
        return None
