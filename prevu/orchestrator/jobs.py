"""
The jobs: the git and runtime choreography of each lifecycle effect.

Each job is `async (slot, cancel, report) -> Event`: it works on one
preview's slot, stops when its `CancelToken` is cancelled, may `report` an
event while it runs (the build reports `BuildStarted` once it has a build
slot) and answers the event that ends it (`Built`, `Started`,
`StartFailed`, ...). Jobs never feed the mailbox themselves and never import
the driver: the driver runs them and feeds what they report and answer.

Guarantees carried out here:

- Re-check before each side effect: a job checks between steps that its
  revision is still the one wanted and that the preview is not closed, and
  stops (cleaning up what it made) when not.
- A build waits for one of `build_concurrency` slots (a DeferredSemaphore).
- `DockerUnavailable` is retried after the delays of the `retry` policy
  (`prevu.backoff`) on the clock; other errors fail the preview with their reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from attrs import define, evolve, field
from twisted.internet.defer import DeferredSemaphore, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from prevu import lifecycle as lc
from prevu.appmodel import APP, AppModel, Service, single_dockerfile
from prevu.errors import DockerError, DockerUnavailable, GitError, PrevuError, RepoConfigError
from prevu.masking import Masker, masker
from prevu.orchestrator import data
from prevu.orchestrator.metrics import Metrics
from prevu.orchestrator.registry import CancelToken, Slot, Superseded
from prevu.orchestrator.settings import OrchestratorSettings
from prevu.ports import Git, GitSource, LogStream, Store
from prevu.repoconfig import FILE_NAME, RepoSettings, parse_repo_config
from prevu.routing import Upstream
from prevu.runtime import Built, Deployed, Health, Release, Runtime

T = TypeVar("T")
Report = Callable[[lc.Event], None]
Job = Callable[[Slot, CancelToken, Report], Awaitable[lc.Event]]


class Unhealthy(PrevuError):
    """The container did not become healthy."""


@define(eq=False)
class Jobs:
    """The jobs of every preview, on shared adapters. Reactor thread only."""

    settings: OrchestratorSettings
    clock: Any
    runtime: Runtime
    git: Git
    store: Store
    metrics: Metrics
    log: Logger = field(factory=Logger)
    """Previews of forks admitted by `forks = "allow"`: no secrets, no shared cache image."""
    _semaphore: DeferredSemaphore = field(init=False)
    _mask: Masker = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._semaphore = DeferredSemaphore(self.settings.build_concurrency)
        self._mask = masker(self.settings.secret_values)

    # --- plumbing -------------------------------------------------------------------

    def note(self, slot: Slot, stream: LogStream, line: str) -> None:
        """Keep one line in the preview's log, `[[repos]]` secret values masked (best-effort)."""
        self.store.append_log(slot.id, stream, self._mask(line))

    def _wanted(self, slot: Slot, cancel: CancelToken) -> None:
        """Re-check before a side effect: raise Superseded if this revision is not wanted."""
        cancel.check()
        state = slot.state
        if state.closed or (cancel.revision is not None and state.target != cancel.revision):
            raise Superseded()

    async def retrying(
        self, slot: Slot, cancel: CancelToken, operation: Callable[[], Awaitable[T]]
    ) -> T:
        """Run a runtime call, retrying after the policy's delay while the engine is down."""
        failures = 0
        while True:
            try:
                return await cancel.wait(operation())
            except DockerUnavailable as error:
                failures += 1
                delay = self.settings.retry(failures)
                self.metrics.inc("prevu_docker_retries_total")
                self.log.warn(
                    "Docker unavailable for preview {preview} ({error}); retrying in {delay}s",
                    preview=slot.id,
                    error=str(error),
                    delay=delay,
                )
                self.note(slot, "system", f"Docker unavailable, retrying in {delay:g}s: {error}")
                await cancel.wait(deferLater(self.clock, delay, lambda: None))

    def _release(self, slot: Slot, revision: lc.Revision) -> Release:
        env = {
            "PREVU_URL": slot.name.url,
            "PREVU_HOST": slot.name.host,
            "PREVU_PR": str(slot.identity.number),
            "PREVU_SHA": revision.sha,
            "PREVU_BRANCH": revision.branch,
            "PREVU_REPO": slot.identity.repo,
        }
        repo = slot.identity.repo.lower()
        trusted = not slot.untrusted
        # Precedence on a clash: PREVU_* > [[repos]] secrets > [[repos]] env > .prevu.toml env
        # (the runtime lays `run_env` over the model's env and `env` over both).
        run_env = dict(self.settings.repo_env.get(repo, {}))
        if trusted:
            run_env.update(self.settings.repo_secrets.get(repo, {}))
        return Release(
            slot.id,
            revision,
            slot.name.host,
            slot.identity.labels(),
            env,
            run_env=run_env,
            build_secrets=self.settings.repo_build_secrets.get(repo, {}) if trusted else {},
            cache=f"{slot.identity.forge}/{repo}" if trusted else None,
        )

    # --- build --------------------------------------------------------------------------

    async def build(self, slot: Slot, cancel: CancelToken, report: Report) -> lc.Event:
        """Wait for a build slot, fetch, read `.prevu.toml`, build: Built or BuildFailed."""
        revision = cancel.revision
        assert revision is not None
        try:
            await ensureDeferred(cancel.wait(self._semaphore.acquire()))
        except Superseded:
            return lc.BuildFailed(revision, "superseded before it started")
        started = time.monotonic()
        try:
            self._wanted(slot, cancel)
            report(lc.BuildStarted(revision))
            if slot.wipe:
                await self._wipe(slot, cancel)
            built, settings = await self._fetch_and_build(slot, cancel, revision)
        except Superseded:
            self._result("cancelled", started)
            return lc.BuildFailed(revision, "superseded or closed")
        except (GitError, DockerError, RepoConfigError) as error:
            self.note(slot, "system", f"build failed: {error}")
            self._result("failed", started)
            return lc.BuildFailed(revision, str(error))
        finally:
            self._semaphore.release()
            await self.git.remove_workspace(slot.id)
        self._result("succeeded", started)
        slot.built[built.image] = built
        if settings.access is not None and settings.access != slot.access:
            slot.access = settings.access
        return lc.Built(revision, built.image)

    async def _wipe(self, slot: Slot, cancel: CancelToken) -> None:
        """Reset: remove every container, image, network and volume of the preview first."""
        self.note(slot, "system", "reset: removing the preview's containers and volumes")
        await self.retrying(slot, cancel, lambda: self.runtime.remove(slot.id, data=True))
        slot.wipe = False
        slot.seeded = False
        self.note(slot, "system", "reset: data removed; starting the same commit again")

    def _result(self, result: str, started: float) -> None:
        self.metrics.inc("prevu_builds_total", result=result)
        self.metrics.inc("prevu_build_seconds_total", time.monotonic() - started)

    async def _fetch_and_build(
        self, slot: Slot, cancel: CancelToken, revision: lc.Revision
    ) -> tuple[Built, RepoSettings]:
        self.note(slot, "system", f"fetching {slot.ref} at {revision.sha}")
        token = self.settings.clone_token(slot.identity.forge)
        if self.settings.clone_token_source is not None:
            fresh = self.settings.clone_token_source(slot.identity.forge, slot.identity.repo)
            token = await cancel.wait(fresh) or token
        source = GitSource(
            url=slot.clone_url,
            ref=slot.ref,
            sha=revision.sha,
            token=token,
            username=self.settings.clone_username(slot.identity.forge),
            timeout=self.settings.fetch_timeout,
        )
        checkout = await cancel.wait(self.git.fetch(source, slot.id))
        self._wanted(slot, cancel)
        settings = parse_repo_config(_read_repo_file(checkout.path), self.settings.limits)
        release = self._release(slot, revision)
        if settings.compose is not None:
            model = await self._compose_model(slot, cancel, checkout.path, settings, release)
        else:
            model = _checked(checkout.path, settings)
        built = await self.retrying(
            slot,
            cancel,
            lambda: self.runtime.build(model, release, lambda line: self.note(slot, "build", line)),
        )
        return built, settings

    async def _compose_model(
        self, slot: Slot, cancel: CancelToken, path: str, settings: RepoSettings, release: Release
    ) -> AppModel:
        """The checked model of the PR head's compose file (issue 17), read by the runtime."""
        load = getattr(self.runtime, "load_compose", None)
        if load is None:
            raise RepoConfigError("compose", "this prevu server does not run Compose previews")
        model: AppModel = await cancel.wait(
            load(path, settings, release, lambda line: self.note(slot, "build", line))
        )
        self._wanted(slot, cancel)
        return model

    # --- start, suspend, resume ---------------------------------------------------------

    async def start(self, slot: Slot, cancel: CancelToken, image: str) -> lc.Event:
        """Start what was built into `image` and wait until healthy: Started or StartFailed."""
        revision = cancel.revision
        assert revision is not None
        built = slot.built.get(image) or _prebuilt(self._release(slot, revision), image)
        if built.release.revision != revision:
            built = evolve(built, release=self._release(slot, revision))
        deployed: Deployed | None = None
        try:
            self._wanted(slot, cancel)
            deployed = await self.retrying(slot, cancel, lambda: self.runtime.start(built))
            endpoint = deployed.endpoint
            self.note(
                slot,
                "system",
                f"container {deployed.container} at {endpoint.host}:{endpoint.port}",
            )
            await self._until_healthy(slot, cancel, deployed)
            self._wanted(slot, cancel)
            await self._data(slot, cancel, built.model, deployed)
        except Superseded:
            await self._remove_quietly(deployed)
            return lc.StartFailed(revision, "superseded or closed")
        except DockerError as error:
            await self._remove_quietly(deployed)
            self.note(slot, "system", f"start failed: {error}")
            return lc.StartFailed(revision, str(error))
        except Unhealthy as error:
            await self._keep_run_logs(slot, deployed)
            await self._remove_quietly(deployed)
            self.note(slot, "system", str(error))
            return lc.StartFailed(revision, str(error))
        except data.DataFailed as error:
            await self._remove_quietly(deployed)
            reason = self._mask(str(error))
            return lc.StartFailed(revision, reason, on_push=error.step == "on_push")
        endpoint = deployed.endpoint
        return lc.Started(
            lc.Deployment(
                revision, deployed.container, image, endpoint.host, endpoint.port, _extra(deployed)
            )
        )

    async def _data(
        self, slot: Slot, cancel: CancelToken, model: AppModel, deployed: Deployed
    ) -> None:
        """`[data]`: on_push on every start, then seed once per preview (docs/data.md)."""

        def note(stream: LogStream, line: str) -> None:
            self.note(slot, stream, line)

        if model.on_push:
            await data.run_step(self.runtime, cancel, deployed, "on_push", model.on_push, note)
            self._wanted(slot, cancel)
        if model.seed and not slot.seeded:
            await data.run_step(self.runtime, cancel, deployed, "seed", model.seed, note)
            slot.seeded = True

    async def _until_healthy(self, slot: Slot, cancel: CancelToken, deployed: Deployed) -> None:
        deadline = self.clock.seconds() + self.settings.start_timeout
        while True:
            self._wanted(slot, cancel)
            health = await self.retrying(slot, cancel, lambda: self.runtime.health(deployed))
            if health.healthy:
                return
            if not health.running:
                raise Unhealthy(_exited(health))
            if self.clock.seconds() >= deadline:
                path = deployed.health
                what = f"GET {path} < 500" if path else "a TCP connection"
                port = deployed.endpoint.port
                timeout = self.settings.start_timeout
                raise Unhealthy(f"no {what} on port {port} within {timeout:g}s")
            await cancel.wait(deferLater(self.clock, self.settings.probe_interval, lambda: None))

    async def _keep_run_logs(self, slot: Slot, deployed: Deployed | None) -> None:
        if deployed is None:
            return
        try:
            lines = await self.runtime.logs(deployed.container, tail=200)
        except DockerError:
            return
        for line in lines:
            self.note(slot, "run", line)

    async def _remove_quietly(self, deployed: Deployed | None) -> None:
        if deployed is None:
            return
        try:
            await self.runtime.discard(tuple(deployed.containers.values()), ())
        except DockerError as error:
            self.log.warn(
                "could not remove container {container}: {error}",
                container=deployed.container,
                error=str(error),
            )

    def deployed(self, slot: Slot, deployment: lc.Deployment) -> Deployed:
        """The runtime's view of the lifecycle's (single-service) deployment."""
        built = slot.built.get(deployment.image)
        model = built.model if built is not None else None
        service = model.front if model is not None else None
        name = service.name if service is not None else APP
        return Deployed(
            preview=slot.id,
            host=slot.name.host,
            exposed=name,
            containers={name: deployment.container},
            images={name: deployment.image},
            endpoints={
                name: Upstream(deployment.address, deployment.port),
                **{s: Upstream(address, port) for s, address, port in deployment.extra},
            },
            health=service.health if service is not None else None,
        )

    async def suspend(self, slot: Slot, cancel: CancelToken, deployment: lc.Deployment) -> lc.Event:
        """Stop the serving deployment (sleep): Suspended, whatever happens."""
        deployed = self.deployed(slot, deployment)
        try:
            await self.retrying(slot, cancel, lambda: self.runtime.stop(deployed))
        except (DockerError, Superseded) as error:
            self.log.warn("could not stop {preview}: {error}", preview=slot.id, error=str(error))
        return lc.Suspended()

    async def resume(self, slot: Slot, cancel: CancelToken, deployment: lc.Deployment) -> lc.Event:
        """Start the stopped deployment again and wait until healthy: Started or StartFailed."""
        try:
            stopped = self.deployed(slot, deployment)
            running = await self.retrying(slot, cancel, lambda: self.runtime.resume(stopped))
            await self._until_healthy(slot, cancel, running)
        except (DockerError, Unhealthy, Superseded) as error:
            return lc.StartFailed(deployment.revision, str(error) or "superseded")
        return lc.Started(
            evolve(deployment, address=running.endpoint.host, extra=_extra(running))
        )

    # --- discard, teardown -------------------------------------------------------------

    async def discard(self, slot: Slot, container: str | None, image: str | None) -> None:
        """Remove an old container and/or image after the drain delay (no event)."""
        if container is not None and self.settings.drain_delay > 0:
            # Requests already forwarded to the old container finish first.
            await deferLater(self.clock, self.settings.drain_delay, lambda: None)
        cancel = CancelToken(None)
        containers = (container,) if container is not None else ()
        images = (image,) if image is not None else ()
        try:
            await self.retrying(slot, cancel, lambda: self.runtime.discard(containers, images))
        except DockerError as error:
            self.log.warn(
                "discard for {preview} failed: {error}", preview=slot.id, error=str(error)
            )

    async def teardown(self, slot: Slot, cancel: CancelToken, report: Report) -> lc.Event:
        """Containers, images, network, then workspace (the route is gone already): TornDown."""
        await self.retrying(slot, cancel, lambda: self.runtime.remove(slot.id, data=True))
        slot.seeded = slot.wipe = False  # the volumes went with it: a revived preview seeds again
        await self.git.remove_workspace(slot.id)
        slot.built.clear()
        self.note(slot, "system", "torn down: no container, image, network or workspace left")
        return lc.TornDown()


