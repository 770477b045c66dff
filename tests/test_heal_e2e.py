"""
Self-healing (issue 15) on the real Docker engine, with `reconcile_interval = "5s"`:
`docker kill` and `docker rm -f` of a preview's container -> served again through
the proxy within two reconcile periods; a sleeping preview is not woken; a container
that exceeds its memory limit is restarted by Docker, then the preview fails with
"out of memory" and its last lines.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.support.docker import HTTPD_DOCKERFILE
from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import sleep
from tests.test_previews_e2e import Stack, push, site_files

pytestmark = pytest.mark.docker
PERIOD = 5.0
"""`reconcile_interval` of these tests, seconds."""

OOM_DOCKERFILE = HTTPD_DOCKERFILE.replace(
    'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]',
    # Serves for 2 s, then PID 1 becomes a dd asking for 256 MiB at once (limit 64m).
    'CMD ["/bin/busybox", "sh", "-c", "echo serving; /bin/busybox httpd -p 8080 -h /www; '
    "/bin/busybox sleep 2; echo eating memory; "
    'exec /bin/busybox dd if=/dev/zero of=/dev/null bs=256M count=1"]',
)


@pytest_twisted.async_yield_fixture
async def stack(reactor: Any, thread_pool: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    forge = ForgeRepo.create(tmp_path / "forge", "hello-world")
    stack = Stack(reactor, thread_pool, tmp_path, forge, reconcile_interval=PERIOD)
    await stack.start()
    yield stack
    await stack.shutdown()


async def open_previews(stack: Stack, texts: dict[int, str], **files: str) -> list[str]:
    """Open a pull request per number (built side by side); each serves its text."""
    for number, text in texts.items():
        sha = push(stack.forge, number, site_files(text, **files))
        assert (await stack.pull_request("opened", number, sha))[0] == 202
    previews = []
    for number, text in texts.items():
        preview = f"pr-{number}-hello-world"
        await stack.until(preview, "running")
        assert await stack.get(f"{preview}.localhost") == (200, text.encode())
        previews.append(preview)
    return previews


def container_of(stack: Stack, preview: str) -> str:
    record = stack.store.get(preview)
    assert record is not None and record.container is not None
    return record.container


async def served_again(stack: Stack, preview: str, text: str, since: float) -> float:
    """Seconds from `since` until the proxy serves `text` again (fails after 3 periods)."""
    while time.monotonic() - since < 3 * PERIOD:
        if await stack.get(f"{preview}.localhost") == (200, text.encode()):
            return time.monotonic() - since
        await sleep(0.2)
    record = stack.store.get(preview)
    lines = [x.line for x in stack.store.read_logs(preview)][-15:]
    raise AssertionError(f"{preview} not served again: {record and record.status} {lines}")


@pytest_twisted.ensureDeferred
async def test_killed_and_removed_containers_heal_and_a_sleeping_one_stays_asleep(
    stack: Stack, docker_client: Any
) -> None:
    """kill -> restarted, rm -f -> recreated, both served within two periods; sleep kept."""
    texts = {1: "killed\n", 2: "removed\n", 3: "asleep\n"}
    killed, removed, asleep = await open_previews(stack, texts)
    stack.orchestrator.sleep(asleep)
    await stack.until(asleep, "sleeping")
    slept = time.monotonic()
    await stack.settled()
    sleeping_container = container_of(stack, asleep)
    assert docker_client.api.inspect_container(sleeping_container)["State"]["Status"] == "exited"

    first = container_of(stack, killed)
    attrs = docker_client.api.inspect_container(first)
    assert attrs["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    old = container_of(stack, removed)
    since = time.monotonic()
    docker_client.api.kill(first)
    docker_client.api.remove_container(old, force=True)
    took = [
        await served_again(stack, killed, "killed\n", since),
        await served_again(stack, removed, "removed\n", since),
    ]
    assert max(took) <= 2 * PERIOD, f"healed after {took} s"
    print(f"served again after {took[0]:.1f} s (kill) and {took[1]:.1f} s (rm -f)")
    assert container_of(stack, killed) == first, "restarted, not replaced"
    assert container_of(stack, removed) != old, "recreated"
    await stack.settled()
    for preview in (killed, removed):
        record = stack.store.get(preview)
        assert record is not None and (record.status, record.error) == ("running", None)
    lines = [x.line for x in stack.store.read_logs(killed)]
    assert any("exited with code 137; restarting it" in line for line in lines)

    # At least two periods asleep: no reconcile woke it.
    await sleep(max(0.0, slept + 2 * PERIOD + 1 - time.monotonic()))
    assert stack.store.get(asleep).status == "sleeping"  # type: ignore[union-attr]
    state = docker_client.api.inspect_container(sleeping_container)["State"]
    assert state["Status"] == "exited"


@pytest_twisted.ensureDeferred
async def test_out_of_memory_is_restarted_then_failed_with_the_reason(
    stack: Stack, docker_client: Any
) -> None:
    """Over its 64m limit: Docker restarts it 3 times, then the preview fails, saying why."""
    (preview,) = await open_previews(stack, {4: "hungry\n"}, Dockerfile=OOM_DOCKERFILE)
    container = container_of(stack, preview)
    deadline = time.monotonic() + 60
    record = stack.store.get(preview)
    while time.monotonic() < deadline:
        record = stack.store.get(preview)
        if record is not None and record.status == "failed":
            break
        await sleep(0.5)
    assert record is not None and record.status == "failed", record
    error = record.error or ""
    assert "exited with code 137: out of memory (limit 64m)" in error, error
    assert "restarted 3 times within 10m (restart_limit 3): gave up" in error, error
    assert error.endswith("eating memory"), "the last lines it printed"
    assert (await stack.get(f"{preview}.localhost"))[0] == 503, "the failed preview's page"
    await stack.settled()
    await sleep(1.0)
    found = docker_client.api.containers(all=True, filters={"id": container})
    assert found == [], "the failed container is removed"
