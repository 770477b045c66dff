"""
The Docker engine runtime: `prevu.runtime.Runtime` on one Docker host.

Runs app models with the container-level `prevu.ports.Docker` port (the
Docker SDK adapter `prevu.adapters.docker.DockerEngine` in production, which
keeps every SDK call on prevu's own thread pool). One preview gets one bridge
network `<network>-<instance>-<preview>`; a service's container is
`<network>-<instance>-<preview>-<sha12>-<serial>` (the exposed service) and its image is
tagged `prevu/<preview>:<sha12>-<serial>`. Only single-service models run
here for now; a model with more services is refused with a DockerError.
A service's `volumes` are named volumes `<network>-<instance>-<preview>-<path
slug>-<hash8>` with the preview's labels: the next revision mounts the same
ones (kept across pushes), `remove(preview, data=True)` drops them.
No object is reused or removed by name alone: a network or container found
under a preview's name is checked for `prevu.instance` (and `prevu.preview`)
first, and one of another prevu is refused with a DockerError.

Builds are BuildKit builds (the `Docker` port's `build`, see
`prevu.adapters.buildkit`), with the model's `target` and the release's build
secrets. A release with a `cache` repository also reads and refreshes that
repository's shared cache image `prevu-cache/<repo>:<instance>` (labels
`prevu.cache`, `prevu.cache.at`, no preview label, so removing a preview
leaves it); `prune_caches` removes those of repositories without a preview
after the TTL. Containers get the model's env, then the release's `run_env`
(`[[repos]]` env and secrets), then `PREVU_*`, later winning.
Errors and threading: see `prevu.runtime`.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence

from attrs import define, evolve

from prevu import labels as lb
from prevu.appmodel import APP, AppModel
from prevu.config import DockerConfig, PreviewsConfig
from prevu.errors import DockerError
from prevu.naming import network_name
from prevu.ports import BuildRequest, Docker, ExecResult, LogSink, Managed, RunRequest
from prevu.routing import Upstream
from prevu.runtime import Built, Deployed, Health, HealthChecker, Observed, Release, Runtime

CACHE = "prevu.cache"
"""Label of a repository's shared cache image: the lower-cased repository name."""
CACHE_AT = "prevu.cache.at"
"""Label of a cache image: when it was last refreshed (Unix seconds)."""


