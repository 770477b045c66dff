"""
Pull request -> live preview, end to end: real Docker engine, real git, the
real proxy and control app on 127.0.0.1, webhooks from the real fixtures
re-pointed at a local bare repository carrying `refs/pull/N/head`.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import ensureDeferred
from twisted.web.server import Site

from prevu import labels as lb
from prevu.adapters.docker import DockerEngine
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.adapters.git import GitCli
from prevu.adapters.health import NetworkHealthChecker
from prevu.config import Config, DockerConfig, GithubConfig, RepoConfig, ServerConfig
from prevu.control.api import PreviewsApi
from prevu.control.app import ControlApp
from prevu.control.webhooks import Webhooks
from prevu.forge.github import sign
from prevu.naming import network_name
from prevu.orchestrator import Orchestrator, OrchestratorSettings
from prevu.proxy.server import ProxyFactory, ProxySettings
from prevu.routing import RouteRegistry
from prevu.runtime import Deployed
from prevu.store import SqliteStore
from tests.support.docker import BUSYBOX, HTTPD_DOCKERFILE, TEST_LABELS
from tests.support.git_repos import ForgeRepo, git
from tests.support.timeouts import sleep, within

pytestmark = pytest.mark.docker

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.exists():
    FIXTURES = Path("/work/shared/fixtures")
SECRET = "e2e-secret"
REPO = "Codertocat/Hello-World"
SLOW_DOCKERFILE = HTTPD_DOCKERFILE.replace(
    "COPY www /www\n", 'COPY www /www\nRUN ["/bin/busybox", "sleep", "4"]\n'
)


def slow_dockerfile() -> str:
    """
    SLOW_DOCKERFILE whose sleep step is new to the engine's build cache: the cached
    step of an earlier run (same content) takes no time, so a close "during the
    build" came after it and three "rapid" pushes could each finish building.
    """
    step = f'RUN ["/bin/busybox", "sh", "-c", "sleep 4 # {uuid.uuid4().hex}"]\n'
    return SLOW_DOCKERFILE.replace('RUN ["/bin/busybox", "sleep", "4"]\n', step)


def site_files(index: str, dockerfile: str = HTTPD_DOCKERFILE, **extra: str) -> dict[str, Any]:
    return {"Dockerfile": dockerfile, "www/index.html": index, **extra}


def push(forge: ForgeRepo, number: int, files: dict[str, Any]) -> str:
    """Publish `files` plus an executable busybox as the head of pull request `number`.

    Each pull request has a branch of its own off main, as on a forge.
    """
    branches = git("branch", "--list", f"pr-{number}", cwd=forge.work)
    if branches:
        git("checkout", "--quiet", f"pr-{number}", cwd=forge.work)
    else:
        git("checkout", "--quiet", "-b", f"pr-{number}", "main", cwd=forge.work)
    target = forge.work / "busybox"
    if not target.exists():
        shutil.copy(BUSYBOX, target)
        target.chmod(0o755)
        git("add", "busybox", cwd=forge.work)
    return forge.push_pull(number, files)


class Stack:
    """prevu's preview pipeline with real adapters, listening on 127.0.0.1 ports."""

    def __init__(self, reactor: Any, pool: Any, tmp: Path, forge: ForgeRepo, **docker: Any) -> None:
        self.reactor = reactor
        self.pool = pool
        self.tmp = tmp
        self.forge = forge
        self.config = Config(
            server=ServerConfig(state_dir=str(tmp / "state"), api_token="t"),
            github=GithubConfig(webhook_secret=SECRET),
            repos=(RepoConfig(REPO, access="public", forks="approve"),),
            # A network prefix of its own: parallel test runs share the engine.
            docker=DockerConfig(
                network=f"prevu-{uuid.uuid4().hex[:8]}",
                memory=64 << 20,
                cpus=0.5,
                pids=64,
                **docker,
            ),
        )
        self.docker = DockerEngine(reactor, pool, labels=TEST_LABELS, self_container="none")
        self.git = GitCli(reactor, str(tmp / "state" / "workspaces"), pool)
        self.listening: list[Any] = []
        self.deliveries = 0
        self.boot()

    def boot(self) -> None:
        """(Re)start prevu: a new store connection, route table, orchestrator, proxy, app."""
        self.store = SqliteStore.in_state_dir(self.config.server.state_dir, self.reactor)
        self.routes = RouteRegistry()
        settings = OrchestratorSettings.from_config(
            self.config, drain_delay=0.5, start_timeout=20.0
        )
        runtime = DockerRuntime.from_config(
            self.docker, NetworkHealthChecker(self.reactor), self.config.docker, settings.instance
        )
        self.orchestrator = Orchestrator(
            settings, self.reactor, self.routes, runtime, self.git, self.store
        )
        webhooks = Webhooks(self.config, self.orchestrator, self.store, self.orchestrator.metrics)
        api = PreviewsApi(self.config, self.orchestrator, self.store, self.docker)
        app = ControlApp(config=self.config, webhooks=webhooks, previews=api)
        control = self.reactor.listenTCP(0, Site(app.resource()), interface="127.0.0.1")
        proxy = self.reactor.listenTCP(
            0,
            ProxyFactory(self.reactor, self.routes, ProxySettings(), waker=self.orchestrator),
            interface="127.0.0.1",
        )
        self.listening = [control, proxy]
        self.control_port = control.getHost().port
        self.proxy_port = proxy.getHost().port

    async def start(self) -> None:
        await within(ensureDeferred(self.orchestrator.start()), 30)

    async def shutdown(self) -> None:
        self.orchestrator.stop()
        for port in self.listening:
            await port.stopListening()
        self.store.close()

    # --- forge side ---------------------------------------------------------------

    def payload(self, name: str, number: int, sha: str, fork: bool = False) -> bytes:
        data = json.loads((FIXTURES / "github" / name).read_text())
        data["number"] = number
        pr = data["pull_request"]
        pr["number"] = number
        pr["head"]["sha"] = sha
        pr["base"]["repo"]["clone_url"] = self.forge.url
        if fork:
            pr["head"]["repo"]["full_name"] = "mallory/Hello-World"
        return json.dumps(data).encode()

    async def deliver(self, event: str, body: bytes) -> tuple[int, dict[str, Any]]:
        self.deliveries += 1
        headers = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": f"delivery-{self.deliveries}",
            "X-Hub-Signature-256": sign(SECRET, body),
            "Content-Type": "application/json",
        }
        url = f"http://127.0.0.1:{self.control_port}/webhooks/github"
        response = await within(treq.post(url, data=body, headers=headers, persistent=False), 10)
        return response.code, json.loads(await within(treq.content(response), 10))

    async def pull_request(self, action: str, number: int, sha: str, fork: bool = False) -> Any:
        name = f"pull_request-{action}.json"
        return await self.deliver("pull_request", self.payload(name, number, sha, fork))

    # --- preview side -------------------------------------------------------------

    async def get(self, host: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.proxy_port}/"
        response = await within(treq.get(url, headers={"Host": host}, persistent=False), 10)
        return response.code, await within(treq.content(response), 10)

    async def until(self, preview: str, *statuses: str, timeout: float = 90) -> str:
        deadline = self.reactor.seconds() + timeout
        while self.reactor.seconds() < deadline:
            record = self.store.get(preview)
            if record is not None and record.status in statuses:
                return record.status
            if record is not None and record.status == "failed":
                break
            await sleep(0.1)
        record = self.store.get(preview)
        lines = [x.line for x in self.store.read_logs(preview)][-30:]
        raise AssertionError(f"{preview} is {record and record.status}, not {statuses}: {lines}")

    async def settled(self, timeout: float = 30) -> None:
        deadline = self.reactor.seconds() + timeout
        while not self.orchestrator.idle():
            assert self.reactor.seconds() < deadline, "orchestrator never settled"
            await sleep(0.1)

    def leftovers(self, docker_client: Any, preview: str) -> list[str]:
        """Containers, networks, images and workspace of `preview` still present."""
        instance = self.orchestrator.instance
        wanted = {"label": [f"{lb.PREVIEW}={preview}", f"{lb.INSTANCE}={instance}"]}
        api = docker_client.api
        found = [c["Names"][0] for c in api.containers(all=True, filters=wanted)]
        found += [n["Name"] for n in api.networks(filters=wanted)]
        prefix = self.config.docker.network
        for network in (network_name(prefix, instance, preview), f"{prefix}-{preview}"):
            found += [n["Name"] for n in api.networks(names=[network]) if n["Name"] == network]
        found += [i["Id"] for i in api.images(filters=wanted)]
        workspace = self.tmp / "state" / "workspaces" / preview
        if workspace.exists():
            found.append(str(workspace))
        return found


