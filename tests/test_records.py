"""The storage codec: lossless over every lifecycle state, and today's databases load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from attrs import asdict, evolve
from twisted.internet.task import Clock

from prevu import lifecycle as lc
from prevu.config import Config, ServerConfig
from prevu.labels import Identity
from prevu.orchestrator import OrchestratorSettings, records
from prevu.orchestrator.registry import Slot
from prevu.store import SqliteStore
from tests.test_lifecycle import STATES

FIXTURES = Path(__file__).parent / "fixtures"
RELEASE = "release-7ee9a63"
SETTINGS = OrchestratorSettings.from_config(
    Config(server=ServerConfig(state_dir="/srv/prevu")), instance="0123456789ab"
)
B = "b" * 40
RB = lc.Revision(B, "fork", 7)
# Beyond the lifecycle table: serials above 1 everywhere, awaiting next to what serves.
MORE: dict[str, lc.Preview] = {
    "awaiting-serial-7": lc.Preview(awaiting=RB),
    "awaiting-while-serving": evolve(STATES["running"], awaiting=RB, approved="a" * 40),
    "failed-older-revision": evolve(STATES["running"], failed=RB, error="old", note="n"),
    "closed-with-note": lc.Preview(closed=True, target=RB, note="pull request closed"),
}
ALL = {**STATES, **MORE}


def slot_with(state: lc.Preview) -> Slot:
    identity = Identity(SETTINGS.instance, "pr-1-shop", "acme/shop", 1, "github")
    return Slot(
        identity, SETTINGS.name("pr-1-shop"), "main", "https://f/x.git", "refs/pull/1/head",
        "private", 10.0, 20.0, state,
    )


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_state_round_trips_through_a_record(name: str) -> None:
    """decode(encode(state)) == state, for every lifecycle state (awaiting serials included)."""
    state = ALL[name]
    record = records.encode(slot_with(state), SETTINGS)
    assert records.decode(record) == state
    assert record.status == state.status
    stored = json.loads(record.data["state"])
    assert all(value not in ("0", "1") for value in stored.values()), "flags stay typed"


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_state_round_trips_through_sqlite(name: str, tmp_path: Path) -> None:
    """The same through the real SQLite store: the record read back decodes to the state."""
    store = SqliteStore(str(tmp_path / "s.sqlite3"), Clock())
    state = ALL[name]
    store.upsert(records.encode(slot_with(state), SETTINGS))
    loaded = store.get("pr-1-shop")
    assert loaded is not None and records.decode(loaded) == state
    store.close()


@pytest.mark.parametrize("name", sorted(ALL))
def test_a_restart_keeps_the_wanted_revision_and_forgets_jobs(name: str) -> None:
    """restore: no job in flight, nothing serving until reconcile adopts it; the rest kept."""
    state = ALL[name]
    slot = records.restore(records.encode(slot_with(state), SETTINGS), SETTINGS)
    assert slot.state == evolve(state, job=None, serving=None, asleep=False)
    assert (slot.id, slot.identity.repo, slot.access) == ("pr-1-shop", "acme/shop", "private")


def test_a_bad_state_document_is_an_error_not_a_guess() -> None:
    """An unknown format version fails loudly."""
    with pytest.raises(ValueError):
        records.state_from_json({"v": 99})


NEWER_FIELDS: dict[str, Any] = {"held": False}
"""State fields added after that release, as an old record restores them (their defaults)."""


def _expected(entry: dict[str, Any]) -> dict[str, Any]:
    return {**NEWER_FIELDS, **entry["state"]}


def test_a_database_of_release_7ee9a63_loads_into_the_same_states(tmp_path: Path) -> None:
    """Every record the old release wrote restores to the state that release restored."""
    database = tmp_path / "old.sqlite3"
    shutil.copy(FIXTURES / f"{RELEASE}.sqlite3", database)
    expected = json.loads((FIXTURES / f"{RELEASE}.json").read_text())["restored"]
    store = SqliteStore(str(database), Clock())
    loaded = store.list_previews()
    assert {record.id for record in loaded} == set(expected)
    assert len(loaded) == 13
    for record in loaded:
        slot = records.restore(record, SETTINGS)
        assert asdict(slot.state) == _expected(expected[record.id]), record.id
        assert record.status == expected[record.id]["status"]
    awaiting = {r.id: records.decode(r).awaiting for r in loaded}
    assert awaiting["pr-7-shop"] == lc.Revision("8" * 40, "feature-7", 1)
    store.close()


def test_a_reloaded_old_record_is_written_back_in_the_new_format(tmp_path: Path) -> None:
    """After loading an old record, encoding it gives a lossless record of the same state."""
    database = tmp_path / "old.sqlite3"
    shutil.copy(FIXTURES / f"{RELEASE}.sqlite3", database)
    store = SqliteStore(str(database), Clock())
    for record in store.list_previews():
        slot = records.restore(record, SETTINGS)
        again = records.encode(slot, SETTINGS)
        assert "state" in again.data and records.decode(again) == slot.state
        assert (again.sha, again.error) == (record.sha, record.error)
    store.close()


@pytest.mark.parametrize("untrusted", [True, False])
def test_a_fork_allowed_without_approval_stays_untrusted_across_a_restart(untrusted: bool) -> None:
    """`forks = "allow"` trust is in the record: a restored slot gets no secrets either."""
    slot = slot_with(STATES["running"])
    slot.untrusted = untrusted
    restored = records.restore(records.encode(slot, SETTINGS), SETTINGS)
    assert restored.untrusted is untrusted
