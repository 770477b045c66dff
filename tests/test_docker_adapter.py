"""The Docker adapter against the real engine (busybox images built FROM scratch)."""

from __future__ import annotations

import contextlib
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import CancelledError, Deferred

from prevu.adapters.buildkit import BuildKitCli
from prevu.adapters.docker import DockerEngine, build_args, declared_build_args
from prevu.errors import DockerError, DockerUnavailable
from prevu.ports import BuildRequest, RunRequest
from tests.support.docker import TEST_LABELS, BusyboxContext
from tests.support.timeouts import sleep, within

pytestmark = pytest.mark.docker


def unique(prefix: str) -> str:
    return f"prevu-test-{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def engine(reactor: Any, thread_pool: Any) -> DockerEngine:
    return DockerEngine(reactor=reactor, pool=thread_pool, labels=TEST_LABELS)


def build_request(context: Path, **kwargs: Any) -> BuildRequest:
    defaults: dict[str, Any] = {"tag": f"{unique('img')}:latest", "labels": TEST_LABELS}
    return BuildRequest(context=str(context), **{**defaults, **kwargs})


async def http_get(url: str, attempts: int = 50) -> bytes:
    """GET `url`, retrying while the server inside the container starts."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            response = await within(treq.get(url, persistent=False), 5)
            return await within(treq.content(response), 5)  # type: ignore[no-any-return]
        except Exception as error:  # retried until the server is up
            last = error
            await sleep(0.1)
    raise AssertionError(f"{url} never answered: {last}")


@pytest_twisted.ensureDeferred
async def test_build_run_reach_and_remove_everything(
    engine: DockerEngine, busybox_context: BusyboxContext, docker_client: Any
) -> None:
    """A preview's image, network and container: limits in inspect, reachable, then all gone."""
    lines: list[str] = []
    request = build_request(busybox_context(index="hello preview\n"), memory=256 << 20)
    image = await within(engine.build(request, lines.append), 120)
    assert image.id.startswith("sha256:")
    # BuildKit's plain progress names steps `#N [i/n] INSTRUCTION` (was: classic "Step 1/").
    assert any(re.match(r"^#\d+ \[1/\d+\] ", line) for line in lines)
    image_labels = docker_client.images.get(image.id).labels
    assert image_labels["prevu.managed"] == "true" and image_labels["prevu.test"] == "true"

    network_name = unique("net")
    network = await within(engine.create_network(network_name, TEST_LABELS), 30)
    again = await within(engine.create_network(network_name, TEST_LABELS), 30)
    assert again.id == network.id
    labels = {
        **TEST_LABELS, "prevu.repo": "acme/shop", "prevu.number": "7",
        "prevu.sha": "a" * 40, "prevu.host": "pr-7-shop.localhost", "prevu.port": "8080",
    }
    container = await within(engine.run(RunRequest(
        image=image.id, name=unique("ctr"), network=network_name, port=8080,
        env={"PREVU_PR": "7"}, labels=labels,
        memory=64 << 20, nano_cpus=500_000_000, pids=64,
    )), 60)
    assert container.network == network_name and container.port == 8080

    attrs = docker_client.api.inspect_container(container.id)
    host = attrs["HostConfig"]
    assert host["Memory"] == 64 << 20
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Privileged"] is False
    assert "PREVU_PR=7" in attrs["Config"]["Env"]
    for key, value in labels.items():
        assert attrs["Config"]["Labels"][key] == value
    assert attrs["Config"]["Labels"]["prevu.managed"] == "true"

    body = await http_get(f"http://{container.address}:{container.port}/")
    assert body == b"hello preview\n"

    managed = await within(engine.list_managed(), 30)
    listed = {c.id: c for c in managed.containers}
    assert listed[container.id].running
    assert listed[container.id].labels["prevu.sha"] == "a" * 40
    assert listed[container.id].networks[network_name] == container.address
    assert network_name in {n.name for n in managed.networks}
    assert image.id in {i.id for i in managed.images}
    info = await within(engine.inspect_container(container.id), 30)
    assert info is not None and info.state == "running"

    await within(engine.stop(container.id, timeout=1), 30)
    stopped = await within(engine.inspect_container(container.id), 30)
    assert stopped is not None and not stopped.running
    woken = await within(engine.start(container.id), 30)
    assert woken.port == 8080
    assert await http_get(f"http://{woken.address}:{woken.port}/") == b"hello preview\n"

    for _ in range(2):  # every removal is idempotent
        await within(engine.remove_container(container.id), 30)
        await within(engine.remove_image(image.id), 30)
        await within(engine.remove_network(network_name), 30)
        await within(engine.stop(container.id), 30)
    assert await within(engine.inspect_container(container.id), 30) is None
    managed = await within(engine.list_managed(), 30)
    assert container.id not in {c.id for c in managed.containers}
    assert network_name not in {n.name for n in managed.networks}
    assert image.id not in {i.id for i in managed.images}


