"""
Issue 11's inputs on the real Docker engine and real git:

- kind 1: the head moves A -> B -> C; synchronize(C) then a delayed
  synchronize(B): C is served, status running; then `closed` followed by a
  late `synchronize`: nothing runs;
- kinds 3 and 4: a delivery ignored while the repository is not listed is
  processed when redelivered after the config is fixed; the repository is
  unlisted again while its preview runs, and its close is honoured at once.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import pytest_twisted
import treq

from prevu.config import RepoConfig
from prevu.forge.github import sign
from tests.support.timeouts import within
from tests.test_identity_e2e import reboot
from tests.test_previews_e2e import SECRET, Stack, push, site_files
from tests.test_previews_e2e import stack as e2e_stack

pytestmark = pytest.mark.docker
PREVIEW = "pr-1-hello-world"
HOST = f"{PREVIEW}.localhost"
stack = e2e_stack
"""The end-to-end stack fixture (one prevu on the real engine, real git)."""


def body(stack: Stack, action: str, sha: str, updated_at: str) -> bytes:
    data = json.loads(stack.payload(f"pull_request-{action}.json", 1, sha))
    data["pull_request"]["updated_at"] = updated_at
    return json.dumps(data).encode()


async def send(stack: Stack, raw: bytes, delivery: str) -> tuple[int, dict[str, Any]]:
    """POST one signed `pull_request` delivery under the id `delivery`."""
    headers = {
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(SECRET, raw),
        "Content-Type": "application/json",
    }
    url = f"http://127.0.0.1:{stack.control_port}/webhooks/github"
    response = await within(treq.post(url, data=raw, headers=headers, persistent=False), 10)
    return response.code, json.loads(await within(treq.content(response), 10))


@pytest_twisted.ensureDeferred
async def test_late_events_never_win(stack: Stack, docker_client: Any) -> None:
    """Kind 1 and a late synchronize after the close, on the real engine."""
    a = push(stack.forge, 1, site_files("commit A\n"))
    assert (await send(stack, body(stack, "opened", a, "2026-01-01T10:00:01Z"), "a"))[0] == 202
    await stack.until(PREVIEW, "running")
    b = push(stack.forge, 1, site_files("commit B\n"))
    c = push(stack.forge, 1, site_files("commit C\n"))
    late_b = body(stack, "synchronize", b, "2026-01-01T10:00:02Z")
    code, answer = await send(stack, body(stack, "synchronize", c, "2026-01-01T10:00:03Z"), "c")
    assert (code, answer["status"]) == (202, "queued")
    code, answer = await send(stack, late_b, "b")
    assert (code, answer["status"]) == (200, "ignored") and "stale" in answer["reason"]
    await stack.until(PREVIEW, "building", "starting", timeout=10)
    await stack.until(PREVIEW, "running")
    await stack.settled()
    record = stack.store.get(PREVIEW)
    assert record is not None and (record.status, record.sha) == ("running", c)
    assert await stack.get(HOST) == (200, b"commit C\n")

    closed = body(stack, "closed", c, "2026-01-01T10:00:05Z")
    assert (await send(stack, closed, "close"))[0] == 202
    assert (await stack.get(HOST))[0] == 410  # the "removed" page (docs/proxy.md)
    late = body(stack, "synchronize", c, "2026-01-01T10:00:04Z")
    code, answer = await send(stack, late, "late")
    assert (code, answer["status"]) == (200, "ignored")
    await stack.until(PREVIEW, "stopped")
    await stack.settled()
    assert stack.leftovers(docker_client, PREVIEW) == []
    assert (await stack.get(HOST))[0] == 410


@pytest_twisted.ensureDeferred
async def test_redelivery_repairs_and_closes_are_honoured(stack: Stack, docker_client: Any) -> None:
    """Kinds 4 then 3: ignored, config fixed, redelivered: runs; unlisted again: close honoured."""
    listed = stack.config.repos
    elsewhere = (RepoConfig("acme/other", access="public"),)
    await reboot(stack, repos=elsewhere)
    a = push(stack.forge, 1, site_files("served\n"))
    opened = body(stack, "opened", a, "2026-01-01T10:00:01Z")
    code, answer = await send(stack, opened, "GUID-1")
    assert (code, answer["status"]) == (200, "ignored") and "not listed" in answer["reason"]
    assert stack.store.get(PREVIEW) is None

    await reboot(stack, repos=listed)
    code, answer = await send(stack, opened, "GUID-1")  # GitHub's "Redeliver"
    assert (code, answer["status"], answer["preview"]) == (202, "queued", PREVIEW)
    await stack.until(PREVIEW, "running")
    assert await stack.get(HOST) == (200, b"served\n")
    code, answer = await send(stack, opened, "GUID-1")
    assert (code, answer["status"]) == (200, "duplicate")

    await reboot(stack, repos=elsewhere)
    assert await stack.get(HOST) == (200, b"served\n"), "adopted after the restart"
    closed = body(stack, "closed", a, "2026-01-01T10:00:09Z")
    code, answer = await send(stack, closed, "GUID-2")
    assert (code, answer["status"]) == (202, "queued")
    assert (await stack.get(HOST))[0] == 410  # the "removed" page
    await stack.until(PREVIEW, "stopped")
    await stack.settled()
    assert stack.leftovers(docker_client, PREVIEW) == []


@pytest_twisted.ensureDeferred
async def test_a_random_run_converges_and_leaves_nothing(stack: Stack, docker_client: Any) -> None:
    """
    A bounded random run (fixed seed, 20 forge events over two pull requests,
    delivered late, out of order and repeated): each open pull request ends
    serving its forge head; after closing all, nothing is left on the engine.
    """
    rng = random.Random(11)
    forge: dict[int, tuple[bool, str]] = {}
    pending: list[bytes] = []
    delivered: list[tuple[bytes, str]] = []
    clock = 0
    actions: list[str] = []

    def emit(number: int, action: str, sha: str) -> None:
        nonlocal clock
        clock += 1
        actions.append(action)
        data = json.loads(stack.payload(f"pull_request-{action}.json", number, sha))
        data["pull_request"]["updated_at"] = f"2026-01-01T10:{clock // 60:02d}:{clock % 60:02d}Z"
        pending.append(json.dumps(data).encode())

    for step in range(20):
        number = rng.choice([1, 2])
        is_open, head = forge.get(number, (False, ""))
        if number not in forge:
            head = push(stack.forge, number, site_files(f"pr {number} step {step}\n"))
            forge[number] = (True, head)
            emit(number, "opened", head)
        elif is_open and rng.random() < 0.75:
            head = push(stack.forge, number, site_files(f"pr {number} step {step}\n"))
            forge[number] = (True, head)
            emit(number, "synchronize", head)
        elif is_open:
            forge[number] = (False, head)
            emit(number, "closed", head)
        else:
            forge[number] = (True, head)
            emit(number, "reopened", head)
        while pending and rng.random() < 0.5:  # some deliveries now, in any order
            raw = pending.pop(rng.randrange(len(pending)))
            delivery = f"r-{len(delivered)}"
            await send(stack, raw, delivery)
            delivered.append((raw, delivery))
        if delivered and rng.random() < 0.2:  # a redelivery
            await send(stack, *rng.choice(delivered))
    # The seed gives a run worth having: both PRs, closes, a reopen, late deliveries.
    assert set(forge) == {1, 2} and {"closed", "reopened"} <= set(actions), actions
    assert pending and any(is_open for is_open, _ in forge.values())
    rng.shuffle(pending)
    for raw in pending:
        await send(stack, raw, f"late-{clock}-{pending.index(raw)}")
    await stack.settled(60)
    for number, (is_open, head) in sorted(forge.items()):
        preview = f"pr-{number}-hello-world"
        if is_open:
            await stack.until(preview, "running")
            record = stack.store.get(preview)
            assert record is not None and record.sha == head, (number, record)
            code, content = await stack.get(f"{preview}.localhost")
            assert code == 200 and content.startswith(f"pr {number} step".encode())
        else:
            # 410 "removed" once its preview existed, 404 if it never did: nothing served.
            assert (await stack.get(f"{preview}.localhost"))[0] in (404, 410)
    await stack.settled(60)
    for number, (is_open, head) in sorted(forge.items()):
        if is_open:
            clock += 1
            data = json.loads(stack.payload("pull_request-closed.json", number, head))
            data["pull_request"]["updated_at"] = f"2026-01-01T11:00:{clock % 60:02d}Z"
            assert (await send(stack, json.dumps(data).encode(), f"end-{number}"))[0] == 202
    for number in forge:
        await stack.until(f"pr-{number}-hello-world", "stopped")
    await stack.settled(60)
    for number in forge:
        assert stack.leftovers(docker_client, f"pr-{number}-hello-world") == []
