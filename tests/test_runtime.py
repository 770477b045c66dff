"""The app model, the Docker runtime's refusals and `[docker] runtime`.

The Docker runtime on the real engine (exec, observe, volumes removed with their
preview) is exercised by tests/test_previews_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from prevu.adapters.docker import DockerEngine
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.adapters.health import NetworkHealthChecker
from prevu.appmodel import AppModel, Service, single_dockerfile
from prevu.config import parse_config
from prevu.errors import ConfigError, DockerError
from prevu.lifecycle import Revision
from prevu.repoconfig import RepoSettings
from prevu.runtime import Release
from tests.support.docker import TEST_LABELS


@pytest_twisted.ensureDeferred
async def test_more_than_one_service_is_refused_clearly(reactor: Any, thread_pool: Any) -> None:
    """The docker runtime runs one service; a bigger model is a DockerError naming them."""
    engine = DockerEngine(reactor, thread_pool, labels=TEST_LABELS, self_container="none")
    runtime = DockerRuntime(engine, NetworkHealthChecker(reactor), "x")
    model = AppModel(
        (Service("app", image="a"), Service("db", image="b")), exposed="app"
    )
    release = Release("pr-1-rt", Revision("a" * 40), "h")
    with pytest.raises(DockerError, match="one service, not: app, db"):
        await runtime.build(model, release, lambda _: None)


def test_single_dockerfile_model_is_pure_and_normalized(tmp_path: Path) -> None:
    """The checkout + .prevu.toml give one exposed service; equal inputs, equal models."""
    settings = RepoSettings(
        dockerfile="docker/Dockerfile", context="docker", port=9000, env={"B": "2", "A": "1"},
        build_args={"X": "1"}, command=("serve",), health="/h", memory=1 << 20, cpus=0.5,
    )
    model = single_dockerfile("/ws/pr-1", settings)
    front = model.front
    assert front.build is not None and front.build.context == "/ws/pr-1/docker"
    assert front.build.dockerfile == "Dockerfile" and dict(front.build.args) == {"X": "1"}
    assert (front.port, front.command, front.health) == (9000, ("serve",), "/h")
    assert list(front.env) == ["A", "B"]
    assert model == single_dockerfile("/ws/pr-1", settings)
    assert model != single_dockerfile("/ws/pr-1", RepoSettings())


def test_a_model_must_name_its_exposed_service() -> None:
    """Bad models cannot exist: duplicate names, a missing exposed service, image and build."""
    with pytest.raises(ValueError):
        AppModel((Service("app", image="a"), Service("app", image="b")))
    with pytest.raises(ValueError):
        AppModel((Service("web", image="a"),), exposed="app")
    with pytest.raises(ValueError):
        Service("app")


@pytest.mark.parametrize(
    ("value", "reason"),
    [("podman", 'must be "docker" or "swarm"'), ("k8s", 'must be "docker" or "swarm"')],
)
def test_docker_runtime_setting_refuses_what_does_not_exist(value: str, reason: str) -> None:
    """`[docker] runtime`: "docker" (the default) and "swarm" work; others are config errors."""
    assert parse_config({}).docker.runtime == "docker"
    assert parse_config({"docker": {"runtime": "docker"}}).docker.runtime == "docker"
    with pytest.raises(ConfigError) as raised:
        parse_config({"docker": {"runtime": value}}, "/etc/prevu.toml")
    assert raised.value.key == "docker.runtime" and reason in raised.value.reason