ARG_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
ARG PREVU_SHA
ARG NODE_ENV=development
RUN ["/bin/busybox", "sh", "-c", "echo sha=$PREVU_SHA env=$NODE_ENV pr=$PREVU_PR"]
"""


@pytest_twisted.ensureDeferred
async def test_prevu_build_args_only_where_declared(
    engine: DockerEngine, busybox_context: BusyboxContext
) -> None:
    """PREVU_* build args reach a Dockerfile that declares them and nothing else sees them."""
    lines: list[str] = []
    # A step of its own per run: BuildKit's cache would otherwise skip the RUN's output.
    nonce = f'RUN ["/bin/busybox", "true", "{uuid.uuid4().hex}"]\nARG PREVU_SHA\n'
    request = build_request(
        busybox_context(dockerfile=ARG_DOCKERFILE.replace("ARG PREVU_SHA\n", nonce)),
        args={"NODE_ENV": "production"},
        prevu_args={"PREVU_SHA": "abc123", "PREVU_PR": "7"},
    )
    image = await within(engine.build(request, lines.append), 120)
    try:
        assert "sha=abc123 env=production pr=" in lines
        assert not any("were not consumed" in line for line in lines)
    finally:
        await within(engine.remove_image(image.id), 30)


@pytest_twisted.ensureDeferred
async def test_failing_build_reports_its_log_lines(
    engine: DockerEngine, busybox_context: BusyboxContext, docker_client: Any
) -> None:
    """A failing step fails the build with the engine's reason; its output was logged."""
    dockerfile = (
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "sh", "-c", "echo about to fail; exit 3"]\n'
    )
    lines: list[str] = []
    request = build_request(busybox_context(dockerfile=dockerfile))
    with pytest.raises(DockerError) as caught:
        await within(engine.build(request, lines.append), 120)
    # BuildKit words it "exit code: 3" (the classic builder: "returned a non-zero code: 3").
    assert "exit code: 3" in caught.value.reason
    assert "about to fail" in lines
    assert any("exit code: 3" in line for line in lines)
    assert not docker_client.images.list(name=request.tag.split(":")[0])


SLOW_DOCKERFILE = (
    "FROM scratch\nCOPY busybox /bin/busybox\n"
    'RUN ["/bin/busybox", "sh", "-c", "echo sleeping; exec /bin/busybox sleep 57"]\n'
)


def sleeping_build_containers(docker_client: Any) -> list[Any]:
    # Summaries, not one inspect per container: other runs' containers may vanish meanwhile.
    return [
        c for c in docker_client.api.containers(all=True)
        if "sleep 57" in str(c.get("Command") or "")
    ]


