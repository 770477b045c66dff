"""
Self-healing of every container of a Compose preview (issue 15) on the real
engine and the real Compose CLI, with `reconcile_interval = "5s"`: `docker
kill` of the non-exposed service's container -> running again within two
reconcile periods and reached by name from the web service; `docker rm -f`
of it -> created again (its volume's data still there).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import sleep
from tests.test_compose_e2e import (
    DB_IMAGE,
    DB_URL,
    ComposeStack,
    containers_of,
    db_image,  # noqa: F401 (the fixture building the db service's image)
    exec_in,
    leftovers,
    web_files,
)
from tests.test_previews_e2e import push

pytestmark = pytest.mark.docker
PERIOD = 5.0
"""`reconcile_interval` of these tests, seconds."""
SLACK = 4.0
"""Seconds for the resume job itself (`docker start`, `compose up`, the health probe)."""

COMPOSE = f"""\
services:
  web:
    build: .
    depends_on: [db]
  db:
    image: {DB_IMAGE}
    volumes: ["data:/data"]
volumes:
  data: {{}}
"""
PREVU_TOML = """\
[compose]
service = "web"
port = 8080

[run]
health = "/"
"""


@pytest_twisted.async_yield_fixture
async def stack(reactor: Any, thread_pool: Any, tmp_path: Path) -> AsyncIterator[ComposeStack]:
    forge = ForgeRepo.create(tmp_path / "forge", "hello-world")
    stack = ComposeStack(reactor, thread_pool, tmp_path, forge, reconcile_interval=PERIOD)
    await stack.start()
    yield stack
    await stack.shutdown()


async def db_back(
    client: Any, stack: ComposeStack, preview: str, since: float
) -> tuple[str, float]:
    """
    The db container once it runs again and web reaches it by name, and the
    seconds since `since`; fails after two periods (and the job's `SLACK`).
    """
    while time.monotonic() - since < 2 * PERIOD + SLACK:
        services = containers_of(client, stack, preview)
        if "db" in services and "web" in services:
            web = services["web"]["Id"]
            if exec_in(client, web, "wget", "-q", "-O", "-", DB_URL) == (0, "kept\n"):
                return str(services["db"]["Id"]), time.monotonic() - since
        await sleep(0.2)
    record = stack.store.get(preview)
    lines = [x.line for x in stack.store.read_logs(preview)][-15:]
    wanted = {"label": [f"prevu.preview={preview}"]}
    found = [
        (c["Labels"].get("com.docker.compose.service"), c["State"], c["Status"])
        for c in client.api.containers(all=True, filters=wanted)
    ]
    services = containers_of(client, stack, preview)
    tried = exec_in(client, services["web"]["Id"], "wget", "-q", "-O", "-", DB_URL)
    status = record and record.status
    raise AssertionError(f"db of {preview} not back: {status} {lines} {found} {tried}")


@pytest.mark.usefixtures("db_image")
@pytest_twisted.ensureDeferred
async def test_a_killed_or_removed_service_container_heals(
    stack: ComposeStack, docker_client: Any
) -> None:
    """docker kill of db -> started again; docker rm -f of db -> created again; both
    within two reconcile periods, web reaches db by name, the preview serves."""
    preview = "pr-1-hello-world"
    host = f"{preview}.localhost"
    files = {**web_files("web\n", compose=COMPOSE), ".prevu.toml": PREVU_TOML}
    sha = push(stack.forge, 1, files)
    assert (await stack.pull_request("opened", 1, sha))[0] == 202
    await stack.until(preview, "running", timeout=120)
    services = containers_of(docker_client, stack, preview)
    assert set(services) == {"web", "db"}
    db = services["db"]["Id"]
    assert exec_in(docker_client, db, "sh", "-c", "echo kept > /data/value.txt")[0] == 0
    await stack.orchestrator.reconcile()  # a removal is seen against a pass that saw db

    killed = time.monotonic()
    docker_client.api.kill(db)
    assert "db" not in containers_of(docker_client, stack, preview)
    started, took = await db_back(docker_client, stack, preview, killed)
    assert started == db, "started again, not recreated"
    print(f"killed db running again after {took:.1f}s")
    await stack.until(preview, "running", timeout=PERIOD)
    assert await stack.get(host) == (200, b"web\n")
    logs = [x.line for x in stack.store.read_logs(preview)]
    assert any("service db: container" in line and "restarting it" in line for line in logs)

    removed = time.monotonic()
    docker_client.api.remove_container(db, force=True)
    again, took = await db_back(docker_client, stack, preview, removed)
    print(f"removed db created again after {took:.1f}s")
    assert again != db, "a new container of the db service"
    await stack.until(preview, "running", timeout=PERIOD)
    assert await stack.get(host) == (200, b"web\n")
    record = stack.store.get(preview)
    assert record is not None and record.status == "running" and record.error is None
    logs = [x.line for x in stack.store.read_logs(preview)]
    assert any("service db: container" in line and "was removed" in line for line in logs)

    assert (await stack.pull_request("closed", 1, sha))[0] in (200, 202)
    await stack.until(preview, "stopped", timeout=60)
    await stack.settled(timeout=60)
    assert leftovers(docker_client, stack, preview) == []
