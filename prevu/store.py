"""
The state store: previews and their log lines in SQLite under `state_dir`.

Synchronous on purpose and called on the reactor thread only (see
`prevu.ports`): the database is a local file in WAL mode with
`synchronous=NORMAL`, so a write is an append to the WAL without an fsync
and each call takes tens of microseconds, less than handing it to a thread.
One connection, one writer, no locks. Durability: a power cut may lose the
last few writes, never corrupt the file; Docker labels stay the source of
truth for what runs, and reconciliation repairs the rest.

Log lines are capped per preview (`max_log_lines`, oldest dropped first) so a
chatty build cannot fill the disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from attrs import define, evolve, field
from twisted.logger import Logger

from prevu.ports import (
    DeliveryEntry,
    LogLine,
    LogStream,
    LogWatcher,
    PreviewRecord,
    Store,
    UnverifiedDelivery,
)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS previews (
    id TEXT PRIMARY KEY,
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    branch TEXT NOT NULL,
    sha TEXT NOT NULL,
    status TEXT NOT NULL,
    url TEXT NOT NULL,
    host TEXT NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    access TEXT NOT NULL,
    forge TEXT NOT NULL,
    clone_url TEXT NOT NULL,
    ref TEXT NOT NULL,
    container TEXT,
    image TEXT,
    network TEXT,
    closed INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    preview TEXT NOT NULL,
    stream TEXT NOT NULL,
    at REAL NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_preview ON logs (preview, seq);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_by_time ON deliveries (at);
CREATE TABLE IF NOT EXISTS delivery_trail (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery TEXT NOT NULL,
    forge TEXT NOT NULL,
    event TEXT NOT NULL,
    action TEXT NOT NULL,
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    sha TEXT NOT NULL,
    at REAL NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    preview TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trail_by_pr ON delivery_trail (repo COLLATE NOCASE, number, seq);
CREATE TABLE IF NOT EXISTS unverified_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery TEXT NOT NULL,
    forge TEXT NOT NULL,
    at REAL NOT NULL,
    peer TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""
DELIVERIES_MIN_AGE = 7 * 24 * 3600.0
"""Acted-on delivery ids and body digests are kept at least this long (seconds)."""
UNVERIFIED_KEPT = 1000
UNVERIFIED_PER_MINUTE = 60
_TRAIL = (
    "delivery", "forge", "event", "action", "repo", "number", "sha", "at",
    "decision", "reason", "preview", "outcome",
)  # fmt: skip
_COLUMNS = (
    "id", "repo", "number", "branch", "sha", "status", "url", "host", "error",
    "created_at", "updated_at", "access", "forge", "clone_url", "ref",
    "container", "image", "network", "closed", "data",
)  # fmt: skip
_MAX_LINE = 8192


def _row_to_record(row: sqlite3.Row) -> PreviewRecord:
    values: dict[str, Any] = {name: row[name] for name in _COLUMNS}
    values["closed"] = bool(values["closed"])
    values["data"] = json.loads(values["data"])
    return PreviewRecord(**values)


def _record_to_row(record: PreviewRecord) -> tuple[Any, ...]:
    values: dict[str, Any] = {name: getattr(record, name) for name in _COLUMNS}
    values["closed"] = int(record.closed)
    values["data"] = json.dumps(dict(record.data), sort_keys=True)
    return tuple(values[name] for name in _COLUMNS)


@define
class SqliteStore:
    """
    `prevu.ports.Store` on SQLite. `path` is the database file (":memory:" works
    for tests); `clock` provides `seconds()` for log timestamps.
    """

    path: str
    clock: Any
    max_log_lines: int = 20_000
    max_deliveries: int = 10_000
    """Remembered delivery ids beyond this count are forgotten once older than 7 days."""
    deliveries_kept: int = 10_000
    """Entries of the visible delivery trail (`[server] deliveries_kept`)."""
    log: Logger = field(factory=Logger, eq=False)
    _db: sqlite3.Connection = field(init=False, eq=False)
    _watchers: list[LogWatcher] = field(factory=list, init=False, eq=False)
    _appends: int = field(default=0, init=False, eq=False)
    _deliveries: int = field(default=0, init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        # isolation_level=None: autocommit; each statement is its own transaction.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @classmethod
    def in_state_dir(cls, state_dir: str, clock: Any, deliveries_kept: int = 10_000) -> SqliteStore:
        """The store at `<state_dir>/prevu.sqlite3`, keeping `deliveries_kept` trail entries."""
        path = os.path.join(state_dir, "prevu.sqlite3")
        return cls(path, clock, deliveries_kept=deliveries_kept)

    def close(self) -> None:
        """Close the database (at shutdown)."""
        self._db.close()

    # --- previews -------------------------------------------------------------

    def list_previews(self) -> list[PreviewRecord]:
        rows = self._db.execute("SELECT * FROM previews ORDER BY created_at, id").fetchall()
        return [_row_to_record(row) for row in rows]

    def get(self, preview: str) -> PreviewRecord | None:
        row = self._db.execute("SELECT * FROM previews WHERE id = ?", (preview,)).fetchone()
        return None if row is None else _row_to_record(row)

    def upsert(self, record: PreviewRecord) -> None:
        placeholders = ", ".join("?" for _ in _COLUMNS)
        self._db.execute(
            f"INSERT OR REPLACE INTO previews ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
            _record_to_row(record),
        )

    def delete(self, preview: str) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM logs WHERE preview = ?", (preview,))
            self._db.execute("DELETE FROM previews WHERE id = ?", (preview,))

    # --- logs -------------------------------------------------------------------

    def append_log(self, preview: str, stream: LogStream, line: str) -> LogLine:
        line = line[:_MAX_LINE]
        at = float(self.clock.seconds())
        cursor = self._db.execute(
            "INSERT INTO logs (preview, stream, at, line) VALUES (?, ?, ?, ?)",
            (preview, stream, at, line),
        )
        seq = cursor.lastrowid
        assert seq is not None
        entry = LogLine(seq=seq, preview=preview, stream=stream, at=at, line=line)
        self._appends += 1
        if self._appends % 1000 == 0:
            self._trim(preview)
        for watcher in list(self._watchers):
            try:
                watcher(entry)
            except Exception:
                self.log.failure("log watcher failed")
        return entry

    def _trim(self, preview: str) -> None:
        self._db.execute(
            "DELETE FROM logs WHERE preview = ? AND seq <= ("
            " SELECT seq FROM logs WHERE preview = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (preview, preview, self.max_log_lines),
        )

    def read_logs(self, preview: str, after: int = 0, limit: int = 10_000) -> list[LogLine]:
        rows = self._db.execute(
            "SELECT seq, preview, stream, at, line FROM logs"
            " WHERE preview = ? AND seq > ? ORDER BY seq LIMIT ?",
            (preview, after, limit),
        ).fetchall()
        return [
            LogLine(
                seq=r["seq"], preview=r["preview"], stream=r["stream"], at=r["at"], line=r["line"]
            )
            for r in rows
        ]

    def watch_logs(self, watcher: LogWatcher) -> Callable[[], None]:
        self._watchers.append(watcher)

        def stop() -> None:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

        return stop

    # --- webhook deliveries -----------------------------------------------------

    def remember_delivery(self, delivery: str) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO deliveries (id, at) VALUES (?, ?)",
            (delivery, float(self.clock.seconds())),
        )
        if cursor.rowcount == 0:
            return False
        self._deliveries += 1
        if self._deliveries % 100 == 0:
            self._trim_deliveries()
        return True

    def seen_delivery(self, delivery: str) -> bool:
        row = self._db.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery,)).fetchone()
        return row is not None

    def _trim_deliveries(self) -> None:
        # Never before DELIVERIES_MIN_AGE: a redelivery within a week stays a duplicate.
        self._db.execute(
            "DELETE FROM deliveries WHERE at < ? AND id IN ("
            " SELECT id FROM deliveries ORDER BY at DESC LIMIT -1 OFFSET ?)",
            (float(self.clock.seconds()) - DELIVERIES_MIN_AGE, self.max_deliveries),
        )

    # --- the delivery trail ---------------------------------------------------------

    def record_delivery(self, entry: DeliveryEntry) -> DeliveryEntry:
        if entry.decision == "queued" and entry.sha and entry.number:
            self._db.execute(
                "UPDATE delivery_trail SET outcome = ? WHERE forge = ? AND repo = ? COLLATE NOCASE"
                " AND number = ? AND decision = 'queued' AND outcome = '' AND sha != ''"
                " AND sha != ?",
                (
                    f"superseded by {entry.sha[:12]}",
                    entry.forge,
                    entry.repo,
                    entry.number,
                    entry.sha,
                ),
            )
        values = tuple(getattr(entry, name) for name in _TRAIL)
        columns, marks = ", ".join(_TRAIL), ", ".join("?" * len(_TRAIL))
        cursor = self._db.execute(
            f"INSERT INTO delivery_trail ({columns}) VALUES ({marks})", values
        )
        self._db.execute(
            "DELETE FROM delivery_trail WHERE seq <= ?",
            (int(cursor.lastrowid or 0) - self.deliveries_kept,),
        )
        return evolve(entry, seq=int(cursor.lastrowid or 0))

    def fill_outcome(self, forge: str, delivery: str, outcome: str) -> None:
        self._db.execute(
            "UPDATE delivery_trail SET outcome = ? WHERE forge = ? AND delivery = ?",
            (outcome, forge, delivery),
        )

    def delivery_trail(self, repo: str = "", number: int = 0) -> list[DeliveryEntry]:
        query, args = "SELECT * FROM delivery_trail", list[Any]()
        if repo:
            query += " WHERE repo = ? COLLATE NOCASE"
            args.append(repo)
            if number:
                query += " AND number = ?"
                args.append(number)
        rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return [DeliveryEntry(**{name: row[name] for name in (*_TRAIL, "seq")}) for row in rows]

    def record_unverified(self, entry: UnverifiedDelivery) -> bool:
        (recent,) = self._db.execute(
            "SELECT COUNT(*) FROM unverified_deliveries WHERE at > ?", (entry.at - 60.0,)
        ).fetchone()
        if recent >= UNVERIFIED_PER_MINUTE:
            return False
        cursor = self._db.execute(
            "INSERT INTO unverified_deliveries (delivery, forge, at, peer, reason)"
            " VALUES (?, ?, ?, ?, ?)",
            (entry.delivery, entry.forge, entry.at, entry.peer, entry.reason),
        )
        self._db.execute(
            "DELETE FROM unverified_deliveries WHERE seq <= ?",
            (int(cursor.lastrowid or 0) - UNVERIFIED_KEPT,),
        )
        return True

    def unverified_deliveries(self) -> list[UnverifiedDelivery]:
        rows = self._db.execute(
            "SELECT delivery, forge, at, peer, reason FROM unverified_deliveries ORDER BY seq"
        ).fetchall()
        return [UnverifiedDelivery(*row) for row in rows]


def _conforms(store: SqliteStore) -> Store:
    """mypy checks here that SqliteStore satisfies the Store Protocol."""
    return store