@pytest_twisted.async_yield_fixture
async def stack(reactor: Any, thread_pool: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    forge = ForgeRepo.create(tmp_path / "forge", "hello-world")
    stack = Stack(reactor, thread_pool, tmp_path, forge)
    await stack.start()
    yield stack
    await stack.shutdown()


@pytest_twisted.ensureDeferred
async def test_pull_request_lifecycle_end_to_end(stack: Stack, docker_client: Any) -> None:
    """opened -> 202 -> running -> served; push switches with zero failed requests;
    restart serves at once; closed -> 410 "removed" page and nothing left."""
    host = "pr-1-hello-world.localhost"
    first = push(stack.forge, 1, site_files("version one\n"))
    code, body = await stack.pull_request("opened", 1, first)
    assert (code, body["status"], body["preview"]) == (202, "queued", "pr-1-hello-world")
    await stack.until("pr-1-hello-world", "running")
    assert await stack.get(host) == (200, b"version one\n")

    record = stack.store.get("pr-1-hello-world")
    assert record is not None and record.container is not None
    attrs = docker_client.api.inspect_container(record.container)
    host_config = attrs["HostConfig"]
    assert host_config["Memory"] == 64 << 20
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["PidsLimit"] == 64
    assert host_config["SecurityOpt"] == ["no-new-privileges:true"]
    assert host_config["Privileged"] is False
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["PREVU_SHA"] == first and env["PREVU_PR"] == "1"
    assert env["PREVU_HOST"] == host and env["PREVU_REPO"] == REPO
    assert attrs["Config"]["Labels"]["prevu.sha"] == first
    prefix, instance = stack.config.docker.network, stack.orchestrator.instance
    network = f"{prefix}-{instance}-pr-1-hello-world"
    assert list(attrs["NetworkSettings"]["Networks"]) == [network]

    # synchronize while a client polls: every request answers, first old then new content.
    failures: list[str] = []
    seen: list[bytes] = []
    polling = True

    async def poll() -> None:
        while polling:
            try:
                code, content = await stack.get(host)
                if code != 200:
                    failures.append(f"{code}: {content[:80]!r}")
                seen.append(content)
            except Exception as error:  # counted, not raised: the test reports them all
                failures.append(repr(error))
            await sleep(0.02)

    poller = ensureDeferred(poll())
    second = push(stack.forge, 1, site_files("version two\n"))
    assert (await stack.pull_request("synchronize", 1, second))[0] == 202
    await stack.until("pr-1-hello-world", "building", "starting", timeout=10)
    await stack.until("pr-1-hello-world", "running")
    await stack.settled()
    await sleep(0.3)
    polling = False
    await within(poller, 10)
    assert failures == []
    assert seen[0] == b"version one\n" and seen[-1] == b"version two\n"
    assert set(seen) == {b"version one\n", b"version two\n"}
    old = docker_client.api.containers(all=True, filters={"id": record.container})
    assert old == [], "the old container is removed after the switch"

    # restart: a new prevu on the same state dir serves the running container at once.
    served_before = stack.store.get("pr-1-hello-world")
    await stack.shutdown()
    stack.boot()
    started = stack.reactor.seconds()
    await stack.start()
    assert stack.reactor.seconds() - started < 1.0
    assert await stack.get(host) == (200, b"version two\n")
    served_after = stack.store.get("pr-1-hello-world")
    assert served_before is not None and served_after is not None
    assert served_after.container == served_before.container, "not rebuilt, not restarted"

    # the runtime on the real engine: exec, observe, and the preview's volumes are its data.
    runtime = stack.orchestrator.runtime
    serving = stack.orchestrator.serving("pr-1-hello-world")
    assert serving is not None
    deployed = Deployed("pr-1-hello-world", host, "app", {"app": serving.container})
    result = await within(
        runtime.exec(deployed, "app", ["/bin/busybox", "sh", "-c", "echo hi; exit 3"]), 30
    )
    assert (result.exit_code, result.output) == (3, "hi\n")
    observed = await within(runtime.observe(), 30)
    assert [(o.preview, o.service, o.state, o.oom_killed) for o in observed] == [
        ("pr-1-hello-world", "app", "running", False)
    ]
    volume = docker_client.volumes.create(
        f"{stack.config.docker.network}-pr-1-data",
        labels={**TEST_LABELS, lb.INSTANCE: stack.orchestrator.instance,
                lb.PREVIEW: "pr-1-hello-world"},
    )
    owned = await within(runtime.list_owned(), 30)
    assert [v.name for v in owned.volumes] == [volume.name]

    # closed: the 410 "removed" page (docs/proxy.md) and nothing of the pull
    # request left (its volumes neither).
    code, body = await stack.pull_request("closed", 1, second)
    assert code == 202
    assert (await stack.get(host))[0] == 410
    await stack.until("pr-1-hello-world", "stopped")
    await stack.settled()
    assert stack.leftovers(docker_client, "pr-1-hello-world") == []
    assert docker_client.volumes.list(filters={"name": volume.name}) == []


@pytest_twisted.ensureDeferred
async def test_closed_during_build_leaves_nothing(stack: Stack, docker_client: Any) -> None:
    """A pull request closed while its image builds ends with nothing left."""
    sha = push(stack.forge, 2, site_files("slow\n", slow_dockerfile()))
    assert (await stack.pull_request("opened", 2, sha))[0] == 202
    await stack.until("pr-2-hello-world", "building")
    await sleep(1.0)
    assert (await stack.pull_request("closed", 2, sha))[0] == 202
    await stack.until("pr-2-hello-world", "stopped")
    await stack.settled()
    await sleep(1.0)
    left = stack.leftovers(docker_client, "pr-2-hello-world")
    lines = [x.line for x in stack.store.read_logs("pr-2-hello-world")]
    assert left == [], (left, lines[-30:])
    assert (await stack.get("pr-2-hello-world.localhost"))[0] == 410  # "removed"


@pytest_twisted.ensureDeferred
async def test_rapid_pushes_and_a_bad_repo_config(stack: Stack, docker_client: Any) -> None:
    """Three rapid synchronize: the last SHA serves, stale builds never complete;
    meanwhile a bad .prevu.toml fails its own preview only."""
    bad = push(stack.forge, 4, site_files("bad\n", **{".prevu.toml": "[run]\nport = 0\n"}))
    assert (await stack.pull_request("opened", 4, bad))[0] == 202
    shas = []
    for n in range(3):
        shas.append(push(stack.forge, 3, site_files(f"push {n}\n", slow_dockerfile())))
        assert (await stack.pull_request("synchronize" if n else "opened", 3, shas[-1]))[0] == 202
        await sleep(0.3)
    await stack.until("pr-3-hello-world", "running", timeout=120)
    assert await stack.get("pr-3-hello-world.localhost") == (200, b"push 2\n")
    metrics = stack.orchestrator.metrics
    assert metrics.value("prevu_builds_total", result="succeeded") == 1
    assert metrics.value("prevu_builds_total", result="cancelled") >= 1
    ours = [f"{lb.PREVIEW}=pr-3-hello-world", f"{lb.INSTANCE}={stack.orchestrator.instance}"]
    images = docker_client.api.images(filters={"label": ours})
    lines = [x.line for x in stack.store.read_logs("pr-3-hello-world")]
    found = {image["Labels"][lb.SHA]: image["RepoTags"] for image in images}
    assert set(found) == {shas[2]}, (shas, found, lines[-40:])

    record = stack.store.get("pr-4-hello-world")
    assert record is not None and record.status == "failed"
    assert record.error == ".prevu.toml: run.port: expected a port number 1-65535, got 0"
    assert stack.leftovers(docker_client, "pr-4-hello-world") == []


@pytest_twisted.ensureDeferred
async def test_fork_waits_for_approval_then_runs(stack: Stack) -> None:
    """A fork PR under forks = "approve" waits; a MEMBER association alone approves nothing
    (without a forge API to ask, the comment is refused); the facade's approval runs it."""
    sha = push(stack.forge, 5, site_files("from a fork\n"))
    code, body = await stack.pull_request("opened", 5, sha, fork=True)
    assert code == 202
    await sleep(1.0)
    record = stack.store.get("pr-5-hello-world")
    assert record is not None and record.status == "queued" and not record.container
    code, page = await stack.get("pr-5-hello-world.localhost")  # a public preview
    assert code == 503 and b"awaits a maintainer's approval" in page  # not the generic 404
    comment = json.loads((FIXTURES / "github/issue_comment-created.json").read_text())
    comment["issue"]["number"] = 5
    comment["issue"]["pull_request"] = {"url": "https://api.github.com/repos/x/y/pulls/5"}
    comment["comment"]["body"] = "/preview approve"
    comment["comment"]["author_association"] = "MEMBER"
    code, body = await stack.deliver("issue_comment", json.dumps(comment).encode())
    assert (code, body["status"]) == (200, "refused")
    assert stack.orchestrator.approve_commit("pr-5-hello-world", sha, "maria") is None
    await stack.until("pr-5-hello-world", "running")
    assert await stack.get("pr-5-hello-world.localhost") == (200, b"from a fork\n")
