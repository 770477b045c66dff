"""
Docker Swarm: `prevu.runtime.Runtime` across the nodes of a swarm (issue 19,
docs/scale-out.md).

Single-service (Dockerfile or image) models, and Compose models
(`prevu.adapters.swarm_compose`: one Swarm service per Compose service,
checked by the same allowlist as on one host through `compose.load_compose`).
Per preview:

- the image is built where prevu runs (the `DockerRuntime` build path,
  BuildKit), tagged `<registry>/prevu-<instance>/<preview>:<sha12>-<serial>`
  and pushed to `[swarm] registry`; services name it by digest, and the
  service create sends prevu's registry credentials (the SDK's
  `X-Registry-Auth`, as `--with-registry-auth`);
- the preview's own attachable overlay network `<network>-<instance>-<preview>`
  (encrypted with `[swarm] encrypt`), which prevu's own container joins;
- one Swarm service per revision, `<network>-<instance>-<preview>-<sha12>-<serial>`,
  `endpoint_mode dnsrr`, with limits, reservations, `[swarm] constraints`
  (`prevu.swarm.spec`). A new revision is a new service next to the old one:
  prevu health-checks the new task's address, moves the route, then removes
  the old service (the orchestrator's build-start-switch: start-first).

The Runtime's "containers" are Swarm services here: `Deployed.containers`
holds service ids, and `list_owned` reports each service of this instance
as a `ContainerInfo` (the service's labels, its running task's address on
the preview network, "running"/"restarting"/"exited"), so the reconcile
adopts running services after a restart of prevu: served again without
rebuilding. Images and volumes are node-local: `[swarm] nodes` gives each
node's engine, and `remove` removes the preview's images and (with `data`)
volumes on each of them. Errors and threading: see `prevu.runtime`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import docker
import docker.auth
import docker.errors
from attrs import define, evolve, field
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from prevu import labels as lb
from prevu.adapters.docker import (
    force_remove_container,
    force_remove_image,
    force_remove_volume,
    on_pool,
)
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.adapters.registry import Registry, RegistryError
from prevu.adapters.swarm_compose import build_compose, discard_revisions, start_compose
from prevu.appmodel import APP, AppModel
from prevu.config.swarm import SwarmConfig
from prevu.errors import DockerError, RepoConfigError
from prevu.ports import ContainerInfo, ExecResult, LogSink, Managed
from prevu.repoconfig import RepoSettings
from prevu.routing import Upstream
from prevu.runtime import Built, Deployed, Health, Observed, Release, Runtime
from prevu.swarm.compose import swarm_refusal
from prevu.swarm.spec import ServiceState, network_spec, pinned, service_spec
from prevu.swarm.spec import service_state as read_state

T = TypeVar("T")
MANAGED = {lb.MANAGED: "true"}


@define
class SwarmRuntime:
    """
    `Runtime` on a swarm manager's engine. `inner` builds (and owns the local
    image store, caches and the `[docker]` limits); `client` is the
    manager's SDK client (`docker.DockerClient`, used on `pool` only);
    `nodes` maps a node's host name to an SDK client of its engine (for
    node-local images and volumes); `own_container` is prevu's own
    container (it joins every preview network); `start_timeout` seconds a
    new task gets to run.
    """

    inner: DockerRuntime
    reactor: Any
    pool: ThreadPool
    client: Any
    swarm: SwarmConfig
    own_container: str | None = None
    nodes: Mapping[str, Any] = field(factory=dict)
    start_timeout: float = 180.0
    poll: float = 0.5
    labels: Mapping[str, str] = field(factory=dict)
    """Extra labels on every object (e.g. a test session's)."""
    registry: Registry | None = None
    """Where closed previews' images are deleted from (None: they stay in the registry)."""
    log: Logger = field(factory=Logger, eq=False)
    compose: Any = None
    """A `ComposeRuntime` whose `load_compose` checks Compose files (None: Compose refused)."""
    compose_memory: int | None = None
    """The budget of a Compose preview (bytes, `[docker] compose_memory`; None: `memory`)."""
    _digests: dict[str, str] = field(factory=dict, init=False)
    _node_ids: dict[int, str] = field(factory=dict, init=False)

    # --- plumbing -------------------------------------------------------------------

    async def _call(self, operation: str, function: Callable[..., T], *args: Any) -> T:
        return await on_pool(self.reactor, self.pool, operation, function, *args)

    async def _sleep(self) -> None:
        await deferLater(self.reactor, self.poll, lambda: None)

    @property
    def instance(self) -> str:
        return self.inner.instance

    def _labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        return {**labels, **self.labels, **MANAGED}

    def repository(self, preview: str) -> str:
        """The preview's repository in the registry (no host): `prevu-<instance>/<preview>`."""
        path = (self.swarm.registry or "").rstrip("/").partition("/")[2]
        return "/".join(filter(None, (path, f"prevu-{self.instance}", preview))).lower()

    def reference(self, release: Release, service: str = "") -> str:
        """
        Where the release's image is pushed: `<registry>/prevu-<instance>/<preview>:<tag>`,
        the tag `<sha12>-<serial>` (prefixed `<service>-` for a Compose service's).
        """
        revision = release.revision
        host = (self.swarm.registry or "").partition("/")[0]
        tag = "-".join(filter(None, (service, revision.short, str(revision.serial))))
        return f"{host}/{self.repository(release.preview)}:{tag}".lower()

    def network_of(self, preview: str) -> str:
        return self.inner.network_of(preview)

    def _ensure_ours(self, kind: str, name: str, labels: Mapping[str, str], preview: str) -> None:
        self.inner._ensure_ours(kind, name, labels, preview)

    # --- Runtime ------------------------------------------------------------------------

    async def load_compose(
        self, checkout: str, settings: RepoSettings, release: Release, log: LogSink
    ) -> AppModel:
        """
        The checked model of the compose file (the same allowlist and refusals
        as on one host, `ComposeRuntime.load_compose`), refused too when Swarm
        cannot run it (`prevu.swarm.compose.swarm_refusal`). RepoConfigError.
        """
        if self.compose is None:
            raise RepoConfigError("compose", "this prevu server does not run Compose previews")
        model: AppModel = await self.compose.load_compose(checkout, settings, release, log)
        assert model.compose is not None
        refusal = swarm_refusal(model.compose.app)
        if refusal is not None:
            raise RepoConfigError("compose", refusal)
        return model

    async def build(self, model: AppModel, release: Release, log: LogSink) -> Built:
        if model.compose is not None:
            return await build_compose(self, model, release, log)
        if len(model.services) != 1:
            raise DockerError("run", "the swarm runtime runs one service or a Compose model")
        built = await self.inner.build(model, release, log)
        if model.front.build is None:
            return built  # an image to pull: every node pulls it itself
        await self.push(built.image, self.reference(release), log)
        return built

    async def push(self, image: str, reference: str, log: LogSink) -> str:
        """Tag local `image` as `reference`, push it; `reference@digest` (remembered per image)."""
        repository, _, tag = reference.rpartition(":")
        log(f"pushing {reference}")

        def push() -> str:
            api = self.client.api
            api.tag(image, repository, tag)
            digest = ""
            for chunk in api.push(repository, tag, stream=True, decode=True):
                if "error" in chunk:
                    raise DockerError("push", str(chunk.get("error")))
                aux = chunk.get("aux") or {}
                digest = aux.get("Digest", digest)
            return f"{reference}@{digest}" if digest else reference

        self._digests[image] = pushed = await self._call("push", push)
        return pushed

    async def _network(self, release: Release) -> str:
        """Create (or find) the preview's overlay network; its id. prevu's container joins it."""
        name = self.network_of(release.preview)
        spec = network_spec(name, self._labels(release.labels), self.swarm.encrypt)

        def ensure() -> tuple[str, dict[str, str]]:
            api = self.client.api
            found = api.networks(names=[name])
            found = [n for n in found if n.get("Name") == name]
            if found:
                network = api.inspect_network(found[0]["Id"])
            else:
                created = api.create_network(
                    name,
                    driver="overlay",
                    attachable=True,
                    labels=spec["Labels"],
                    options=spec["Options"],
                    check_duplicate=True,
                )
                network = api.inspect_network(created["Id"])
            if self.own_container is not None:
                try:
                    api.connect_container_to_network(self.own_container, network["Id"])
                except docker.errors.APIError as error:
                    # "already exists" (bridge) or "is already attached" (overlay)
                    if "already" not in str(error.explanation or error):
                        raise
            return str(network["Id"]), dict(network.get("Labels") or {})

        network_id, labels = await self._call("network create", ensure)
        self._ensure_ours("network", name, labels, release.preview)
        return network_id

    async def _tasks(self, service: str) -> list[dict[str, Any]]:
        def tasks() -> list[dict[str, Any]]:
            return list(self.client.api.tasks(filters={"service": service}))

        return await self._call("tasks", tasks)

    async def _wait_running(
        self, service: str, network_id: str, old: frozenset[str] = frozenset()
    ) -> ServiceState:
        """
        Poll the service's tasks (but the `old` task ids: those before a scale-up)
        until one runs with an address; DockerError when one fails or on timeout.
        """
        waited = 0.0
        state = ServiceState("restarting")
        while waited < self.start_timeout:
            tasks = [t for t in await self._tasks(service) if t.get("ID") not in old]
            state = read_state(tasks, network_id) if tasks else ServiceState("restarting")
            if state.state == "running" and state.address:
                return state
            if state.state == "exited" and state.error:
                raise DockerError("run", f"the service's task failed: {state.error}")
            await self._sleep()
            waited += self.poll
        raise DockerError("run", f"no task running after {self.start_timeout:g}s ({state.state})")

    async def _holder(self, preview: str) -> str | None:
        """The node running a stateful service of `preview` now (its volumes live there)."""
        owned = await self._services()
        for service in owned:
            labels = (service.get("Spec") or {}).get("Labels") or {}
            if lb.owned(labels, self.instance) != preview:
                continue
            mounts = ((service["Spec"].get("TaskTemplate") or {}).get("ContainerSpec") or {}).get(
                "Mounts"
            ) or ()
            if not mounts:
                continue
            state = read_state(await self._tasks(service["ID"]), "")
            if state.node:
                return state.node
        return None

    async def start(self, built: Built) -> Deployed:
        model = built.model
        if model.compose is not None:
            return await start_compose(self, built)
        if len(model.services) != 1:
            raise DockerError("run", "the swarm runtime runs one service or a Compose model")
        release, service = built.release, model.front
        revision, image = release.revision, built.image
        network_id = await self._network(release)
        network = self.network_of(release.preview)
        name = f"{network}-{revision.short}-{revision.serial}"
        identity = lb.Identity.from_labels(release.labels)
        labels = self._labels(
            {
                **identity.container_labels(revision, release.host, service.port, image),
                lb.SERVICE: service.name,
            }
        )
        volumes = {self.inner.volume_name(release.preview, path): path for path in service.volumes}
        holder = await self._holder(release.preview) if volumes else None
        pushed = service.build is not None or image.startswith("sha256:")
        # A local image id (prevu restarted, or a recreate): its pushed tag in the registry.
        reference = self._digests.get(image) or (self.reference(release) if pushed else image)
        spec = service_spec(
            name=name,
            image=reference,
            network=network_id,
            labels=labels,
            env={**service.env, **release.run_env, **release.env},
            command=service.command,
            memory=min(service.memory or self.inner.memory, self.inner.memory),
            cpus=min(service.cpus or self.inner.cpus, self.inner.cpus),
            pids=self.inner.pids,
            volumes=volumes,
            volume_labels=self._labels(release.labels),
            constraints=pinned(self.swarm.constraints, holder),
            restart_limit=self.inner.restart_limit,
            stop_grace=self.inner.stop_timeout,
        )

        def create() -> str:
            api = self.client.api
            with contextlib.suppress(docker.errors.NotFound):
                existing = api.inspect_service(name)
                owner = lb.owned((existing.get("Spec") or {}).get("Labels") or {}, self.instance)
                if owner != release.preview:
                    raise DockerError("run", f"service {name} exists and is not this preview's")
                api.remove_service(existing["ID"])
            template = spec["TaskTemplate"]
            created = api.create_service(
                template,
                name=name,
                labels=spec["Labels"],
                mode=spec["Mode"],
                endpoint_spec=spec["EndpointSpec"],
            )
            return str(created["ID"])

        service_id = await self._call("service create", create)
        state = await self._wait_running(service_id, network_id)
        return Deployed(
            preview=release.preview,
            host=release.host,
            exposed=service.name,
            containers={service.name: service_id},
            images={service.name: image},
            endpoints={service.name: Upstream(state.address, service.port)},
            health=service.health,
        )

    async def health(self, deployed: Deployed) -> Health:
        if await self.inner.health_checker.check(deployed.endpoint, deployed.health, deployed.host):
            return Health(True)
        state = read_state(await self._tasks(deployed.container), "")
        if state.state == "exited":
            return Health(False, running=False, state="exited")
        return Health(False)

    async def _scale(self, service: str, replicas: int) -> None:
        """
        Set the service's replicas; scaling up also forces a new task
        (`ForceUpdate`, as `docker service update --force`): a service whose
        task failed past its restart policy runs again.
        """

        def scale() -> None:
            api = self.client.api
            try:
                info = api.inspect_service(service)
            except docker.errors.NotFound:
                if replicas:
                    raise DockerError("start", f"service {service} is gone") from None
                return
            spec = info["Spec"]
            template = dict(spec["TaskTemplate"])
            if replicas:
                template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
            api.update_service(
                service,
                version=info["Version"]["Index"],
                task_template=template,
                name=spec["Name"],
                labels=spec.get("Labels"),
                mode={"Replicated": {"Replicas": replicas}},
                endpoint_spec=spec.get("EndpointSpec"),
                fetch_current_spec=False,
            )

        await self._call("service scale", scale)

    async def stop(self, deployed: Deployed) -> None:
        for service in deployed.containers.values():
            await self._scale(service, 0)

    async def resume(self, deployed: Deployed) -> Deployed:
        endpoints = dict(deployed.endpoints)
        network_id = await self._network_id(deployed.preview)
        for name, service in deployed.containers.items():
            before = frozenset(str(t.get("ID")) for t in await self._tasks(service))
            await self._scale(service, 1)
            state = await self._wait_running(service, network_id, before)
            port = endpoints[name].port if name in endpoints else 8080
            endpoints[name] = Upstream(state.address, port)
        return evolve(deployed, endpoints=endpoints)

    async def _network_id(self, preview: str) -> str:
        name = self.network_of(preview)

        def find() -> str:
            found = [n for n in self.client.api.networks(names=[name]) if n.get("Name") == name]
            return str(found[0]["Id"]) if found else ""

        return await self._call("network inspect", find)

    async def _remove_services(self, services: Sequence[str]) -> None:
        def remove() -> None:
            for service in services:
                with contextlib.suppress(docker.errors.NotFound):
                    self.client.api.remove_service(service)

        await self._call("service remove", remove)

    async def _remove_network(self, name: str) -> None:
        """Remove a network once its tasks' containers are gone (they leave it after removal)."""
        waited = 0.0
        while True:
            try:
                await self.inner.docker.remove_network(name)
                return
            except DockerError as error:
                if waited >= self.start_timeout or "active endpoints" not in error.reason:
                    raise
            await self._sleep()
            waited += self.poll

    async def discard(
        self, containers: Sequence[str], images: Sequence[str], networks: Sequence[str] = ()
    ) -> None:
        await self._remove_services(await discard_revisions(self, list(containers)))
        for image in images:
            await self.inner.docker.remove_image(image)
        for network in networks:
            await self._remove_network(network)

    async def remove(self, preview: str, data: bool) -> None:
        services = [
            s["ID"]
            for s in await self._services()
            if lb.owned((s.get("Spec") or {}).get("Labels") or {}, self.instance) == preview
        ]
        await self._remove_services(services)
        for service in services:
            await self._wait_gone(service)

        def swarm_objects() -> None:
            api = self.client.api
            label = f"{lb.PREVIEW}={preview}"
            for secret in api.secrets(filters={"label": label}):
                if lb.owned(secret["Spec"].get("Labels") or {}, self.instance) == preview:
                    api.remove_secret(secret["ID"])
            for config in api.configs(filters={"label": label}):
                if lb.owned(config["Spec"].get("Labels") or {}, self.instance) == preview:
                    api.remove_config(config["ID"])

        await self._call("secret remove", swarm_objects)
        await self._delete_pushed(preview)
        await self.inner.remove(preview, data)  # the manager's images, networks, volumes
        for name, client in self.nodes.items():
            await self._call(
                f"node {name} cleanup", _node_cleanup, client, self.instance, preview, data
            )

    async def _delete_pushed(self, preview: str) -> None:
        """Delete the preview's images from the registry; a failure is logged, never raised."""
        if self.registry is None:
            return
        repository = self.repository(preview)
        try:
            deleted = await deferToThreadPool(
                self.reactor, self.pool, self.registry.delete_repository, repository
            )
        except RegistryError as error:
            self.log.warn(
                "registry cleanup of {preview} failed: {error}", preview=preview, error=str(error)
            )
            return
        if deleted:
            self.log.info(
                "deleted {count} images of {preview} from the registry",
                count=len(deleted),
                preview=preview,
            )

    async def _wait_gone(self, service: str) -> None:
        """
        Wait until the removed service's tasks are gone (bounded): Swarm answers
        "not found" once the service itself is gone; containers a node still holds
        are removed by the node cleanup, networks wait for their endpoints.
        """
        waited = 0.0
        while waited < self.start_timeout:
            try:
                tasks = await self._tasks(service)
            except DockerError as error:
                if "not found" in error.reason:
                    return
                raise
            if not tasks:
                return
            await self._sleep()
            waited += self.poll

    async def exec(self, deployed: Deployed, service: str, argv: Sequence[str]) -> ExecResult:
        """
        Run `argv` in the running task's container, on the engine of the node it
        runs on: the manager's, or the `[swarm] nodes` engine whose swarm node id
        is the task's (DockerError when that node's engine is not configured).
        """
        target = deployed.containers.get(service)
        if target is None:
            raise DockerError("exec", f"no service {service!r} in preview {deployed.preview}")
        state = read_state(await self._tasks(target), "")
        if state.state != "running" or not state.container:
            raise DockerError("exec", f"service {service!r} has no running task")

        def run() -> ExecResult:
            client = self._engine_of(state.node)
            api = client.api
            created = api.exec_create(state.container, list(argv), stdout=True, stderr=True)
            output = api.exec_start(created["Id"])
            code = api.exec_inspect(created["Id"]).get("ExitCode")
            return ExecResult(
                int(code if code is not None else -1), output.decode("utf-8", "replace")
            )

        return await self._call("exec", run)

    def _engine_of(self, node: str) -> Any:
        """The SDK client of the engine of swarm node `node` (worker threads only)."""
        for client in (self.client, *self.nodes.values()):
            found = self._node_ids.get(id(client))
            if found is None:
                found = str((client.info().get("Swarm") or {}).get("NodeID", ""))
                self._node_ids[id(client)] = found
            if found == node:
                return client
        raise DockerError(
            "exec", f"the task runs on node {node}, whose engine is not in [swarm] nodes"
        )

    async def logs(self, container: str, tail: int = 200) -> list[str]:
        def logs() -> list[str]:
            try:
                raw = self.client.api.service_logs(
                    container, stdout=True, stderr=True, tail=tail, follow=False
                )
            except docker.errors.NotFound:
                return []
            text = b"".join(raw) if not isinstance(raw, bytes) else raw
            return text.decode("utf-8", "replace").splitlines()

        return await self._call("service logs", logs)

    async def _services(self) -> list[dict[str, Any]]:
        def services() -> list[dict[str, Any]]:
            listed = self.client.api.services(filters={"label": f"{lb.INSTANCE}={self.instance}"})
            return [s for s in listed if (s.get("Spec") or {}).get("Labels", {}).get(lb.MANAGED)]

        return await self._call("service list", services)

    async def _as_containers(self) -> list[tuple[ContainerInfo, ServiceState]]:
        found = []
        networks: dict[str, str] = {}
        for service in await self._services():
            labels = (service.get("Spec") or {}).get("Labels") or {}
            preview = lb.owned(labels, self.instance)
            if preview is None:
                continue
            name = self.network_of(preview)
            if name not in networks:
                networks[name] = await self._network_id(preview)
            state = read_state(await self._tasks(service["ID"]), networks[name])
            replicas = ((service.get("Spec") or {}).get("Mode") or {}).get("Replicated") or {}
            if replicas.get("Replicas") == 0:
                state = ServiceState("exited", node=state.node)
            info = ContainerInfo(
                id=service["ID"],
                name=service["Spec"]["Name"],
                image=labels.get(lb.IMAGE, ""),
                state=state.state,
                labels=labels,
                networks={name: state.address} if state.address else {},
                exit_code=state.exit_code,
                restart_count=state.restarts,
            )
            found.append((info, state))
        return found

    async def observe(self) -> tuple[Observed, ...]:
        return tuple(
            Observed(
                preview=lb.owned(info.labels, self.instance) or "",
                service=info.labels.get(lb.SERVICE, APP),
                container=info.id,
                state=info.state,
                exit_code=info.exit_code,
                restart_count=info.restart_count,
            )
            for info, _ in await self._as_containers()
        )

    async def list_owned(self) -> Managed:
        local = await self.inner.list_owned()
        services = tuple(info for info, _ in await self._as_containers())
        return Managed(
            containers=services,
            networks=local.networks,
            images=local.images,
            volumes=local.volumes,
        )

    async def prune_caches(self, keep: frozenset[str], now: float, ttl: float) -> list[str]:
        return await self.inner.prune_caches(keep, now, ttl)


def _node_cleanup(client: Any, instance: str, preview: str, data: bool) -> None:
    """
    On one node's engine (after the preview's services are removed): remove its
    task containers still there, its images, and its volumes with `data`.
    An engine error propagates (the remove job retries).
    """
    api = client.api
    label = f"{lb.PREVIEW}={preview}"
    for container in api.containers(all=True, filters={"label": label}):
        if lb.owned(container.get("Labels") or {}, instance) == preview:
            force_remove_container(api, container["Id"])  # Swarm may be removing it too
    for image in api.images(filters={"label": label}):
        if lb.owned(image.get("Labels") or {}, instance) == preview:
            force_remove_image(api, image["Id"])
    if data:
        for volume in (api.volumes(filters={"label": label}) or {}).get("Volumes") or ():
            if lb.owned(volume.get("Labels") or {}, instance) == preview:
                force_remove_volume(api, volume["Name"])


def _conforms(runtime: SwarmRuntime) -> Runtime:
    """mypy checks here that SwarmRuntime satisfies the Runtime Protocol."""
    return runtime
