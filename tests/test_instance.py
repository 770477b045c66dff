"""The instance id: random and kept, or configured; an upgraded state_dir keeps its old id."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from prevu import instance
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.config import Config, ServerConfig, parse_config
from prevu.errors import ConfigError
from prevu.orchestrator import Orchestrator, OrchestratorSettings
from prevu.ports import PreviewRecord
from prevu.routing import RouteRegistry
from prevu.store import SqliteStore
from prevu.testing.fakes import FakeDocker, FakeGit, FakeStore
from prevu.testing.health import FakeHealth


def test_a_fresh_state_dir_gets_a_random_id_kept_in_its_instance_file(tmp_path: Path) -> None:
    """First start: 12 random hex digits written to state_dir/instance, then read back."""
    state = tmp_path / "state"
    first = instance.load_or_create(str(state))
    assert len(first) == 12 and int(first, 16) >= 0
    assert (state / "instance").read_text() == first + "\n"
    assert instance.load_or_create(str(state)) == first
    assert first != instance.legacy_id(str(state))
    assert [p.name for p in state.iterdir()] == ["instance"], "no temporary file left"


def test_two_state_dirs_with_the_same_path_in_two_containers_get_different_ids(
    tmp_path: Path,
) -> None:
    """The same path (emptied in between, as a second container's fresh volume) -> a new id;
    the old path hash would have been the same both times."""
    state = tmp_path / "var" / "lib" / "prevu"
    first = instance.load_or_create(str(state))
    (state / "instance").unlink()
    second = instance.load_or_create(str(state))
    assert first != second
    assert instance.legacy_id(str(state)) == instance.legacy_id(str(state))


def test_a_configured_instance_wins_and_writes_nothing(tmp_path: Path) -> None:
    """`[server] instance` is used as given; state_dir is left alone."""
    state = tmp_path / "state"
    assert instance.load_or_create(str(state), "shop-prod") == "shop-prod"
    assert not state.exists()


def test_a_state_dir_that_records_previews_keeps_the_path_hash_once(tmp_path: Path) -> None:
    """Upgrade: a store with previews means objects labelled with the path hash exist;
    that id is written to the instance file, so they stay this prevu's."""
    state = tmp_path / "state"
    state.mkdir()
    store = SqliteStore.in_state_dir(str(state), Clock())
    store.upsert(PreviewRecord(id="pr-1-shop", repo="acme/shop", number=1))
    store.close()
    adopted = instance.load_or_create(str(state))
    assert adopted == instance.legacy_id(str(state))
    assert (state / "instance").read_text() == adopted + "\n"
    assert instance.load_or_create(str(state)) == adopted


def test_an_empty_store_made_by_this_start_is_no_upgrade(tmp_path: Path) -> None:
    """The store is opened before the orchestrator: an empty one still gets a random id."""
    state = tmp_path / "state"
    state.mkdir()
    SqliteStore.in_state_dir(str(state), Clock()).close()
    assert not instance.has_previews(str(state))
    assert instance.load_or_create(str(state)) != instance.legacy_id(str(state))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "must not be empty"),
        ("Not An Id\n", "only lowercase letters"),
        ("a" * 33, "at most 32 characters"),
    ],
)
def test_a_bad_instance_file_is_refused_naming_the_file(
    tmp_path: Path, content: str, reason: str
) -> None:
    """A damaged file is never replaced silently (the objects it names would be orphaned)."""
    (tmp_path / "instance").write_text(content)
    with pytest.raises(instance.InstanceError) as raised:
        instance.load_or_create(str(tmp_path))
    assert str(tmp_path / "instance") in str(raised.value)
    assert reason in str(raised.value)
    assert (tmp_path / "instance").read_text() == content


def test_config_server_instance_is_checked_at_load() -> None:
    """`prevu check-config` names server.instance and the reason."""
    assert parse_config({"server": {"instance": "a-1"}}).server.instance == "a-1"
    assert parse_config({}).server.instance is None
    with pytest.raises(ConfigError) as raised:
        parse_config({"server": {"instance": "-x"}}, "p.toml")
    assert str(raised.value).startswith("p.toml: server.instance: only lowercase letters")


@given(st.text(max_size=40))
def test_problem_accepts_exactly_label_and_name_safe_ids(value: str) -> None:
    """Accepted ids are 1-32 of [a-z0-9-], not starting with '-'."""
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
    expected = 0 < len(value) <= 32 and set(value) <= allowed and not value.startswith("-")
    assert (instance.problem(value) is None) == expected


def test_the_orchestrator_labels_with_the_instance_of_its_state_dir(tmp_path: Path) -> None:
    """The orchestrator reads (or makes) state_dir/instance, or takes [server] instance."""
    state = str(tmp_path / "state")

    def orchestrator(config: Config) -> Orchestrator:
        settings = OrchestratorSettings.from_config(config)
        runtime = DockerRuntime.from_config(
            FakeDocker(), FakeHealth(), config.docker, settings.instance
        )
        git = FakeGit(root=str(tmp_path / "workspaces"))
        return Orchestrator(settings, Clock(), RouteRegistry(), runtime, git, FakeStore(Clock()))

    made = orchestrator(Config(server=ServerConfig(state_dir=state))).instance
    assert made == Path(state, "instance").read_text().strip()
    assert orchestrator(Config(server=ServerConfig(state_dir=state))).instance == made
    configured = Config(server=ServerConfig(state_dir=state, instance="fixed"))
    assert orchestrator(configured).instance == "fixed"
    assert os.listdir(state) == ["instance"]