@define
class DockerRuntime:
    """
    `Runtime` over the `Docker` port. `network` is the prefix of preview
    networks and containers; `memory` (bytes), `cpus` and `pids` are the
    server's limits (a service may ask for less, never more); `build_timeout`
    and `stop_timeout` are seconds; `instance` scopes listings and removals to this prevu.
    """

    docker: Docker
    health_checker: HealthChecker
    instance: str
    network: str = "prevu"
    memory: int = 512 << 20
    cpus: float = 1.0
    pids: int = 512
    build_timeout: float = 900.0
    stop_timeout: float = 10.0
    """Seconds a container gets to exit after SIGTERM before it is killed (sleep)."""
    restart_limit: int = 0
    """`[previews] restart_limit`: the engine's own restarts of a crashed container (0: none)."""

    @classmethod
    def from_config(
        cls,
        docker: Docker,
        health: HealthChecker,
        config: DockerConfig,
        instance: str,
        restart_limit: int = PreviewsConfig().restart_limit,
    ) -> DockerRuntime:
        """
        The runtime of the `[docker]` table, for the prevu `instance`;
        `restart_limit` is `[previews] restart_limit` (issue 15).
        """
        return cls(
            docker,
            health,
            instance,
            network=config.network,
            memory=config.memory,
            cpus=config.cpus,
            pids=config.pids,
            build_timeout=config.build_timeout,
            restart_limit=restart_limit,
        )

    def cache_tag(self, repository: str) -> str:
        """The shared cache image of `repository` here: `prevu-cache/<repo>:<instance>`."""
        slug = re.sub(r"[^a-z0-9]+", "-", repository.lower()).strip("-") or "repo"
        return f"prevu-cache/{slug}:{self.instance}"

    async def prune_caches(self, keep: frozenset[str], now: float, ttl: float) -> list[str]:
        if ttl <= 0:  # previews.ttl = "0": previews and cache images are never expired
            return []
        managed = await self.docker.list_managed()
        removed: list[str] = []
        for image in managed.images:
            labels = image.labels
            repository = labels.get(CACHE)
            if labels.get(lb.INSTANCE) != self.instance or not repository or repository in keep:
                continue
            try:
                refreshed = float(labels.get(CACHE_AT, "0"))
            except ValueError:
                refreshed = 0.0
            if now - refreshed > ttl:
                await self.docker.remove_image(image.id)
                removed.append(repository)
        return removed

    def network_of(self, preview: str) -> str:
        """The bridge network of `preview` (its name carries the instance)."""
        return network_name(self.network, self.instance, preview)

    def _ensure_ours(self, kind: str, name: str, labels: Mapping[str, str], preview: str) -> None:
        """Raise DockerError unless the object found under `name` is this instance's `preview`."""
        if lb.owned(labels, self.instance) != preview:
            owner = labels.get(lb.INSTANCE) or "nobody (unlabelled)"
            mine = f"{preview} of {self.instance}"
            raise DockerError("run", f"{kind} {name} exists and belongs to {owner}, not to {mine}")

    @staticmethod
    def _single(model: AppModel) -> None:
        if len(model.services) != 1:
            names = ", ".join(service.name for service in model.services)
            raise DockerError("run", f"the docker runtime runs one service, not: {names}")

    async def build(self, model: AppModel, release: Release, log: LogSink) -> Built:
        self._single(model)
        service = model.front
        if service.build is None:
            assert service.image is not None
            return Built(release, model, {service.name: service.image})
        revision = release.revision
        request = BuildRequest(
            context=service.build.context,
            tag=f"prevu/{self.instance}/{release.preview}:{revision.short}-{revision.serial}",
            dockerfile=service.build.dockerfile,
            args=service.build.args,
            prevu_args=release.env,
            labels={**release.labels, lb.SHA: revision.sha},
            memory=self.memory,
            timeout=self.build_timeout,
            target=service.build.target,
            secrets=release.build_secrets,
        )
        if release.cache is not None:
            cache_tag = self.cache_tag(release.cache)
            request = evolve(
                request,
                cache_from=(cache_tag,),
                cache_tag=cache_tag,
                cache_labels={
                    lb.INSTANCE: self.instance,
                    CACHE: release.cache.lower(),
                    CACHE_AT: str(int(time.time())),
                },
            )
        log(f"building {request.tag}")
        image = await self.docker.build(request, log)
        return Built(release, model, {service.name: image.id})

    async def start(self, built: Built) -> Deployed:
        self._single(built.model)
        release, service = built.release, built.model.front
        revision, image = release.revision, built.image
        network = self.network_of(release.preview)
        name = f"{network}-{revision.short}-{revision.serial}"
        created = await self.docker.create_network(network, release.labels)
        self._ensure_ours("network", network, created.labels, release.preview)
        existing = await self.docker.inspect_container(name)
        if existing is not None:
            self._ensure_ours("container", name, existing.labels, release.preview)
            await self.docker.remove_container(existing.id)
        volumes = await self._volumes(release, service.volumes)
        identity = lb.Identity.from_labels(release.labels)
        request = RunRequest(
            image=image,
            name=name,
            network=network,
            port=service.port,
            env={**service.env, **release.run_env, **release.env},
            labels=identity.container_labels(revision, release.host, service.port, image),
            command=service.command,
            memory=min(service.memory or self.memory, self.memory),
            nano_cpus=int(min(service.cpus or self.cpus, self.cpus) * 1e9),
            pids=self.pids,
            volumes=volumes,
            restart_limit=self.restart_limit,
        )
        running = await self.docker.run(request)
        return Deployed(
            preview=release.preview,
            host=release.host,
            exposed=service.name,
            containers={service.name: running.id},
            images={service.name: image},
            endpoints={service.name: Upstream(running.address, running.port)},
            health=service.health,
        )

    def volume_name(self, preview: str, path: str) -> str:
        """The named volume of `preview` mounted at container `path` (kept across pushes)."""
        slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")[:40] or "root"
        digest = hashlib.sha256(path.encode()).hexdigest()[:8]
        return f"{self.network_of(preview)}-{slug}-{digest}"

    async def _volumes(self, release: Release, paths: Sequence[str]) -> dict[str, str]:
        """Create (or find) the preview's named volumes: name → path; refuse another's."""
        volumes: dict[str, str] = {}
        for path in paths:
            name = self.volume_name(release.preview, path)
            found = await self.docker.create_volume(name, release.labels)
            self._ensure_ours("volume", name, found.labels, release.preview)
            volumes[name] = path
        return volumes

    async def health(self, deployed: Deployed) -> Health:
        if await self.health_checker.check(deployed.endpoint, deployed.health, deployed.host):
            return Health(True)
        info = await self.docker.inspect_container(deployed.container)
        if info is None or not info.running:
            if info is None:
                return Health(False, running=False, state="gone")
            return Health(False, running=False, state=info.state, exit_code=info.exit_code)
        return Health(False)

    async def stop(self, deployed: Deployed) -> None:
        for container in deployed.containers.values():
            await self.docker.stop(container, self.stop_timeout)

    async def resume(self, deployed: Deployed) -> Deployed:
        endpoints = dict(deployed.endpoints)
        for service, container in deployed.containers.items():
            running = await self.docker.start(container)
            port = endpoints[service].port if service in endpoints else running.port
            endpoints[service] = Upstream(running.address, port)
        return Deployed(
            deployed.preview,
            deployed.host,
            deployed.exposed,
            deployed.containers,
            deployed.images,
            endpoints,
            deployed.health,
        )

    async def discard(
        self, containers: Sequence[str], images: Sequence[str], networks: Sequence[str] = ()
    ) -> None:
        for container in containers:
            await self.docker.remove_container(container)
        for image in images:
            await self.docker.remove_image(image)
        for network in networks:
            await self.docker.remove_network(network)

    async def remove(self, preview: str, data: bool) -> None:
        owned = await self.list_owned()
        for container in owned.containers:
            if lb.owned(container.labels, self.instance) == preview:
                await self.docker.remove_container(container.id)
        for image in owned.images:
            if lb.owned(image.labels, self.instance) == preview:
                await self.docker.remove_image(image.id)
        networks = {n.name for n in owned.networks if lb.owned(n.labels, self.instance) == preview}
        for network in sorted(networks):
            await self.docker.remove_network(network)
        if data:
            for volume in owned.volumes:
                if lb.owned(volume.labels, self.instance) == preview:
                    await self.docker.remove_volume(volume.name)

    async def exec(self, deployed: Deployed, service: str, argv: Sequence[str]) -> ExecResult:
        container = deployed.containers.get(service)
        if container is None:
            raise DockerError("exec", f"no service {service!r} in preview {deployed.preview}")
        return await self.docker.exec_in(container, argv)

    async def logs(self, container: str, tail: int = 200) -> list[str]:
        return await self.docker.container_logs(container, tail=tail)

    async def observe(self) -> tuple[Observed, ...]:
        owned = await self.list_owned()
        found: list[Observed] = []
        for summary in owned.containers:
            info = await self.docker.inspect_container(summary.id)
            if info is None:
                continue
            found.append(
                Observed(
                    preview=lb.owned(info.labels, self.instance) or "",
                    service=info.labels.get(lb.SERVICE, APP),
                    container=info.id,
                    state=info.state,
                    exit_code=info.exit_code,
                    oom_killed=info.oom_killed,
                    restart_count=info.restart_count,
                    memory=info.memory,
                )
            )
        return tuple(found)

    async def list_owned(self) -> Managed:
        managed = await self.docker.list_managed()

        def ours(labels: Mapping[str, str]) -> bool:
            return lb.owned(labels, self.instance) is not None

        return Managed(
            containers=tuple(c for c in managed.containers if ours(c.labels)),
            networks=tuple(n for n in managed.networks if ours(n.labels)),
            images=tuple(i for i in managed.images if ours(i.labels)),
            volumes=tuple(v for v in managed.volumes if ours(v.labels)),
        )


def _conforms(runtime: DockerRuntime) -> Runtime:
    """mypy checks here that DockerRuntime satisfies the Runtime Protocol."""
    return runtime
