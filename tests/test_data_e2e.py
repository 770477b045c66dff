"""
Data per preview (issue 18) on the real engine: real Docker, real git, the real
proxy and control app on 127.0.0.1.

The app is busybox httpd serving /www, where `data` links to the preview's
named volume at /data; `[data]` commands append marker lines to
/data/log.txt, so what ran (and in which order) is read through the proxy.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from prevu import labels as lb
from prevu.adapters.docker import DockerEngine
from tests.support.docker import HTTPD_DOCKERFILE, TEST_LABELS
from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import sleep, within
from tests.test_previews_e2e import Stack, push, site_files

pytestmark = pytest.mark.docker

PREVIEW = "pr-7-hello-world"
HOST = f"{PREVIEW}.localhost"
DOCKERFILE = HTTPD_DOCKERFILE.replace(
    "COPY www /www\n", 'COPY www /www\nRUN ["/bin/busybox", "ln", "-s", "/data", "/www/data"]\n'
)
BB = '"/bin/busybox", "sh", "-c"'
# on_push waits a second before it writes: a route moved before it ended would show
# the new revision with a log that lacks its line.
ON_PUSH = f'[{BB}, "sleep 1; echo on_push $PREVU_SHA >> /data/log.txt"]'
SEED = f'[{BB}, "echo seed $PREVU_SHA >> /data/log.txt"]'
BROKEN = f'[{BB}, "echo migration broke; exit 3"]'


def prevu_toml(on_push: str = ON_PUSH) -> str:
    return f'[run]\nvolumes = ["/data"]\n[data]\non_push = {on_push}\nseed = {SEED}\n'


def files(version: str, on_push: str = ON_PUSH) -> dict[str, Any]:
    return site_files(f"{version}\n", DOCKERFILE, **{".prevu.toml": prevu_toml(on_push)})


@pytest_twisted.async_yield_fixture
async def stack(reactor: Any, thread_pool: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    forge = ForgeRepo.create(tmp_path / "forge", "hello-world")
    stack = Stack(reactor, thread_pool, tmp_path, forge)
    await stack.start()
    yield stack
    await stack.shutdown()


async def fetch(stack: Stack, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{stack.proxy_port}{path}"
    response = await within(treq.get(url, headers={"Host": HOST}, persistent=False), 10)
    return response.code, (await within(treq.content(response), 10)).decode()


async def data_log(stack: Stack) -> list[str]:
    code, body = await fetch(stack, "/data/log.txt")
    assert code == 200, (code, body)
    return body.splitlines()


def volumes(docker_client: Any, stack: Stack) -> list[dict[str, Any]]:
    ours = [f"{lb.PREVIEW}={PREVIEW}", f"{lb.INSTANCE}={stack.orchestrator.instance}"]
    found = docker_client.api.volumes(filters={"label": ours}) or {}
    return list(found.get("Volumes") or [])


async def until_error(stack: Stack, timeout: float = 60) -> Any:
    deadline = stack.reactor.seconds() + timeout
    while stack.reactor.seconds() < deadline:
        record = stack.store.get(PREVIEW)
        if record is not None and record.error and stack.orchestrator.idle():
            return record
        await sleep(0.1)
    raise AssertionError(f"no error on {PREVIEW}: {stack.store.get(PREVIEW)}")


@pytest_twisted.ensureDeferred
async def test_data_lives_with_the_preview(stack: Stack, docker_client: Any) -> None:
    """first start: on_push then seed; a push: on_push before the route moves, no seed,
    data kept; a failing on_push keeps the old revision with an error; a restart does
    not seed again; reset wipes and runs on_push and seed; close removes the volume."""
    first = push(stack.forge, 7, files("version one"))
    assert (await stack.pull_request("opened", 7, first))[0] == 202
    await stack.until(PREVIEW, "running")
    assert await data_log(stack) == [f"on_push {first}", f"seed {first}"]
    (volume,) = volumes(docker_client, stack)
    labels = volume["Labels"]
    assert labels[lb.MANAGED] == "true" and labels[lb.REPO] == "Codertocat/Hello-World"
    assert labels[lb.NUMBER] == "7" and labels["prevu.test"] == "true"

    # a push: the first answer of the new revision already sees its on_push line.
    second = push(stack.forge, 7, files("version two"))
    assert (await stack.pull_request("synchronize", 7, second))[0] == 202
    deadline = stack.reactor.seconds() + 60
    while (await fetch(stack, "/"))[1] != "version two\n":
        assert stack.reactor.seconds() < deadline, "version two never served"
        await sleep(0.05)
    assert f"on_push {second}" in await data_log(stack)
    await stack.until(PREVIEW, "running")
    await stack.settled()
    assert await data_log(stack) == [f"on_push {first}", f"seed {first}", f"on_push {second}"]
    assert [v["Name"] for v in volumes(docker_client, stack)] == [volume["Name"]]

    # a failing on_push: version two keeps serving; running, with the error and its output.
    third = push(stack.forge, 7, files("version three", BROKEN))
    assert (await stack.pull_request("synchronize", 7, third))[0] == 202
    record = await until_error(stack)
    assert record.status == "running" and record.sha == third
    assert record.error == "on_push failed (exit 3): migration broke"
    assert await fetch(stack, "/") == (200, "version two\n")
    logs = [line.line for line in stack.store.read_logs(PREVIEW)]
    assert "migration broke" in logs

    # restart, then a good push: on_push runs, seed does not (kept in the record).
    await stack.shutdown()
    stack.boot()
    await stack.start()
    fourth = push(stack.forge, 7, files("version four"))
    assert (await stack.pull_request("synchronize", 7, fourth))[0] == 202
    await stack.until(PREVIEW, "building", "starting", timeout=10)
    await stack.until(PREVIEW, "running")
    await stack.settled()
    assert await fetch(stack, "/") == (200, "version four\n")
    assert (await data_log(stack))[-2:] == [f"on_push {second}", f"on_push {fourth}"]
    assert sum(line.startswith("seed") for line in await data_log(stack)) == 1
    record = stack.store.get(PREVIEW)
    assert record is not None and record.error is None

    # reset through the API: the data is gone, on_push then seed ran again, same commit.
    url = f"http://127.0.0.1:{stack.control_port}/api/previews/{PREVIEW}/reset"
    headers = {"Authorization": "Bearer t"}
    response = await within(treq.post(url, headers=headers, persistent=False), 10)
    assert response.code == 202
    await within(treq.content(response), 10)
    await stack.until(PREVIEW, "running")
    await stack.settled()
    assert await data_log(stack) == [f"on_push {fourth}", f"seed {fourth}"]
    assert await fetch(stack, "/") == (200, "version four\n")

    # close: the preview's volume goes with it.
    assert (await stack.pull_request("closed", 7, fourth))[0] == 202
    await stack.until(PREVIEW, "stopped")
    await stack.settled()
    assert volumes(docker_client, stack) == []
    assert stack.leftovers(docker_client, PREVIEW) == []
    response = await within(treq.post(url, headers=headers, persistent=False), 10)
    assert response.code == 409
    await within(treq.content(response), 10)


@pytest_twisted.ensureDeferred
async def test_a_failing_on_push_on_the_first_start_fails_the_preview(
    stack: Stack, docker_client: Any
) -> None:
    """Nothing served before: the preview fails with on_push's output; nothing is routed."""
    sha = push(stack.forge, 8, files("never", BROKEN))
    assert (await stack.pull_request("opened", 8, sha))[0] == 202
    deadline = stack.reactor.seconds() + 60
    while (record := stack.store.get("pr-8-hello-world")) is None or record.status != "failed":
        assert stack.reactor.seconds() < deadline, record
        await sleep(0.1)
    assert record.error == "on_push failed (exit 3): migration broke"
    assert (await stack.get("pr-8-hello-world.localhost"))[0] == 503, "the failed preview's page"
    await stack.settled()
    assert (await stack.pull_request("closed", 8, sha))[0] == 202
    await stack.until("pr-8-hello-world", "stopped")
    await stack.settled()
    assert stack.leftovers(docker_client, "pr-8-hello-world") == []
    ours = {
        "label": [f"{lb.PREVIEW}=pr-8-hello-world", f"{lb.INSTANCE}={stack.orchestrator.instance}"]
    }
    assert (docker_client.api.volumes(filters=ours) or {}).get("Volumes") in (None, [])


@pytest_twisted.ensureDeferred
async def test_create_volume_makes_a_labelled_volume_or_answers_the_existing_one(
    reactor: Any, thread_pool: Any, docker_client: Any
) -> None:
    """The adapter creates with prevu's labels; an existing volume comes back with its own."""
    engine = DockerEngine(reactor, thread_pool, labels=TEST_LABELS, self_container="none")
    name = f"prevu-test-{uuid.uuid4().hex[:12]}"
    mine = {lb.INSTANCE: "me", lb.PREVIEW: "pr-1-x"}
    try:
        made = await within(engine.create_volume(name, mine), 30)
        assert made.name == name and made.labels[lb.INSTANCE] == "me"
        assert made.labels[lb.MANAGED] == "true" and made.labels["prevu.test"] == "true"
        again = await within(engine.create_volume(name, {lb.INSTANCE: "other"}), 30)
        assert again.labels[lb.INSTANCE] == "me", "never relabelled"
        assert docker_client.api.inspect_volume(name)["Labels"][lb.PREVIEW] == "pr-1-x"
    finally:
        await within(engine.remove_volume(name), 30)
    assert docker_client.volumes.list(filters={"name": name}) == []