@pytest_twisted.ensureDeferred
async def test_build_timeout_stops_the_build(
    engine: DockerEngine, busybox_context: BusyboxContext, docker_client: Any, reactor: Any
) -> None:
    """A build running past its timeout fails at once and the engine drops the step."""
    lines: list[str] = []
    request = build_request(busybox_context(dockerfile=SLOW_DOCKERFILE), timeout=3.0)
    started = reactor.seconds()
    with pytest.raises(DockerError) as caught:
        await within(engine.build(request, lines.append), 60)
    assert caught.value.reason == "timed out after 3s"
    assert reactor.seconds() - started < 10
    assert "sleeping" in lines
    for _ in range(100):
        if not sleeping_build_containers(docker_client):
            break
        await sleep(0.1)
    assert sleeping_build_containers(docker_client) == []
    assert not docker_client.images.list(name=request.tag.split(":")[0])


@pytest_twisted.ensureDeferred
async def test_cancelled_build_stops_and_tags_nothing(
    engine: DockerEngine, busybox_context: BusyboxContext, docker_client: Any, reactor: Any
) -> None:
    """Cancelling the build's Deferred (a superseded commit) aborts it promptly."""
    lines: list[str] = []
    request = build_request(busybox_context(dockerfile=SLOW_DOCKERFILE))
    building = Deferred.fromCoroutine(engine.build(request, lines.append))
    for _ in range(200):
        if "sleeping" in lines:
            break
        await sleep(0.05)
    building.cancel()
    with pytest.raises(CancelledError):
        await within(building, 10)
    for _ in range(100):
        if not sleeping_build_containers(docker_client):
            break
        await sleep(0.1)
    assert sleeping_build_containers(docker_client) == []
    assert not docker_client.images.list(name=request.tag.split(":")[0])


class StalledPrune(BuildKitCli):
    """The real BuildKit client whose build-cache prune never ends (`pruning`: it began)."""

    def __init__(self, real: BuildKitCli) -> None:
        super().__init__(real.reactor, real.cli, real.environment)
        self.pruning: Deferred[None] = Deferred()

    async def prune(self, keep_storage: int) -> bool:
        # fired on the next turn: by then the build's coroutine waits here, so the
        # test's cancel reaches this Deferred
        self.reactor.callLater(0, self.pruning.callback, None)
        await Deferred()  # cancelled with the build
        return True


@pytest_twisted.ensureDeferred
async def test_build_cancelled_while_the_cache_is_pruned_leaves_no_tag(
    engine: DockerEngine, busybox_context: BusyboxContext, docker_client: Any
) -> None:
    """A superseded build cancelled after it tagged, during `[docker] build_cache_max`'s
    prune, removes its tag (before, the image stayed tagged with nobody to discard it)."""
    stalled = StalledPrune(await within(engine._cli(), 60))
    engine.builder, engine.build_cache_max = stalled, 1 << 30
    request = build_request(busybox_context())
    building = Deferred.fromCoroutine(engine.build(request, lambda _: None))
    await within(stalled.pruning, 120)
    assert docker_client.images.list(name=request.tag.split(":")[0]), "tagged before the prune"
    building.cancel()
    with pytest.raises(CancelledError):
        await within(building, 30)
    assert not docker_client.images.list(name=request.tag.split(":")[0])


@pytest_twisted.ensureDeferred
async def test_container_that_cannot_start_fails_and_is_removed(
    engine: DockerEngine, busybox_context: BusyboxContext, docker_client: Any
) -> None:
    """A command that cannot start fails `run` and leaves nothing; a crash shows in inspect."""
    image = await within(engine.build(build_request(busybox_context()), lambda _: None), 120)
    network = unique("net")
    await within(engine.create_network(network, TEST_LABELS), 30)
    name = unique("ctr")
    crashing = unique("ctr")
    try:
        with pytest.raises(DockerError):
            await within(engine.run(RunRequest(
                image=image.id, name=name, network=network, port=8080, labels=TEST_LABELS,
                command=("/does-not-exist",),
            )), 60)
        assert docker_client.containers.list(all=True, filters={"name": name}) == []

        container = None
        with contextlib.suppress(DockerError):  # it may already have exited at the check
            container = await within(engine.run(RunRequest(
                image=image.id, name=crashing, network=network, port=8080, labels=TEST_LABELS,
                command=("/bin/busybox", "sh", "-c", "echo crashing; exit 1"),
            )), 60)
        if container is not None:
            for _ in range(100):
                info = await within(engine.inspect_container(crashing), 30)
                if info is not None and info.state == "exited":
                    break
                await sleep(0.05)
            assert info is not None and info.state == "exited"
            assert await within(engine.container_logs(crashing), 30) == ["crashing"]
    finally:
        await within(engine.remove_container(crashing), 30)
        await within(engine.remove_network(network), 30)
        await within(engine.remove_image(image.id), 30)


