"""
Compose previews on one Docker host: `prevu.runtime.Runtime` for models with
a `compose` part, delegating single-Dockerfile models to `DockerRuntime`.

`load_compose` reads the PR head's compose file with the real Compose v2 CLI
(`prevu.adapters.compose`, scrubbed environment), checks it through the
allowlist (`prevu.compose.check`) and gives the `AppModel`. `build` builds
every service with a `build` through the `Docker` port (BuildKit, as
single-Dockerfile previews) and copies the files bind-mounted from the
checkout into `state_dir/compose/<preview>/<sha12>-<serial>/files` (a later
push does not change them). `start` writes prevu's own model
(`prevu.compose.write`) and runs `up` twice:

- the stateful services (image-only ones and `[compose] keep`) in the
  project `<network>-keep`, which lives as long as the preview: `up` recreates
  only those whose definition changed, their volumes are prevu's and stay;
- the other services in the project `<network>-<sha12>-<serial>`, one per
  revision, started next to the old revision's, on the same preview network;
  once healthy the route moves and the old revision's project is discarded
  (`discard` of its exposed container runs `down` for its project).

The exposed service's container carries the deployment labels (so that the
reconcile adopts it after a restart); every other container carries
`prevu.part` ("keep" or "revision") and `prevu.compose.project`. `remove`
removes everything labelled with the preview (as `DockerRuntime.remove`) and
its copied files. Errors and threading: see `prevu.runtime`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence

from attrs import define, evolve, field
from twisted.internet.defer import FirstError, ensureDeferred, gatherResults

from prevu import labels as lb
from prevu.adapters.compose import ComposeCli, find_compose
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.appmodel import AppModel, Service, from_compose
from prevu.compose.check import ComposeApp, check_env_files, check_model, inside
from prevu.compose.write import (
    DoesNotFit,
    Placement,
    service_host,
    split_limits,
    urls,
    write_project,
)
from prevu.errors import DockerError, RepoConfigError
from prevu.ports import BuildRequest, ExecResult, LogSink, Managed
from prevu.repoconfig import RepoSettings
from prevu.routing import Upstream
from prevu.runtime import Built, Deployed, Health, Observed, Release, Runtime

PROJECT = lb.PROJECT
PART = lb.PART
PER_REVISION = frozenset({"PREVU_SHA", "PREVU_BRANCH"})
"""Values not given to kept services: they would recreate them on every push."""
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"


async def build_compose_service(
    inner: DockerRuntime,
    release: Release,
    service: Service,
    labels: Mapping[str, str],
    log: LogSink,
) -> str:
    """
    The image of Compose service `service` of `release`: its `image` when it
    has no `build`, else the id of the image `inner` builds (BuildKit, the
    `[docker]` memory and build timeout, the release's build args and
    secrets), tagged `prevu/<instance>/<preview>/<service>:<sha12>-<serial>`
    and labelled `labels`. Used on one host and on Swarm.

    :raises DockerError: the build failed.
    """
    if service.build is None:
        assert service.image is not None
        return service.image
    revision = release.revision
    request = BuildRequest(
        context=service.build.context,
        tag=f"prevu/{inner.instance}/{release.preview}/{service.name}:"
        f"{revision.short}-{revision.serial}",
        dockerfile=service.build.dockerfile,
        args=service.build.args,
        prevu_args=release.env,
        labels=labels,
        memory=inner.memory,
        timeout=inner.build_timeout,
        target=service.build.target,
        secrets=release.build_secrets,
    )
    log(f"building {service.name}: {request.tag}")
    return (await inner.docker.build(request, log)).id


@define
class ComposeRuntime:
    """
    `Runtime` for Compose models over `inner` (a `DockerRuntime`): `cli`
    gives the Compose CLI (found on first use), `state_dir` keeps written
    models and copied files, `memory` is the budget of a multi-service
    preview (bytes, `[docker] compose_memory`, default the server's
    `memory`), `labels` go on every Compose container (e.g. a test
    session's), `restart` is the restart policy of every container.
    """

    inner: DockerRuntime
    cli: Callable[[], Awaitable[ComposeCli]]
    state_dir: str
    memory: int | None = None
    labels: Mapping[str, str] = field(factory=dict)
    restart: str = "no"

    # --- the model -------------------------------------------------------------------

    async def load_compose(
        self, checkout: str, settings: RepoSettings, release: Release, log: LogSink
    ) -> AppModel:
        """The checked `AppModel` of the compose file in `checkout`; RepoConfigError if refused."""
        compose = settings.compose
        assert compose is not None
        file = next((f for f in compose.files if os.path.isfile(os.path.join(checkout, f))), None)
        if file is None:
            raise RepoConfigError("compose.file", f"none of {', '.join(compose.files)} found")
        if not inside(os.path.realpath(os.path.join(checkout, file)), os.path.realpath(checkout)):
            raise RepoConfigError("compose.file", f"{file} is outside the checkout")
        cli = await self.cli()
        prevu_env = dict(release.env)
        try:
            raw = await cli.config(checkout, file, prevu_env, raw=True)
            check_env_files(raw, checkout, os.path.realpath)
            model = await cli.config(checkout, file, prevu_env)
            app = check_model(model, checkout, os.path.realpath)
        except DockerError as error:
            raise RepoConfigError("compose.file", f"{file}: {error.reason}") from None
        try:  # fail before building when the services cannot fit the budget
            split_limits(app.services, self.memory or self.inner.memory, self.inner.cpus)
        except DoesNotFit as error:
            raise RepoConfigError("compose", f"the preview does not fit: {error}") from None
        for line in app.drops:
            log(line)
        try:
            return from_compose(
                app, compose, checkout, settings.health, settings.on_push, settings.seed
            )
        except ValueError as error:
            raise RepoConfigError("compose", str(error)) from None

    # --- names -----------------------------------------------------------------------

    def _base(self, preview: str) -> str:
        return self.inner.network_of(preview)

    def _revision_project(self, release: Release) -> str:
        revision = release.revision
        return f"{self._base(release.preview)}-{revision.short}-{revision.serial}"

    def _dir(self, preview: str, *parts: str) -> str:
        return os.path.join(self.state_dir, "compose", preview, *parts)

    # --- Runtime -----------------------------------------------------------------------

    async def build(self, model: AppModel, release: Release, log: LogSink) -> Built:
        spec = model.compose
        if spec is None:
            return await self.inner.build(model, release, log)
        revision = release.revision
        project = self._revision_project(release)
        labels = {**release.labels, lb.SHA: revision.sha, PROJECT: project}
        images = {
            service.name: await build_compose_service(self.inner, release, service, labels, log)
            for service in model.services
        }
        files = self._dir(release.preview, f"{revision.short}-{revision.serial}", "files")
        binds = {m.source for s in spec.app.services for m in s.mounts if m.kind == "bind"}
        for source in sorted(binds):
            copy = os.path.join(files, os.path.relpath(source, os.path.realpath(spec.checkout)))
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            if os.path.isdir(source):
                # Links stay links (never followed): a link to a host file copies no host file.
                shutil.copytree(source, copy, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(source, copy)
        return Built(release, model, images)

    def _placement(self, built: Built, project: str, part: str) -> Placement:
        release, model = built.release, built.model
        spec = model.compose
        assert spec is not None
        base = self._base(release.preview)
        revision = release.revision
        budget = self.memory or self.inner.memory
        try:
            memory, cpus = split_limits(spec.app.services, budget, self.inner.cpus)
        except DoesNotFit as error:
            raise DockerError("compose", f"the preview does not fit: {error}") from None
        identity = lb.Identity.from_labels(release.labels)
        common = {**release.labels, **self.labels, lb.MANAGED: "true", PROJECT: project}
        service_labels: dict[str, dict[str, str]] = {}
        for service in model.services:
            if service.name == model.exposed and part == "revision":
                image = built.images[service.name]
                service_labels[service.name] = identity.container_labels(
                    revision, release.host, service.port, image
                )
                expose = ",".join(f"{name}:{port}" for name, port in spec.expose.items())
                if expose:
                    service_labels[service.name][lb.EXPOSE] = expose
            else:
                service_labels[service.name] = {PART: part}
            service_labels[service.name][lb.SERVICE] = service.name
        files = self._dir(release.preview, f"{revision.short}-{revision.serial}", "files")
        root = os.path.realpath(spec.checkout)
        binds = {
            m.source: os.path.join(files, os.path.relpath(m.source, root))
            for s in spec.app.services
            for m in s.mounts
            if m.kind == "bind"
        }
        if part == "keep":
            binds = self._keep_binds(release.preview, spec.app, spec.keep, binds)
        exposed = {
            name: release.env.get("PREVU_URL", "").replace(
                release.host, service_host(name, release.host), 1
            )
            for name in spec.expose
        }
        exposed[model.exposed] = release.env.get("PREVU_URL", "")
        return Placement(
            project=project,
            network=base,
            labels=common,
            service_labels=service_labels,
            images=built.images,
            volumes={v: f"{base}-{v}" for v in spec.app.volumes},
            binds=binds,
            env=release.run_env,
            prevu_env={
                **{k: v for k, v in release.env.items() if part != "keep" or k not in PER_REVISION},
                **urls(exposed),
            },
            memory=memory,
            cpus=cpus,
            pids=self.inner.pids,
            restart=self.restart,
        )

    def _keep_binds(
        self, preview: str, app: ComposeApp, keep: Sequence[str], binds: Mapping[str, str]
    ) -> dict[str, str]:
        """
        The kept services' bind mounts from a copy named by its content
        (`keep-<digest>`): the same files on a push give the same definition,
        so that `up` does not recreate them.
        """
        sources = sorted(
            {m.source for s in app.services if s.name in keep for m in s.mounts if m.kind == "bind"}
        )
        if not sources:
            return dict(binds)
        digest = hashlib.sha256()
        for source in sources:
            copy = binds[source]
            walk = os.walk(copy) if os.path.isdir(copy) else [(copy, [], [""])]
            for top, dirs, names in walk:
                dirs.sort()
                for name in sorted(names):
                    path = os.path.join(top, name) if name else top
                    digest.update(os.path.relpath(path, os.path.dirname(copy)).encode() + b"\0")
                    if os.path.islink(path):
                        digest.update(os.readlink(path).encode())
                    elif os.path.isfile(path):
                        with open(path, "rb") as handle:
                            digest.update(handle.read())
                    digest.update(b"\0")
        stable = self._dir(preview, f"keep-{digest.hexdigest()[:16]}")
        result = dict(binds)
        for index, source in enumerate(sources):
            target = os.path.join(stable, str(index), os.path.basename(binds[source]))
            if not os.path.lexists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.isdir(binds[source]):
                    shutil.copytree(binds[source], target, symlinks=True)
                else:
                    shutil.copy2(binds[source], target, follow_symlinks=False)
            result[source] = target
        return result

    async def _up(self, cli: ComposeCli, placement: Placement, model: dict[str, object]) -> None:
        directory = self._dir(placement.labels.get(lb.PREVIEW, "_"), "models")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{placement.project}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(model, handle, indent=1, sort_keys=True)
        await cli.up(path, placement.project)

    async def start(self, built: Built) -> Deployed:
        spec = built.model.compose
        if spec is None:
            return await self.inner.start(built)
        release = built.release
        cli = await self.cli()
        base = self._base(release.preview)
        created = await self.inner.docker.create_network(base, {**release.labels, **self.labels})
        self.inner._ensure_ours("network", base, created.labels, release.preview)
        for volume in spec.app.volumes:
            name = f"{base}-{volume}"
            found = await cli.volume(name, {**release.labels, **self.labels, lb.MANAGED: "true"})
            self.inner._ensure_ours("volume", name, found.get("Labels") or {}, release.preview)
        keep = self._placement(built, f"{base}-keep", "keep")
        if spec.keep:
            await self._up(cli, keep, write_project(spec.app, spec.keep, keep))
        project = self._revision_project(release)
        placement = self._placement(built, project, "revision")
        try:
            await self._up(cli, placement, write_project(spec.app, spec.revisioned, placement))
            return await self._deployed(built, project, f"{base}-keep")
        except BaseException:
            with contextlib.suppress(DockerError):
                await cli.down(project)
            raise

    async def _deployed(self, built: Built, project: str, keep: str) -> Deployed:
        release, model = built.release, built.model
        managed = await self.inner.docker.list_managed()
        containers: dict[str, str] = {}
        for container in managed.containers:
            labels = container.labels
            if lb.owned(labels, self.inner.instance) != release.preview:
                continue
            if labels.get(PROJECT) in (project, keep) and labels.get(COMPOSE_SERVICE):
                containers[labels[COMPOSE_SERVICE]] = container.id
        front = model.front
        spec = model.compose
        exposed = {front.name: front.port, **(spec.expose if spec is not None else {})}
        endpoints = {}
        for name, port in exposed.items():
            if name not in containers:
                raise DockerError("compose up", f"no container for service {name}")
            endpoints[name] = Upstream(await self._address(containers[name]), port)
        # `start` of the running front container: prevu, when it runs in a container,
        # joins the preview's network there (as for single-container previews).
        running = await self.inner.docker.start(containers[front.name])
        endpoints[front.name] = Upstream(running.address, front.port)
        return Deployed(
            preview=release.preview,
            host=release.host,
            exposed=front.name,
            containers=containers,
            images=built.images,
            endpoints=endpoints,
            health=front.health,
        )

    async def _address(self, container: str) -> str:
        info = await self.inner.docker.inspect_container(container)
        address = next((ip for ip in (info.networks.values() if info else ()) if ip), "")
        if not address:
            raise DockerError("compose up", f"container {container[:12]} has no address")
        return address

    async def health(self, deployed: Deployed) -> Health:
        return await self.inner.health(deployed)

    async def _preview_containers(self, deployed: Deployed) -> list[str] | None:
        """
        The containers of a Compose deployment (the kept ones first, then its
        revision's), None when it is not a Compose deployment.
        """
        info = await self.inner.docker.inspect_container(deployed.container)
        if info is None or PROJECT not in info.labels:
            return None
        projects = {info.labels[PROJECT], f"{self._base(deployed.preview)}-keep"}
        managed = await self.inner.docker.list_managed()
        found = [
            c
            for c in managed.containers
            if lb.owned(c.labels, self.inner.instance) == deployed.preview
            and c.labels.get(PROJECT) in projects
        ]
        found.sort(key=lambda c: c.labels.get(PART) != "keep")
        return [c.id for c in found]

    async def stop(self, deployed: Deployed) -> None:
        containers = await self._preview_containers(deployed)
        if containers is None:
            return await self.inner.stop(deployed)
        # At once: each may take the stop timeout (a PID 1 that ignores SIGTERM).
        stops = [
            ensureDeferred(self.inner.docker.stop(container, self.inner.stop_timeout))
            for container in containers
        ]
        try:
            await gatherResults(stops, consumeErrors=True)
        except FirstError as error:
            error.subFailure.raiseException()

    async def _missing(self, deployed: Deployed) -> None:
        """
        Create again the containers of a Compose deployment's services that
        are gone (`docker rm -f`, issue 15): `up --no-recreate` of each of its
        projects (kept first) whose written model names a service with no
        container. DockerError when Compose fails.
        """
        info = await self.inner.docker.inspect_container(deployed.container)
        if info is None or PROJECT not in info.labels:
            return
        preview = deployed.preview
        managed = await self.inner.docker.list_managed()
        for project in (f"{self._base(preview)}-keep", info.labels[PROJECT]):
            path = self._dir(preview, "models", f"{project}.json")
            try:
                with open(path, encoding="utf-8") as handle:
                    written = json.load(handle)
            except FileNotFoundError:
                continue  # no kept service (or a model written before this prevu)
            wanted = set(written.get("services") or {})
            found = {
                c.labels.get(COMPOSE_SERVICE)
                for c in managed.containers
                if lb.owned(c.labels, self.inner.instance) == preview
                and c.labels.get(PROJECT) == project
            }
            if wanted - found:
                await (await self.cli()).up_missing(path, project)

    async def resume(self, deployed: Deployed) -> Deployed:
        await self._missing(deployed)
        containers = await self._preview_containers(deployed)
        if containers is None:
            return await self.inner.resume(deployed)
        for container in containers:
            if container != deployed.container:
                await self.inner.docker.start(container)
        running = await self.inner.docker.start(deployed.container)
        endpoints = dict(deployed.endpoints)
        endpoints[deployed.exposed] = Upstream(running.address, deployed.endpoint.port)
        managed = await self.inner.docker.list_managed()
        by_service = {
            c.labels.get(COMPOSE_SERVICE): c.id for c in managed.containers if c.id in containers
        }
        for name, upstream in deployed.endpoints.items():
            if name != deployed.exposed and name in by_service:
                address = await self._address(str(by_service[name]))
                endpoints[name] = Upstream(address, upstream.port)
        return evolve(deployed, endpoints=endpoints)

    async def discard(
        self, containers: Sequence[str], images: Sequence[str], networks: Sequence[str] = ()
    ) -> None:
        plain: list[str] = []
        downed: set[str] = set()
        for container in containers:
            info = await self.inner.docker.inspect_container(container)
            labels = info.labels if info is not None else {}
            project = labels.get(PROJECT)
            if project is None:
                plain.append(container)
            elif labels.get(PART) == "keep":
                continue  # the stateful services outlive revisions: `remove` takes them
            elif project not in downed:
                downed.add(project)
                await self._down(project)
                self._forget(labels.get(lb.PREVIEW, ""), project)
        await self.inner.discard(plain, images, networks)

    def _forget(self, preview: str, project: str) -> None:
        """Remove a discarded revision's written model and copied files (kept ones stay)."""
        base = self._base(preview)
        if not preview or not project.startswith(base + "-"):
            return
        revision = project[len(base) + 1 :]
        shutil.rmtree(self._dir(preview, revision), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._dir(preview, "models", f"{project}.json"))

    async def _down(self, project: str) -> None:
        cli = await self.cli()
        await cli.down(project, self.inner.stop_timeout)
        managed = await self.inner.docker.list_managed()
        for image in managed.images:
            if image.labels.get(PROJECT) == project and image.labels.get(lb.INSTANCE) == (
                self.inner.instance
            ):
                await self.inner.docker.remove_image(image.id)

    async def remove(self, preview: str, data: bool) -> None:
        await self.inner.remove(preview, data)
        directory = self._dir(preview)
        if os.path.isdir(directory):
            shutil.rmtree(directory, ignore_errors=True)

    async def exec(self, deployed: Deployed, service: str, argv: Sequence[str]) -> ExecResult:
        if service in deployed.containers:
            return await self.inner.exec(deployed, service, argv)
        containers = await self._preview_containers(deployed) or []
        managed = await self.inner.docker.list_managed()
        for summary in managed.containers:
            if summary.id in containers and summary.labels.get(COMPOSE_SERVICE) == service:
                return await self.inner.docker.exec_in(summary.id, argv)
        raise DockerError("exec", f"no service {service!r} in preview {deployed.preview}")

    async def logs(self, container: str, tail: int = 200) -> list[str]:
        return await self.inner.logs(container, tail)

    async def observe(self) -> tuple[Observed, ...]:
        return await self.inner.observe()

    async def list_owned(self) -> Managed:
        return await self.inner.list_owned()

    async def prune_caches(self, keep: frozenset[str], now: float, ttl: float) -> list[str]:
        return await self.inner.prune_caches(keep, now, ttl)


def _conforms(runtime: ComposeRuntime) -> Runtime:
    """mypy checks here that ComposeRuntime satisfies the Runtime Protocol."""
    return runtime


def with_compose(
    inner: DockerRuntime,
    reactor: object,
    state_dir: str,
    configured: str = "auto",
    memory: int | None = None,
    labels: Mapping[str, str] | None = None,
    docker_cli: str | None = None,
    docker_host: str | None = None,
) -> ComposeRuntime:
    """
    `inner` able to run Compose previews too: the Compose CLI of
    `[docker] compose` is found on first use (and kept), its `DOCKER_CONFIG`
    is `state_dir/compose/.docker` (empty: no registry credentials); every
    container restarts `on-failure:<inner.restart_limit>` as single-container
    previews do (`no` when the limit is 0).
    """
    found: list[ComposeCli] = []

    async def cli() -> ComposeCli:
        if not found:
            config_dir = os.path.join(state_dir, "compose", ".docker")
            found.append(
                await find_compose(reactor, config_dir, configured, docker_cli, docker_host)
            )
        return found[0]

    # The same restart policy as single-container previews (issue 15, docs/orchestrator.md).
    limit = inner.restart_limit
    restart = f"on-failure:{limit}" if limit > 0 else "no"
    return ComposeRuntime(inner, cli, state_dir, memory, dict(labels or {}), restart)
