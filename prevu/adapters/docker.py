"""
The Docker adapter: `prevu.ports.Docker` on the Docker SDK.

The SDK blocks, so every call runs on prevu's own `ThreadPool` through
`deferToThreadPool(reactor, pool, ...)`; results come back on the reactor
thread. Nothing here touches the reactor from a worker thread in any other way.

Builds are BuildKit builds through the Docker CLI (`prevu.adapters.buildkit`),
not the SDK's build endpoint (the classic builder): a process group of its
own, streamed line by line on the reactor thread, ended by a timeout or a
cancelled Deferred, with a clean environment and prevu's own DOCKER_CONFIG.
BuildKit exports only the final image: no stage or intermediate image stays.

How prevu reaches a container: each preview has a network of its own. prevu
on the host dials the container's IP address on that network through the
bridge. prevu inside a container (detected from `/.dockerenv` and the engine
knowing the container, or named in `self_container`) first joins that network
and then dials the same address. See docs/docker.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import requests.exceptions
from attrs import define, evolve, field
from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from prevu.adapters.buildkit import (
    BuildKitCli,
    CliBuild,
    clean_environment,
    find_builder,
    prepare_docker_config,
)
from prevu.errors import DockerError, DockerUnavailable
from prevu.ports import (
    BuildRequest,
    ContainerInfo,
    Docker,
    ExecResult,
    Image,
    ImageInfo,
    LogSink,
    Managed,
    NetworkInfo,
    RunningContainer,
    RunRequest,
    VolumeInfo,
)

T = TypeVar("T")

MANAGED = {"prevu.managed": "true"}
MANAGED_FILTER = {"label": "prevu.managed=true"}
_ARG = re.compile(r"^\s*ARG\s+(.+)$", re.IGNORECASE)
_ARG_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(=.*)?$")


def declared_build_args(dockerfile: str) -> frozenset[str]:
    """The names a Dockerfile declares with `ARG` (`ARG A`, `ARG B=1`, `ARG C D=2`)."""
    names: set[str] = set()
    joined = re.sub(r"\\\r?\n", " ", dockerfile)
    for line in joined.splitlines():
        match = _ARG.match(line)
        if match is None:
            continue
        for word in match.group(1).split():
            name = _ARG_NAME.match(word)
            if name:
                names.add(name.group(1))
    return frozenset(names)


def build_args(request: BuildRequest, dockerfile: str) -> dict[str, str]:
    """The build args for `request`: all of `args`, and the declared ones of `prevu_args`."""
    declared = declared_build_args(dockerfile)
    chosen = dict(request.args)
    chosen.update({k: v for k, v in request.prevu_args.items() if k in declared})
    return chosen


def dockerfile_path(context: str, dockerfile: str) -> str:
    """The Dockerfile's real path, refusing one outside the build context."""
    root = os.path.realpath(context)
    path = os.path.realpath(os.path.join(root, dockerfile))
    if os.path.commonpath([root, path]) != root:
        raise DockerError("build", f"the Dockerfile {dockerfile!r} is outside the build context")
    if not os.path.isfile(path):
        raise DockerError("build", f"no Dockerfile {dockerfile!r} in the build context")
    return path


def _translate(operation: str, error: Exception) -> Exception:
    """A DockerError (or DockerUnavailable) for an exception from the SDK."""
    if isinstance(error, DockerError | CancelledError):
        return error
    if isinstance(error, requests.exceptions.ConnectionError | ConnectionError):
        return DockerUnavailable(operation, f"cannot reach the Docker engine: {error}")
    if isinstance(error, docker.errors.APIError):
        explanation = error.explanation or str(error)
        if isinstance(explanation, bytes):
            explanation = explanation.decode("utf-8", "replace")
        return DockerError(operation, str(explanation))
    if isinstance(error, docker.errors.DockerException):
        # from_env() and friends raise this when the socket is missing or refuses.
        return DockerUnavailable(operation, str(error))
    if isinstance(error, requests.exceptions.RequestException | OSError):
        return DockerUnavailable(operation, str(error))
    return DockerError(operation, f"{type(error).__name__}: {error}")


async def on_pool(
    reactor: Any, pool: ThreadPool, operation: str, function: Callable[..., T], *args: Any
) -> T:
    """
    `function(*args)` run on `pool` (blocking SDK calls), its result back on
    the reactor thread.

    :raises DockerError: what the SDK raised, translated (`DockerUnavailable`
        when the engine cannot be reached), naming `operation`.
    """
    try:
        return await deferToThreadPool(reactor, pool, function, *args)
    except Exception as error:
        raise _translate(operation, error) from error


