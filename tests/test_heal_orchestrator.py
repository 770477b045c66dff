"""Self-healing (issue 15) through the orchestrator, on fakes and a Clock: the reconcile heals."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from attrs import define, evolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import ensureDeferred

from prevu import labels as lb
from prevu.testing.fakes import FakeDocker
from tests.test_orchestrator import SHAS, Harness

PREVIEW = "pr-1-shop"


@define
class TalkingDocker(FakeDocker):
    """The fake engine, with a container that printed a few lines before it died."""

    async def container_logs(self, container: str, tail: int = 200) -> list[str]:
        await self._enter("container_logs", container)
        return [f"line {n}" for n in range(1, 31)][-tail:]


def harness(tmp_path: Path, **kwargs: Any) -> Harness:
    h = Harness(tmp_path, **kwargs)
    h.docker = TalkingDocker()
    h.orchestrator = h.make()
    h.publish(1, SHAS[0])
    h.deploy(1, SHAS[0])
    assert h.status(PREVIEW) == "running"
    return h


def reconcile(h: Harness) -> None:
    done = ensureDeferred(h.orchestrator.reconcile())
    h.settle(1.0)
    assert done.called


def serving(h: Harness) -> str:
    deployment = h.orchestrator.serving(PREVIEW)
    assert deployment is not None
    return deployment.container


def crash(h: Harness, oom: bool = False) -> None:
    """The serving container exits (137), killed for its memory limit when `oom`."""
    container = serving(h)
    info = h.docker.containers[container]
    h.docker.containers[container] = evolve(
        info, state="exited", exit_code=137, oom_killed=oom, memory=512 << 20
    )


def test_a_killed_container_is_started_again_by_the_next_reconcile(tmp_path: Path) -> None:
    """docker kill -> one reconcile -> the same container runs and is routed; no error left."""
    h = harness(tmp_path)
    before = serving(h)
    crash(h)
    reconcile(h)
    assert h.status(PREVIEW) == "running" and serving(h) == before
    assert h.docker.containers[before].state == "running"
    assert ("start", before) in h.docker.calls
    record = h.store.get(PREVIEW)
    assert record is not None and record.error is None
    route = h.routes.lookup(f"{PREVIEW}.localhost")
    assert route is not None and route.state == "ready"
    assert any("restarting it (1 of 3 within 10m)" in line for line in h.store.lines(PREVIEW))


def test_while_healing_the_status_is_starting_with_the_error(tmp_path: Path) -> None:
    """During the restart the record says `starting` and what happened."""
    h = harness(tmp_path)
    crash(h)
    h.docker.pause("start")
    done = ensureDeferred(h.orchestrator.reconcile())
    assert done.called
    record = h.store.get(PREVIEW)
    assert record is not None and record.status == "starting"
    assert "exited with code 137; restarting it" in (record.error or "")
    route = h.routes.lookup(f"{PREVIEW}.localhost")
    assert route is not None and route.state == "building", "a 503 that refreshes, not a 502"
    h.docker.release("start")
    h.settle(1.0)
    assert h.status(PREVIEW) == "running"


def test_a_removed_container_is_recreated_from_its_image(tmp_path: Path) -> None:
    """docker rm -f -> one reconcile -> a new container of the same image serves."""
    h = harness(tmp_path)
    before = serving(h)
    image = h.docker.runs[before].image
    h.docker.vanish(before)
    reconcile(h)
    assert h.status(PREVIEW) == "running"
    after = serving(h)
    assert after != before and h.docker.runs[after].image == image
    assert h.docker.runs[after].restart_limit == 3, "Docker's on-failure policy, limited"


def test_out_of_memory_past_the_limit_fails_with_the_reason_and_last_lines(tmp_path: Path) -> None:
    """Three OOM kills are restarted; the fourth within 10m fails the preview, saying why."""
    h = harness(tmp_path)
    for _ in range(3):
        crash(h, oom=True)
        reconcile(h)
        assert h.status(PREVIEW) == "running"
        h.clock.advance(30)
    crash(h, oom=True)
    reconcile(h)
    record = h.store.get(PREVIEW)
    assert record is not None and record.status == "failed"
    error = record.error or ""
    assert "exited with code 137: out of memory (limit 512m)" in error
    assert "restarted 3 times within 10m (restart_limit 3): gave up" in error
    assert error.endswith("last lines:\n" + "\n".join(f"line {n}" for n in range(21, 31)))
    route = h.routes.lookup(f"{PREVIEW}.localhost")
    assert route is not None and route.upstream is None and route.state == "failed"
    assert route.detail == error, "the proxy's failure page says why"


def test_restarts_older_than_the_window_no_longer_count(tmp_path: Path) -> None:
    """Three crashes, then 10 minutes of quiet: the next crash is restarted again."""
    h = harness(tmp_path)
    for _ in range(3):
        crash(h)
        reconcile(h)
    h.clock.advance(601)
    crash(h)
    reconcile(h)
    assert h.status(PREVIEW) == "running"


def test_the_engines_own_restarts_count(tmp_path: Path) -> None:
    """Docker restarted it 3 times (on-failure:3), then gave up: prevu does not restart it."""
    h = harness(tmp_path)
    container = serving(h)
    info = h.docker.containers[container]
    h.docker.containers[container] = evolve(info, restart_count=2)
    reconcile(h)
    assert h.status(PREVIEW) == "running"
    crash(h)
    h.docker.containers[container] = evolve(h.docker.containers[container], restart_count=3)
    reconcile(h)
    assert h.status(PREVIEW) == "failed"


def test_a_sleeping_preview_is_not_woken_by_the_reconcile(tmp_path: Path) -> None:
    """Stopped on purpose: the reconcile leaves it asleep, whatever its exit code."""
    h = harness(tmp_path)
    container = serving(h)
    h.orchestrator.sleep(PREVIEW)
    h.settle(1.0)
    assert h.status(PREVIEW) == "sleeping"
    starts = [call for call in h.docker.calls if call[0] == "start"]
    crash(h)
    for _ in range(3):
        reconcile(h)
    assert h.status(PREVIEW) == "sleeping"
    assert [call for call in h.docker.calls if call[0] == "start"] == starts
    assert h.docker.containers[container].state == "exited"


def test_a_closed_preview_is_never_healed(tmp_path: Path) -> None:
    """Closed: its containers go, nothing is started again."""
    h = harness(tmp_path)
    crash(h)
    h.close(1, SHAS[0])
    h.settle(2.0)
    reconcile(h)
    assert h.status(PREVIEW) == "stopped" and h.leftovers(PREVIEW) == []


def test_restart_limit_zero_fails_at_once(tmp_path: Path) -> None:
    """`restart_limit = 0`: the old behaviour, with the reason."""
    h = harness(tmp_path, restart_limit=0)
    crash(h)
    reconcile(h)
    record = h.store.get(PREVIEW)
    assert record is not None and record.status == "failed"
    assert "not restarted ([previews] restart_limit = 0)" in (record.error or "")


def test_after_a_prevu_restart_a_removed_container_is_rebuilt(tmp_path: Path) -> None:
    """The app model is gone with the old process: the commit is built again, then served."""
    h = harness(tmp_path)
    h.orchestrator.stop()
    h.orchestrator = h.make()
    done = ensureDeferred(h.orchestrator.start())
    assert done.called and h.status(PREVIEW) == "running"
    before = serving(h)
    builds = len(h.docker.builds)
    h.docker.vanish(before)
    reconcile(h)
    assert h.status(PREVIEW) == "running"
    assert serving(h) != before and len(h.docker.builds) == builds + 1


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("crash"), st.booleans()),
        st.tuples(st.just("remove"), st.just(0)),
        st.tuples(st.just("engine-restarts"), st.integers(1, 3)),
        st.tuples(st.just("advance"), st.integers(1, 400)),
        st.tuples(st.just("reconcile"), st.just(0)),
        st.tuples(st.just("sleep"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_any_sequence_of_failures_heals_within_the_limit_and_never_wakes_a_sleeper(
    steps: list[tuple[str, object]],
) -> None:
    """Over any sequence of crashes, OOM kills, removals, Docker restarts, time and sleep:
    prevu restarts at most restart_limit times within any restart_window, never after the
    preview failed, and never a sleeping one; the status is always one of the expected."""
    with tempfile.TemporaryDirectory() as tmp:
        h = harness(Path(tmp))
        made: list[float] = []
        for action, argument in steps:
            state = h.orchestrator.registry.get(PREVIEW).state  # type: ignore[union-attr]
            container = state.serving.container if state.serving else None
            info = h.docker.containers.get(container) if container else None
            calls = len(h.docker.calls)
            if action == "crash" and info is not None and info.running:
                crash(h, oom=bool(argument))
            elif action == "remove" and container is not None:
                h.docker.vanish(container)
            elif action == "engine-restarts" and info is not None and info.running:
                bumped = info.restart_count + int(argument)  # type: ignore[call-overload]
                h.docker.containers[info.id] = evolve(info, restart_count=bumped)
            elif action == "advance":
                h.clock.advance(float(argument))  # type: ignore[arg-type]
            elif action == "reconcile":
                reconcile(h)
            elif action == "sleep":
                h.orchestrator.sleep(PREVIEW)
                h.settle(0.5)
            heals = [c for c in h.docker.calls[calls:] if c[0] in ("start", "run")]
            if heals:
                assert action == "reconcile", "only the reconcile restarts"
                assert state.status == "running", f"healed from {state.status}"
                made.append(h.clock.seconds())
            status = h.status(PREVIEW)
            assert status in ("running", "starting", "failed", "sleeping"), status
        for at in made:
            assert len([m for m in made if 0 <= at - m < 600.0]) <= 3


@define
class ComposeLikeDocker(TalkingDocker):
    """The fake engine whose logs say which container printed them."""

    async def container_logs(self, container: str, tail: int = 200) -> list[str]:
        await self._enter("container_logs", container)
        return [f"{container} line {n}" for n in range(1, 31)][-tail:]


def test_a_part_container_past_the_limit_fails_with_its_service_and_its_last_lines(
    tmp_path: Path,
) -> None:
    """A Compose preview's db, OOM-killed after the engine's 3 restarts: the preview
    fails naming the service, the reason and the db's own last lines (not web's)."""
    h = Harness(tmp_path)
    h.docker = ComposeLikeDocker()
    h.orchestrator = h.make()
    h.publish(1, SHAS[0])
    h.deploy(1, SHAS[0])
    web = serving(h)
    head = h.docker.containers[web]
    project = "prevu-pr-1-shop-keep"
    h.docker.containers[web] = evolve(head, labels={**head.labels, lb.PROJECT: project})
    owner = {k: v for k, v in head.labels.items() if k in (lb.INSTANCE, lb.PREVIEW, lb.MANAGED)}
    labels = {**owner, lb.PART: "keep", lb.PROJECT: project, lb.SERVICE: "db"}
    h.docker.containers["db1"] = evolve(head, id="db1", name="db-1", labels=labels)
    reconcile(h)
    assert h.status(PREVIEW) == "running"
    h.docker.containers["db1"] = evolve(
        h.docker.containers["db1"],
        state="exited",
        exit_code=137,
        oom_killed=True,
        restart_count=3,
        memory=64 << 20,
    )
    reconcile(h)
    record = h.store.get(PREVIEW)
    assert record is not None and record.status == "failed"
    error = record.error or ""
    assert error.startswith("service db: container db1 exited with code 137: out of memory")
    assert "(limit 64m)" in error and "gave up" in error
    assert error.endswith("last lines:\n" + "\n".join(f"db1 line {n}" for n in range(21, 31)))