@pytest_twisted.ensureDeferred
async def test_unreachable_engine(reactor: Any, thread_pool: Any, tmp_path: Path) -> None:
    """With no engine, ping is False and operations raise DockerUnavailable (retry later)."""
    engine = DockerEngine(
        reactor=reactor, pool=thread_pool,
        client_kwargs={"base_url": f"unix://{tmp_path}/no-docker.sock"},
    )
    assert await within(engine.ping(), 30) is False
    with pytest.raises(DockerUnavailable):
        await within(engine.list_managed(), 30)


@pytest_twisted.ensureDeferred
async def test_ping_is_true_with_the_engine_up(engine: DockerEngine) -> None:
    """ping answers True when the engine is up."""
    assert await within(engine.ping(), 30) is True


@pytest_twisted.ensureDeferred
async def test_dockerfile_outside_context_is_refused(
    engine: DockerEngine, busybox_context: BusyboxContext
) -> None:
    """A Dockerfile path escaping the build context is refused before anything is built."""
    request = build_request(busybox_context(), dockerfile="../../../etc/passwd")
    with pytest.raises(DockerError) as caught:
        await within(engine.build(request, lambda _: None), 30)
    assert "outside the build context" in caught.value.reason


@pytest.mark.parametrize(
    ("dockerfile", "names"),
    [
        ("FROM scratch\n", set()),
        ("ARG PREVU_SHA\n", {"PREVU_SHA"}),
        ("arg prevu_url=x\n", {"prevu_url"}),
        ("ARG A B=1 \\\n  C\n", {"A", "B", "C"}),
        ("  ARG PREVU_PR=1\nRUN echo ARG NOT\n", {"PREVU_PR"}),
    ],
)
def test_declared_build_args(dockerfile: str, names: set[str]) -> None:
    """ARG declarations are found in all their spellings."""
    assert declared_build_args(dockerfile) == names


def test_build_args_pass_user_args_and_declared_prevu_args() -> None:
    """User args always pass; PREVU_* only when declared."""
    request = BuildRequest(
        context=".", tag="t", args={"X": "1"}, prevu_args={"PREVU_SHA": "s", "PREVU_PR": "1"}
    )
    assert build_args(request, "ARG PREVU_SHA\n") == {"X": "1", "PREVU_SHA": "s"}


@pytest_twisted.ensureDeferred
async def test_symlinks_in_the_context_do_not_leak_host_files(
    engine: DockerEngine, busybox_context: BusyboxContext, tmp_path: Path
) -> None:
    """A symlink in a pull request's context is sent as a link, never as the host file."""
    secret = tmp_path / "host-secret"
    secret.write_text("HOST-SECRET-MARKER\n")
    dockerfile = (
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n"
        'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox cat /www/leak || echo no-leak"]\n'
    )
    context = busybox_context(dockerfile=dockerfile)
    (context / "www" / "leak").symlink_to(secret)
    lines: list[str] = []
    image = await within(engine.build(build_request(context), lines.append), 120)
    try:
        assert "no-leak" in lines
        assert not any("HOST-SECRET-MARKER" in line for line in lines)
    finally:
        await within(engine.remove_image(image.id), 30)