def _exited(health: Health) -> str:
    """
    Why a container that stopped before its health check passed failed the
    preview: its exit code when the engine kept one ("container exited with
    code 3 before it was healthy"), else its state ("gone", ...).
    """
    if health.exit_code is not None:
        return f"container exited with code {health.exit_code} before it was healthy"
    return f"container exited before it was healthy ({health.state})"


def _checked(checkout: str, settings: RepoSettings) -> AppModel:
    """The checkout's one-service model, once its Dockerfile and context are known to exist."""
    dockerfile = os.path.join(checkout, settings.dockerfile)
    if not os.path.isfile(dockerfile):
        if settings.dockerfile == RepoSettings().dockerfile:  # not a .prevu.toml choice
            reason = "Dockerfile not found at the top of the repository: commit one, or name "
            raise DockerError("build", reason + "yours with build.dockerfile in .prevu.toml")
        raise RepoConfigError(
            "build.dockerfile", f"{settings.dockerfile} not found in the repository"
        )
    if not os.path.isdir(os.path.join(checkout, settings.context)):
        raise RepoConfigError("build.context", f"{settings.context} is not a directory")
    return single_dockerfile(checkout, settings)


def _extra(deployed: Deployed) -> tuple[tuple[str, str, int], ...]:
    """The (service, address, port) of every exposed service but the front one (Compose)."""
    return tuple(
        (name, upstream.host, upstream.port)
        for name, upstream in sorted(deployed.endpoints.items())
        if name != deployed.exposed
    )


def _prebuilt(release: Release, image: str) -> Built:
    """An image built before a restart (its model is gone): the defaults of `.prevu.toml`."""
    model = AppModel((Service(APP, image=image, port=RepoSettings().port),))
    return Built(release, model, {APP: image})


def _read_repo_file(path: str) -> str | None:
    # A few hundred bytes on local disk, read once per build: not worth a thread hop.
    try:
        with open(os.path.join(path, FILE_NAME), encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise RepoConfigError("", f"cannot read {FILE_NAME}: {error}") from None


def failure_event(slot: Slot, revision: lc.Revision | None, reason: str) -> lc.Event:
    """The event that ends a job that crashed, so that the preview does not stay busy."""
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
