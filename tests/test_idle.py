"""Idle previews go to sleep after sleep_after and are destroyed after ttl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from prevu.idle import IdleAction, IdleService, idle_actions, note_activity
from prevu.ports import PreviewRecord

HOUR = 3600.0


def record(preview: str, status: str, updated_at: float = 0.0, **kw: Any) -> PreviewRecord:
    return PreviewRecord(
        id=preview, repo="a/b", number=1, status=status, updated_at=updated_at, **kw
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "idle", "expected"),
    [
        ("running", 0.4 * HOUR, None),
        ("running", 0.5 * HOUR, "sleep"),
        ("sleeping", 2 * HOUR, None),
        ("building", 2 * HOUR, None),
        ("failed", 2 * HOUR, None),
        ("running", 24 * HOUR, "destroy"),
        ("sleeping", 24 * HOUR, "destroy"),
        ("failed", 24 * HOUR, "destroy"),
        ("stopped", 48 * HOUR, None),
    ],
)
def test_idle_rules(status: str, idle: float, expected: str | None) -> None:
    """sleep_after = 30m applies to running previews; ttl = 1d to any that is not stopped."""
    now = 100 * HOUR
    actions = idle_actions(
        [record("p", status)], {"p": now - idle}, now, sleep_after=0.5 * HOUR, ttl=24 * HOUR
    )
    assert [a.kind for a in actions] == ([expected] if expected else [])


def test_zero_means_never() -> None:
    now = 1000 * HOUR
    assert idle_actions([record("p", "running")], {"p": 0.0}, now, 0, 0) == []


def test_activity_is_the_latest_request_or_deploy() -> None:
    known: dict[str, float] = {}
    previews = [record("a", "running", updated_at=10.0), record("b", "sleeping", updated_at=50.0)]
    note_activity(known, previews, {"a": 30.0})
    assert known == {"a": 30.0, "b": 50.0}
    # Asleep: a later status change (the sleep itself) does not count as use.
    note_activity(known, [record("b", "sleeping", updated_at=90.0)], {})
    assert known["b"] == 50.0
    # Redeployed: counts.
    note_activity(known, [record("b", "running", updated_at=95.0)], {})
    assert known["b"] == 95.0


class FakePreviews:
    def __init__(self, records: list[PreviewRecord]) -> None:
        self.records = records
        self.slept: list[str] = []
        self.destroyed: list[tuple[str, str]] = []

    def previews(self) -> list[PreviewRecord]:
        return self.records

    def sleep(self, preview: str) -> None:
        self.slept.append(preview)

    def destroy(self, preview: str, reason: str = "") -> bool:
        self.destroyed.append((preview, reason))
        return True


def test_service_runs_on_the_clock_and_requests_keep_previews_awake() -> None:
    clock = Clock()
    previews = FakePreviews([record("web", "running", updated_at=0.0)])
    last_request: dict[str, float] = {}
    service = IdleService(clock, previews, last_request, sleep_after=60.0, ttl=600.0)
    service.startService()
    assert service.interval == 15.0
    clock.advance(45)
    last_request["web"] = 45.0  # a request through the proxy
    clock.advance(30)
    assert previews.slept == []
    clock.advance(45)  # t=120: idle for 75 s
    assert previews.slept == ["web"]
    previews.records = [record("web", "sleeping", updated_at=120.0)]
    clock.pump([15] * 40)  # t=720: idle for 675 s
    assert previews.destroyed and previews.destroyed[0][0] == "web"
    assert "previews.ttl" in previews.destroyed[0][1]
    service.stopService()


def test_check_reports_its_actions() -> None:
    clock = Clock()
    clock.advance(1000)
    previews = FakePreviews([record("x", "running", updated_at=0.0)])
    service = IdleService(clock, previews, {}, sleep_after=60.0, ttl=0)
    assert service.check() == [IdleAction("sleep", "x", 1000.0)]


@pytest.mark.docker
@pytest_twisted.ensureDeferred
async def test_idle_preview_sleeps_and_the_next_request_wakes_it(
    reactor: Any, thread_pool: Any, tmp_path: Path, docker_client: Any
) -> None:
    """Real Docker: idle -> container stopped, route sleeping; a request -> 503, then served."""
    from tests.support.git_repos import ForgeRepo
    from tests.support.timeouts import sleep
    from tests.test_previews_e2e import Stack, push, site_files

    forge = ForgeRepo.create(tmp_path / "forge", "hello-world")
    stack = Stack(reactor, thread_pool, tmp_path, forge)
    await stack.start()
    service = IdleService(reactor, stack.orchestrator, {}, sleep_after=1.0, ttl=0)
    try:
        host = "pr-7-hello-world.localhost"
        sha = push(stack.forge, 7, site_files("awake\n"))
        await stack.pull_request("opened", 7, sha)
        await stack.until("pr-7-hello-world", "running")
        assert await stack.get(host) == (200, b"awake\n")
        record_ = stack.store.get("pr-7-hello-world")
        assert record_ is not None and record_.container is not None
        await sleep(1.1)
        assert [a.kind for a in service.check()] == ["sleep"]
        await stack.until("pr-7-hello-world", "sleeping", timeout=30)
        await stack.settled()
        state = docker_client.api.inspect_container(record_.container)["State"]
        assert state["Running"] is False
        code, body = await stack.get(host)
        assert code == 503 and b"waking up" in body
        await stack.until("pr-7-hello-world", "running", timeout=30)
        assert await stack.get(host) == (200, b"awake\n")
    finally:
        await stack.pull_request("closed", 7, sha)
        await stack.until("pr-7-hello-world", "stopped", timeout=30)
        await stack.shutdown()