def force_remove_container(api: Any, container: str) -> None:
    """
    Remove `container` and its anonymous volumes, running or not (a worker
    thread; `api` is an SDK `APIClient`). One already gone, or being removed
    already (by Swarm, say), is no error.
    """
    try:
        api.remove_container(container, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as error:
        if "already in progress" not in str(error.explanation or error):
            raise


def force_remove_image(api: Any, image: str) -> None:
    """Remove `image`, even when tagged or used (a worker thread); one already gone is no error."""
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_image(image, force=True)


def force_remove_volume(api: Any, name: str) -> None:
    """Remove volume `name` (a worker thread); one already gone is no error."""
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_volume(name, force=True)


def in_container_marker() -> bool:
    """True when this process runs inside a container (`/.dockerenv` exists)."""
    return os.path.exists("/.dockerenv")


def own_container_candidates() -> list[str]:
    """Names or ids under which the engine may know this process's container."""
    candidates = [socket.gethostname()]
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            match = re.search(r"/containers/([0-9a-f]{64})/", line)
            if match:
                candidates.append(match.group(1))
                break
    return candidates


@define
class DockerEngine:
    """
    `prevu.ports.Docker` on the Docker SDK.

    `client_kwargs` are given to `docker.DockerClient` (e.g. `base_url`);
    empty means `DOCKER_HOST` or the local socket. `self_container` is
    "auto" (detect), "none" (prevu runs on the host) or the name or id of
    prevu's own container. `labels` go on every object this engine creates,
    on top of `prevu.managed=true` (e.g. a test session's labels).
    """

    def _labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        return {**labels, **self.labels, **MANAGED}

    reactor: Any
    pool: ThreadPool
    client_kwargs: Mapping[str, Any] = field(factory=dict)
    self_container: str = "auto"
    labels: Mapping[str, str] = field(factory=dict)
    cli: str = "auto"
    """`[docker] cli`: "auto" or the path of the Docker client that builds (BuildKit)."""
    docker_config: str | None = None
    """prevu's own DOCKER_CONFIG for builds (None: a fresh empty one, found on first build)."""
    builder: BuildKitCli | None = None
    """The BuildKit client found at start-up (None: found once on first build)."""
    build_cache_max: int | None = None
    """`[docker] build_cache_max` (bytes): prune the engine's build cache after builds."""
    log: Logger = field(factory=Logger, eq=False)
    _finding: Deferred[None] | None = field(default=None, init=False, eq=False)
    _why: str | None = field(default=None, init=False, eq=False)
    _cache_locks: dict[str, DeferredLock] = field(factory=dict, init=False, eq=False)
    _client: Any = field(default=None, init=False, eq=False)
    _self_id: str | bool | None = field(default=False, init=False, eq=False)

    # --- plumbing ---------------------------------------------------------------

    def _kwargs(self) -> dict[str, Any]:
        if self.client_kwargs:
            return dict(self.client_kwargs)
        return dict(docker.utils.kwargs_from_env())

    def _get_client(self) -> Any:
        """The shared client (worker threads only; creating it asks the engine's version)."""
        if self._client is None:
            self._client = docker.DockerClient(**self._kwargs())
        return self._client

    async def _call(self, operation: str, function: Callable[..., T], *args: Any) -> T:
        """Run `function(*args)` on the pool; SDK errors become DockerError (`on_pool`)."""
        return await on_pool(self.reactor, self.pool, operation, function, *args)

    def _own_container(self, client: Any) -> str | None:
        """prevu's own container id when it runs in one (not with host networking)."""
        if self._self_id is not False:
            return self._self_id  # type: ignore[return-value]
        found: str | None = None
        if self.self_container == "none":
            found = None
        elif self.self_container != "auto" or in_container_marker():
            names = (
                own_container_candidates()
                if self.self_container == "auto"
                else [self.self_container]
            )
            for name in names:
                try:
                    attrs = client.api.inspect_container(name)
                except docker.errors.NotFound:
                    continue
                if attrs.get("HostConfig", {}).get("NetworkMode") != "host":
                    found = attrs["Id"]
                break
        self._self_id = found
        return found

    # --- the port -----------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping", lambda: self._get_client().ping()))
        except DockerError:
            return False

    async def _cli(self) -> BuildKitCli:
        """The BuildKit client: the one given at start-up, else found once on first use."""
        if self.builder is None:
            if self._finding is None:
                config = self.docker_config or tempfile.mkdtemp(prefix="prevu-docker-config-")
                host = self.client_kwargs.get("base_url") or os.environ.get("DOCKER_HOST")
                environment = clean_environment(prepare_docker_config(config), host)
                self._finding = Deferred.fromCoroutine(self._find(environment))
            # Each caller waits on a Deferred of its own: cancelling one build never
            # cancels the search the others wait for.
            waiting: Deferred[None] = Deferred()

            def done(result: object) -> object:
                if not waiting.called:
                    waiting.callback(None)
                return result

            self._finding.addBoth(done)
            await waiting
            if self.builder is None:
                raise DockerError("builder", self._why or "no Docker client builds with BuildKit")
        return self.builder

    async def _find(self, environment: Mapping[str, str]) -> None:
        try:
            cli = await find_builder(self.reactor, self.cli, environment)
        except DockerError as error:
            self._why, self._finding = error.reason, None
            return
        self.builder = BuildKitCli(self.reactor, cli, environment)

    async def build(self, request: BuildRequest, on_log: LogSink) -> Image:
        """
        A BuildKit build through the Docker CLI (`prevu.adapters.buildkit`).

        With `request.cache_tag`, the same build runs again once it succeeded
        (every step cached, so it costs an export): it tags the repository's
        cache image with inline cache metadata and `request.cache_labels` only,
        and replaces the previous one.
        """
        path = dockerfile_path(request.context, request.dockerfile)
        with open(path, encoding="utf-8", errors="replace") as handle:
            dockerfile = handle.read()
        cli = await self._cli()
        # Only local images: a missing one would be looked up on a registry (Docker
        # Hub), where anybody could publish an image of that name.
        cache_from = tuple([ref for ref in request.cache_from if await self._image_id(ref)])
        spec = CliBuild(
            context=os.path.realpath(request.context),
            tag=request.tag,
            dockerfile=os.path.relpath(path, os.path.realpath(request.context)),
            labels=self._labels(request.labels),
            args=build_args(request, dockerfile),
            target=request.target,
            secrets=request.secrets,
            cache_from=cache_from,
            inline_cache=request.cache_tag is not None,
            timeout=request.timeout,
        )
        try:
            image_id = await cli.build(spec, on_log)
            if request.cache_tag is not None:
                await self._refresh_cache(cli, spec, request)
            if self.build_cache_max is not None and not await cli.prune(self.build_cache_max):
                self.log.warn("docker builder prune --keep-storage failed")
        except CancelledError:
            # Cancelled as the build finished, while the cache image was refreshed or
            # while the build cache was pruned: nothing may stay tagged.
            await self.remove_image(request.tag)
            raise
        return Image(id=image_id, tag=request.tag)

    async def _refresh_cache(self, cli: BuildKitCli, spec: CliBuild, request: BuildRequest) -> None:
        """
        Tag the repository's cache image: the same build again, every step cached,
        with inline cache metadata and only `cache_labels`; replaces the previous one.
        (Run after the build, not beside it: BuildKit shows a step shared by two
        running builds in one build's log only.) A failure is logged, never raised.
        """
        assert request.cache_tag is not None
        # One refresh per cache image at a time: two builds of one repository must not
        # both read the same "previous" image and leave the other's untagged.
        lock = self._cache_locks.setdefault(request.cache_tag, DeferredLock())
        await lock.acquire()
        try:
            await self._replace_cache(cli, spec, request, request.cache_tag)
        finally:
            lock.release()

    async def _replace_cache(
        self, cli: BuildKitCli, spec: CliBuild, request: BuildRequest, cache_tag: str
    ) -> None:
        old = await self._image_id(cache_tag)
        cache_spec = evolve(spec, tag=cache_tag, labels=self._labels(request.cache_labels))
        try:
            new = await cli.build(cache_spec, lambda line: None)
        except DockerError as error:
            self.log.warn(
                "the cache image {tag} was not refreshed: {error}",
                tag=cache_tag,
                error=str(error),
            )
            return
        if old and old != new:
            await self.remove_image(old)

    async def _image_id(self, reference: str) -> str | None:
        """The id of the image `reference` names, None when there is none."""

        def inspect() -> str | None:
            try:
                return str(self._get_client().api.inspect_image(reference)["Id"])
            except docker.errors.ImageNotFound:
                return None

        return await self._call("image inspect", inspect)

    async def create_network(self, name: str, labels: Mapping[str, str]) -> NetworkInfo:
        def create() -> NetworkInfo:
            api = self._get_client().api
            for existing in api.networks(names=[name]):
                if existing["Name"] == name:
                    return NetworkInfo(existing["Id"], name, existing.get("Labels") or {})
            all_labels = self._labels(labels)
            created = api.create_network(
                name, driver="bridge", labels=all_labels, check_duplicate=True
            )
            return NetworkInfo(created["Id"], name, all_labels)

        return await self._call("network create", create)

    async def run(self, request: RunRequest) -> RunningContainer:
        return await self._call("run", self._run, request)

    def _run(self, request: RunRequest) -> RunningContainer:
        api = self._get_client().api
        host_config = api.create_host_config(
            network_mode=request.network,
            mem_limit=request.memory,
            memswap_limit=request.memory,
            nano_cpus=request.nano_cpus,
            pids_limit=request.pids,
            security_opt=["no-new-privileges:true"],
            privileged=False,
            restart_policy=_restart_policy(request.restart_limit),
            mounts=[
                docker.types.Mount(path, name, type="volume")
                for name, path in sorted(request.volumes.items())
            ]
            or None,
        )
        networking = api.create_networking_config(
            {request.network: api.create_endpoint_config(aliases=[request.name])}
        )
        created = api.create_container(
            image=request.image,
            command=list(request.command) if request.command is not None else None,
            name=request.name,
            environment=dict(request.env),
            labels=self._labels(request.labels),
            host_config=host_config,
            networking_config=networking,
            detach=True,
        )
        try:
            return self._start(created["Id"], request.port)
        except Exception:
            # A container that cannot start is no use to anyone: leave nothing behind.
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(created["Id"], force=True, v=True)
            raise

    async def start(self, container: str) -> RunningContainer:
        return await self._call("start", self._start, container)

    def _start(self, container: str, port: int | None = None) -> RunningContainer:
        client = self._get_client()
        api = client.api
        api.start(container)
        attrs = api.inspect_container(container)
        networks = attrs["NetworkSettings"]["Networks"] or {}
        network = next(iter(networks), "")
        address = networks.get(network, {}).get("IPAddress", "")
        if not attrs["State"].get("Running") or not address:
            tail = api.logs(container, tail=20).decode("utf-8", "replace").strip()
            state = attrs["State"].get("Status")
            if state in ("exited", "restarting", "dead"):
                # `restarting`: it exited and the on-failure policy (self-healing) restarts it
                code = attrs["State"].get("ExitCode")
                reason = f"container exited at once with code {code}: {tail[-2000:]}"
                raise DockerError("run", reason)
            raise DockerError("run", f"container is {state}, not running: {tail[-2000:]}")
        own = self._own_container(client)
        if own is not None:
            self._join(api, own, network)
        labels = attrs["Config"].get("Labels") or {}
        return RunningContainer(
            id=attrs["Id"],
            name=attrs["Name"].lstrip("/"),
            network=network,
            address=address,
            port=port or _label_port(labels),
        )

    @staticmethod
    def _join(api: Any, own: str, network: str) -> None:
        try:
            api.connect_container_to_network(own, network)
        except docker.errors.APIError as error:
            if "already exists" not in str(error.explanation or error):
                raise

    async def stop(self, container: str, timeout: float = 10.0) -> None:
        def stop() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._get_client().api.stop(container, timeout=int(timeout))

        await self._call("stop", stop)

    async def remove_container(self, container: str) -> None:
        await self._call(
            "container remove", lambda: force_remove_container(self._get_client().api, container)
        )

    async def remove_image(self, image: str) -> None:
        await self._call("image remove", lambda: force_remove_image(self._get_client().api, image))

    async def remove_network(self, name: str) -> None:
        def remove() -> None:
            client = self._get_client()
            api = client.api
            own = self._own_container(client)
            if own is not None:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    api.disconnect_container_from_network(own, name, force=True)
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_network(name)

        await self._call("network remove", remove)

    async def inspect_container(self, container: str) -> ContainerInfo | None:
        def inspect() -> ContainerInfo | None:
            try:
                attrs = self._get_client().api.inspect_container(container)
            except docker.errors.NotFound:
                return None
            networks = attrs["NetworkSettings"]["Networks"] or {}
            state = attrs["State"]
            status = state.get("Status", "")
            return ContainerInfo(
                id=attrs["Id"],
                name=attrs["Name"].lstrip("/"),
                image=attrs["Config"].get("Image", ""),
                state=status,
                labels=attrs["Config"].get("Labels") or {},
                networks={n: v.get("IPAddress", "") for n, v in networks.items()},
                # "restarting": the on-failure policy restarts it; ExitCode is its last exit
                exit_code=state.get("ExitCode")
                if status in ("exited", "dead", "restarting")
                else None,
                oom_killed=bool(state.get("OOMKilled")),
                restart_count=int(attrs.get("RestartCount") or 0),
                memory=int(attrs.get("HostConfig", {}).get("Memory") or 0) or None,
            )

        return await self._call("inspect", inspect)

    async def exec_in(self, container: str, argv: Sequence[str]) -> ExecResult:
        def run() -> ExecResult:
            api = self._get_client().api
            created = api.exec_create(container, list(argv), stdout=True, stderr=True)
            output = api.exec_start(created["Id"])
            code = api.exec_inspect(created["Id"]).get("ExitCode")
            text = output.decode("utf-8", "replace")
            return ExecResult(int(code if code is not None else -1), text)

        return await self._call("exec", run)

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        def create() -> VolumeInfo:
            api = self._get_client().api
            try:
                found = api.inspect_volume(name)
            except docker.errors.NotFound:
                found = api.create_volume(name, driver="local", labels=self._labels(labels))
            return VolumeInfo(found["Name"], found.get("Labels") or {})

        return await self._call("volume create", create)

    async def remove_volume(self, name: str) -> None:
        await self._call("volume remove", lambda: force_remove_volume(self._get_client().api, name))

    async def container_logs(self, container: str, tail: int = 200) -> list[str]:
        def logs() -> list[str]:
            try:
                raw = self._get_client().api.logs(container, tail=tail, stdout=True, stderr=True)
            except docker.errors.NotFound:
                return []
            return raw.decode("utf-8", "replace").splitlines()  # type: ignore[no-any-return]

        return await self._call("logs", logs)

    async def list_managed(self) -> Managed:
        def listing() -> Managed:
            api = self._get_client().api
            return Managed(
                containers=tuple(
                    _container(c) for c in api.containers(all=True, filters=MANAGED_FILTER)
                ),
                networks=tuple(
                    NetworkInfo(n["Id"], n["Name"], n.get("Labels") or {})
                    for n in api.networks(filters=MANAGED_FILTER)
                ),
                images=tuple(
                    ImageInfo(i["Id"], tuple(_real_tags(i.get("RepoTags"))), i.get("Labels") or {})
                    for i in api.images(filters=MANAGED_FILTER)
                ),
                volumes=tuple(
                    VolumeInfo(v["Name"], v.get("Labels") or {})
                    for v in (api.volumes(filters=MANAGED_FILTER) or {}).get("Volumes") or ()
                ),
            )

        return await self._call("list", listing)


def _restart_policy(limit: int) -> dict[str, Any]:
    """
    Docker's restart policy for a preview container: `on-failure` with at most
    `limit` restarts (it covers exits with a non-zero code and OOM kills, not
    `docker stop`/`docker kill`), or `no` for 0. See
    https://docs.docker.com/engine/reference/run/#restart-policies---restart
    """
    if limit <= 0:
        return {"Name": "no"}
    return {"Name": "on-failure", "MaximumRetryCount": limit}


def _label_port(labels: Mapping[str, str]) -> int:
    try:
        return int(labels.get("prevu.port", "8080"))
    except ValueError:
        return 8080


def _real_tags(tags: Iterable[str] | None) -> list[str]:
    return [t for t in tags or () if t != "<none>:<none>"]


def _container(summary: Mapping[str, Any]) -> ContainerInfo:
    networks = (summary.get("NetworkSettings") or {}).get("Networks") or {}
    names = summary.get("Names") or ["/"]
    return ContainerInfo(
        id=summary["Id"],
        name=names[0].lstrip("/"),
        image=summary.get("Image", ""),
        state=summary.get("State", ""),
        labels=summary.get("Labels") or {},
        networks={n: v.get("IPAddress", "") for n, v in networks.items()},
    )


def _conforms(engine: DockerEngine) -> Docker:
    """mypy checks here that DockerEngine satisfies the Docker Protocol."""
    return engine
