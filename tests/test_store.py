"""The SQLite store: previews, log lines, deliveries; plain pytest with tmp_path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from attrs import evolve
from twisted.internet.task import Clock

from prevu.ports import LogLine, PreviewRecord
from prevu.store import SqliteStore


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> SqliteStore:
    return SqliteStore.in_state_dir(str(tmp_path / "state"), clock)


def record(id: str = "pr-7-shop", **changes: object) -> PreviewRecord:
    base = PreviewRecord(
        id=id, repo="acme/shop", number=7, branch="feature", sha="a" * 40,
        status="building", url="http://pr-7-shop.localhost:8000/", host="pr-7-shop.localhost",
        created_at=10.0, updated_at=10.0, access="public", clone_url="file:///x.git",
        ref="refs/pull/7/head", data={"approved_sha": "b" * 40},
    )
    return evolve(base, **changes)  # type: ignore[arg-type]


def test_upsert_get_list_roundtrip_every_field(store: SqliteStore) -> None:
    """What goes in comes back out, field for field."""
    first = record(error="boom", container="c1", image="sha256:1", network="prevu-x", closed=True)
    store.upsert(first)
    assert store.get(first.id) == first
    assert store.list_previews() == [first]
    assert store.get("nope") is None


def test_upsert_replaces_and_list_is_oldest_first(store: SqliteStore) -> None:
    """Upsert replaces by id; the list is ordered by creation."""
    store.upsert(record("b", created_at=2.0))
    store.upsert(record("a", created_at=3.0))
    store.upsert(record("b", created_at=2.0, status="running"))
    listed = [(r.id, r.status) for r in store.list_previews()]
    assert listed == [("b", "running"), ("a", "building")]


def test_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    """Previews and logs persist in <state_dir>/prevu.sqlite3 across restarts."""
    store = SqliteStore.in_state_dir(str(tmp_path), clock)
    store.upsert(record())
    store.append_log("pr-7-shop", "build", "Step 1/4")
    store.close()
    again = SqliteStore.in_state_dir(str(tmp_path), clock)
    assert again.get("pr-7-shop") == record()
    assert [line.line for line in again.read_logs("pr-7-shop")] == ["Step 1/4"]
    assert (tmp_path / "prevu.sqlite3").exists()


def test_logs_are_per_preview_ordered_and_followable(store: SqliteStore, clock: Clock) -> None:
    """Lines come back in order with timestamps; `after` continues from a seq."""
    one = store.append_log("p1", "build", "a")
    clock.advance(1)
    store.append_log("p2", "build", "other")
    two = store.append_log("p1", "run", "b")
    assert [(x.line, x.stream) for x in store.read_logs("p1")] == [("a", "build"), ("b", "run")]
    assert store.read_logs("p1", after=one.seq) == [two]
    assert two.at == one.at + 1
    assert store.read_logs("p1", limit=1) == [one]


def test_watchers_see_new_lines_until_stopped(store: SqliteStore) -> None:
    """watch_logs delivers every new line (for SSE) until its stop function is called."""
    seen: list[LogLine] = []
    stop = store.watch_logs(seen.append)
    store.append_log("p1", "build", "x")
    stop()
    stop()
    store.append_log("p1", "build", "y")
    assert [line.line for line in seen] == ["x"]


def test_a_failing_watcher_does_not_break_logging(store: SqliteStore) -> None:
    """One broken watcher neither loses the line nor stops the others."""
    seen: list[str] = []

    def broken(line: LogLine) -> None:
        raise RuntimeError("broken watcher")

    store.watch_logs(broken)
    store.watch_logs(lambda line: seen.append(line.line))
    store.append_log("p1", "build", "kept")
    assert seen == ["kept"]
    assert [x.line for x in store.read_logs("p1")] == ["kept"]


def test_delete_removes_preview_and_its_logs_and_is_idempotent(store: SqliteStore) -> None:
    """Deleting a preview removes its log lines too; deleting again is fine."""
    store.upsert(record())
    store.append_log("pr-7-shop", "build", "x")
    store.append_log("other", "build", "y")
    store.delete("pr-7-shop")
    store.delete("pr-7-shop")
    assert store.get("pr-7-shop") is None
    assert store.read_logs("pr-7-shop") == []
    assert len(store.read_logs("other")) == 1


def test_logs_are_capped_per_preview(tmp_path: Path, clock: Clock) -> None:
    """A chatty build keeps only the newest max_log_lines lines."""
    store = SqliteStore(str(tmp_path / "db"), clock, max_log_lines=100)
    for index in range(2000):
        store.append_log("p1", "build", f"line {index}")
    lines = store.read_logs("p1")
    assert len(lines) <= 1100
    assert lines[-1].line == "line 1999"


def test_long_lines_are_truncated(store: SqliteStore) -> None:
    """One enormous line cannot bloat the database."""
    entry = store.append_log("p1", "build", "x" * 100_000)
    assert len(entry.line) == 8192


def test_remember_delivery_detects_redelivery(store: SqliteStore) -> None:
    """A delivery id is new once; the same id again is a redelivery."""
    assert store.remember_delivery("d-1") is True
    assert store.remember_delivery("d-1") is False
    assert store.remember_delivery("d-2") is True


def test_invalid_status_cannot_exist() -> None:
    """Records validate their status."""
    with pytest.raises(ValueError):
        record(status="exploded")


def test_appending_is_fast_enough_for_the_reactor(store: SqliteStore) -> None:
    """Appending a log line takes well under a millisecond (it runs on the reactor thread)."""
    started = time.perf_counter()
    for index in range(2000):
        store.append_log("p1", "build", f"line {index}")
    per_line = (time.perf_counter() - started) / 2000
    assert per_line < 0.001, per_line
