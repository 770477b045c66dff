"""
In-memory fakes of `prevu.ports` (Git, Docker, Store) for the orchestrator's
unit tests. Type-checked against the Protocols (see `_conforms` at the end).

Each fake records what it was asked (`calls`), can be made to fail, and can
*pause* an operation so a test can act while it is in flight (a push during a
build, a close during a fetch):

    docker.pause("build")            # the next builds wait...
    d = Deferred.fromCoroutine(orchestrator_step())
    docker.release("build")          # ...until released (or cancelled)

A paused operation that is cancelled raises CancelledError like the real
adapters do, and is counted in `cancelled`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from attrs import define, evolve, field
from twisted.internet.defer import CancelledError, Deferred

from prevu.adapters.docker_runtime import DockerRuntime
from prevu.errors import DockerError, DockerUnavailable, GitError
from prevu.ports import (
    BuildRequest,
    Checkout,
    ContainerInfo,
    DeliveryEntry,
    Docker,
    ExecResult,
    Git,
    GitSource,
    Image,
    ImageInfo,
    LogLine,
    LogSink,
    LogStream,
    LogWatcher,
    Managed,
    NetworkInfo,
    PreviewRecord,
    RunningContainer,
    RunRequest,
    Store,
    UnverifiedDelivery,
    VolumeInfo,
)
from prevu.runtime import HealthChecker, Runtime

MANAGED = {"prevu.managed": "true"}


@define
class _Pauses:
    """Operations a test has paused, and the Deferreds waiting on them."""

    paused: set[str] = field(factory=set)
    waiting: dict[str, list[Deferred[None]]] = field(factory=dict)
    cancelled: dict[str, int] = field(factory=dict)

    def pause(self, operation: str) -> None:
        self.paused.add(operation)

    def release(self, operation: str) -> None:
        self.paused.discard(operation)
        for waiter in self.waiting.pop(operation, []):
            if not waiter.called:
                waiter.callback(None)

    def pending(self, operation: str) -> int:
        return sum(1 for d in self.waiting.get(operation, []) if not d.called)

    async def wait(self, operation: str) -> None:
        if operation not in self.paused:
            return
        waiter: Deferred[None] = Deferred()
        self.waiting.setdefault(operation, []).append(waiter)
        try:
            await waiter
        except CancelledError:
            self.cancelled[operation] = self.cancelled.get(operation, 0) + 1
            raise


# --- git -----------------------------------------------------------------------


@define
class FakeGit:
    """
    A fake forge plus workspace manager. `remote(url, ref, sha, files)`
    publishes a pull request head; `fetch` writes its files under `root`
    (a real directory, so the orchestrator can read `.prevu.toml`).
    """

    root: str
    refs: dict[tuple[str, str], tuple[str, dict[str, str]]] = field(factory=dict)
    calls: list[tuple[str, str]] = field(factory=list)
    fail: dict[str, str] = field(factory=dict)
    """workspace → reason: the next fetch into it fails with GitError(reason)."""
    pauses: _Pauses = field(factory=_Pauses)
    sources: list[GitSource] = field(factory=list)
    """Every `GitSource` fetched, in order (the credentials a fetch was given)."""

    def remote(self, url: str, ref: str, sha: str, files: Mapping[str, str]) -> None:
        self.refs[(url, ref)] = (sha, dict(files))

    def pause(self, operation: str = "fetch") -> None:
        self.pauses.pause(operation)

    def release(self, operation: str = "fetch") -> None:
        self.pauses.release(operation)

    async def remote_head(self, source: GitSource) -> str:
        self.calls.append(("remote_head", source.ref))
        await self.pauses.wait("remote_head")
        found = self.refs.get((source.url, source.ref))
        if found is None:
            raise GitError("ls-remote", f"{source.ref} does not exist")
        return found[0]

    async def fetch(self, source: GitSource, workspace: str) -> Checkout:
        self.calls.append(("fetch", workspace))
        self.sources.append(source)
        await self.pauses.wait("fetch")
        if workspace in self.fail:
            raise GitError("fetch", self.fail.pop(workspace))
        found = self.refs.get((source.url, source.ref))
        if found is None:
            raise GitError("fetch", f"couldn't find remote ref {source.ref}")
        sha, files = found
        if sha != source.sha:
            raise GitError("fetch", f"{source.ref} is at {sha}, not the expected {source.sha}")
        path = os.path.join(self.root, workspace)
        shutil.rmtree(path, ignore_errors=True)
        for name, content in files.items():
            target = os.path.join(path, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as handle:
                handle.write(content)
        os.makedirs(path, exist_ok=True)
        return Checkout(workspace=workspace, path=path, sha=sha)

    async def remove_workspace(self, workspace: str) -> None:
        self.calls.append(("remove_workspace", workspace))
        shutil.rmtree(os.path.join(self.root, workspace), ignore_errors=True)

    def workspaces(self) -> list[str]:
        try:
            return sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []


# --- docker --------------------------------------------------------------------


@define
class FakeDocker:
    """
    An in-memory engine. `up = False` makes every call raise DockerUnavailable
    (and `ping` answer False), as with a stopped daemon. `build_lines` are fed
    to `on_log`; `fail_build` (tag → reason) fails the next build of that tag;
    `address` decides where a container is reached (default: a fake 10.99.x.y
    at the request's port; point it at a real local server for proxy tests).
    """

    up: bool = True
    build_lines: tuple[str, ...] = ("Step 1/1 : FROM scratch", "Successfully built")
    fail_build: dict[str, str] = field(factory=dict)
    fail_run: dict[str, str] = field(factory=dict)
    address: Callable[[RunRequest], tuple[str, int]] | None = None
    images: dict[str, ImageInfo] = field(factory=dict)
    networks: dict[str, NetworkInfo] = field(factory=dict)
    containers: dict[str, ContainerInfo] = field(factory=dict)
    volumes: dict[str, VolumeInfo] = field(factory=dict)
    exec_answers: dict[tuple[str, ...], ExecResult] = field(factory=dict)
    """argv → what `exec_in` answers (default: exit code 0, no output)."""
    ports: dict[str, int] = field(factory=dict)
    runs: dict[str, RunRequest] = field(factory=dict)
    builds: list[BuildRequest] = field(factory=list)
    calls: list[tuple[str, str]] = field(factory=list)
    pauses: _Pauses = field(factory=_Pauses)
    execs: list[tuple[str, tuple[str, ...]]] = field(factory=list)
    """(container, argv) of every `exec_in`, in order."""
    _counter: int = 0

    def pause(self, operation: str) -> None:
        """Pause the next calls of `operation` ("build", "run", "remove_container", ...)."""
        self.pauses.pause(operation)

    def release(self, operation: str) -> None:
        self.pauses.release(operation)

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    async def _enter(self, operation: str, subject: str) -> None:
        self.calls.append((operation, subject))
        await self.pauses.wait(operation)
        if not self.up:
            raise DockerUnavailable(operation, "cannot reach the Docker engine (fake: down)")

    def _find(self, container: str) -> ContainerInfo | None:
        if container in self.containers:
            return self.containers[container]
        for info in self.containers.values():
            if info.name == container:
                return info
        return None

    async def ping(self) -> bool:
        self.calls.append(("ping", ""))
        return self.up

    async def build(self, request: BuildRequest, on_log: LogSink) -> Image:
        await self._enter("build", request.tag)
        self.builds.append(request)
        for line in self.build_lines:
            on_log(line)
        if request.tag in self.fail_build:
            reason = self.fail_build.pop(request.tag)
            on_log(reason)
            raise DockerError("build", reason)
        image_id = f"sha256:{self._next():064x}"
        self.images[image_id] = ImageInfo(image_id, (request.tag,), {**request.labels, **MANAGED})
        return Image(image_id, request.tag)

    async def create_network(self, name: str, labels: Mapping[str, str]) -> NetworkInfo:
        await self._enter("create_network", name)
        if name not in self.networks:
            self.networks[name] = NetworkInfo(f"net{self._next()}", name, {**labels, **MANAGED})
        return self.networks[name]

    async def run(self, request: RunRequest) -> RunningContainer:
        await self._enter("run", request.name)
        if request.network not in self.networks:
            raise DockerError("run", f"network {request.network} not found")
        if not any(request.image in (i.id, *i.tags) for i in self.images.values()):
            raise DockerError("run", f"No such image: {request.image}")
        if self._find(request.name) is not None:
            raise DockerError("run", f"Conflict. The container name {request.name} is in use")
        if request.name in self.fail_run:
            raise DockerError("run", self.fail_run.pop(request.name))
        number = self._next()
        container_id = f"{number:064x}"
        self.runs[container_id] = request
        self.containers[container_id] = ContainerInfo(
            id=container_id, name=request.name, image=request.image, state="created",
            labels={**request.labels, **MANAGED}, networks={request.network: ""},
        )
        return await self._started(container_id)

    async def _started(self, container_id: str) -> RunningContainer:
        request = self.runs[container_id]
        if self.address is not None:
            address, port = self.address(request)
        else:
            number = int(container_id, 16)
            address, port = f"10.99.{number // 256 % 256}.{number % 256}", request.port
        info = self.containers[container_id]
        self.containers[container_id] = evolve(
            info, state="running", networks={request.network: address}
        )
        self.ports[container_id] = port
        return RunningContainer(container_id, info.name, request.network, address, port)

    async def start(self, container: str) -> RunningContainer:
        await self._enter("start", container)
        info = self._find(container)
        if info is None:
            raise DockerError("start", f"No such container: {container}")
        return await self._started(info.id)

    async def stop(self, container: str, timeout: float = 10.0) -> None:
        await self._enter("stop", container)
        info = self._find(container)
        if info is not None:
            self.containers[info.id] = evolve(info, state="exited")

    async def remove_container(self, container: str) -> None:
        await self._enter("remove_container", container)
        info = self._find(container)
        if info is not None:
            del self.containers[info.id]

    async def remove_image(self, image: str) -> None:
        await self._enter("remove_image", image)
        for image_id, info in list(self.images.items()):
            if image in (image_id, *info.tags):
                del self.images[image_id]

    async def remove_network(self, name: str) -> None:
        await self._enter("remove_network", name)
        self.networks.pop(name, None)

    async def remove_volume(self, name: str) -> None:
        await self._enter("remove_volume", name)
        self.volumes.pop(name, None)

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        await self._enter("create_volume", name)
        if name not in self.volumes:
            self.volumes[name] = VolumeInfo(name, {**labels, **MANAGED})
        return self.volumes[name]

    async def inspect_container(self, container: str) -> ContainerInfo | None:
        await self._enter("inspect_container", container)
        return self._find(container)

    async def exec_in(self, container: str, argv: Sequence[str]) -> ExecResult:
        await self._enter("exec_in", container)
        self.execs.append((container, tuple(argv)))
        info = self._find(container)
        if info is None or not info.running:
            raise DockerError("exec", f"container {container} is not running")
        return self.exec_answers.get(tuple(argv), ExecResult(0, ""))

    async def container_logs(self, container: str, tail: int = 200) -> list[str]:
        await self._enter("container_logs", container)
        return []

    async def list_managed(self) -> Managed:
        await self._enter("list_managed", "")
        return Managed(
            containers=tuple(self.containers.values()),
            networks=tuple(self.networks.values()),
            images=tuple(self.images.values()),
            volumes=tuple(self.volumes.values()),
        )

    def crash(self, container: str) -> None:
        """Make a container exit, as if its process died."""
        info = self._find(container)
        if info is not None:
            self.containers[info.id] = evolve(info, state="exited", exit_code=137)

    def vanish(self, container: str) -> None:
        """Make a container disappear behind prevu's back (`docker rm -f`)."""
        info = self._find(container)
        if info is not None:
            del self.containers[info.id]


# --- store ---------------------------------------------------------------------


@define
class FakeStore:
    """An in-memory Store; `clock` gives log timestamps (a twisted Clock in tests)."""

    clock: Any
    previews: dict[str, PreviewRecord] = field(factory=dict)
    logs: list[LogLine] = field(factory=list)
    deliveries: set[str] = field(factory=set)
    watchers: list[LogWatcher] = field(factory=list)
    trail: list[DeliveryEntry] = field(factory=list)
    unverified: list[UnverifiedDelivery] = field(factory=list)

    def list_previews(self) -> list[PreviewRecord]:
        return sorted(self.previews.values(), key=lambda r: (r.created_at, r.id))

    def get(self, preview: str) -> PreviewRecord | None:
        return self.previews.get(preview)

    def upsert(self, record: PreviewRecord) -> None:
        self.previews[record.id] = record

    def delete(self, preview: str) -> None:
        self.previews.pop(preview, None)
        self.logs = [line for line in self.logs if line.preview != preview]

    def append_log(self, preview: str, stream: LogStream, line: str) -> LogLine:
        seq = (self.logs[-1].seq if self.logs else 0) + 1
        entry = LogLine(seq, preview, stream, float(self.clock.seconds()), line)
        self.logs.append(entry)
        for watcher in list(self.watchers):
            watcher(entry)
        return entry

    def read_logs(self, preview: str, after: int = 0, limit: int = 10_000) -> list[LogLine]:
        return [x for x in self.logs if x.preview == preview and x.seq > after][:limit]

    def watch_logs(self, watcher: LogWatcher) -> Callable[[], None]:
        self.watchers.append(watcher)

        def stop() -> None:
            if watcher in self.watchers:
                self.watchers.remove(watcher)

        return stop

    def remember_delivery(self, delivery: str) -> bool:
        if delivery in self.deliveries:
            return False
        self.deliveries.add(delivery)
        return True

    def seen_delivery(self, delivery: str) -> bool:
        return delivery in self.deliveries

    def record_delivery(self, entry: DeliveryEntry) -> DeliveryEntry:
        if entry.decision == "queued" and entry.sha and entry.number:
            for i, old in enumerate(self.trail):
                same = (old.forge, old.repo.lower(), old.number) == (
                    entry.forge,
                    entry.repo.lower(),
                    entry.number,
                )
                if (
                    same
                    and old.decision == "queued"
                    and not old.outcome
                    and old.sha not in ("", entry.sha)
                ):
                    self.trail[i] = evolve(old, outcome=f"superseded by {entry.sha[:12]}")
        numbered = evolve(entry, seq=len(self.trail) + 1)
        self.trail.append(numbered)
        return numbered

    def fill_outcome(self, forge: str, delivery: str, outcome: str) -> None:
        for i, old in enumerate(self.trail):
            if (old.forge, old.delivery) == (forge, delivery):
                self.trail[i] = evolve(old, outcome=outcome)

    def delivery_trail(self, repo: str = "", number: int = 0) -> list[DeliveryEntry]:
        return [
            e
            for e in self.trail
            if (not repo or e.repo.lower() == repo.lower()) and (not number or e.number == number)
        ]

    def record_unverified(self, entry: UnverifiedDelivery) -> bool:
        self.unverified.append(entry)
        return True

    def unverified_deliveries(self) -> list[UnverifiedDelivery]:
        return list(self.unverified)

    def lines(self, preview: str) -> list[str]:
        """Just the text of a preview's log lines (for assertions)."""
        return [x.line for x in self.read_logs(preview)]


def fake_runtime(docker: FakeDocker, health: HealthChecker, instance: str) -> Runtime:
    """
    A `Runtime` on the fake engine: the real Docker runtime over `FakeDocker`
    (as treq's StubTreq is the real client over a fake transport), so that
    tests exercise the runtime's choreography and inspect the fake engine.
    """
    return DockerRuntime(docker, health, instance)


def _conforms(git: FakeGit, docker: FakeDocker, store: FakeStore) -> tuple[Git, Docker, Store]:
    """mypy checks here that the fakes satisfy the Protocols."""
    return git, docker, store
