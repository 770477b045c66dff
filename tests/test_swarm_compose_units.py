"""Compose services as Swarm services (prevu.swarm.compose, swarm_compose.untagged)."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from prevu.adapters.swarm_compose import untagged
from prevu.compose.check import ComposeApp, ComposeBuild, ComposeService, Mount
from prevu.swarm.compose import (
    MAX_NAME,
    compose_service_spec,
    spec_digest,
    swarm_name,
    swarm_refusal,
)

DB = ComposeService(
    name="db",
    image="postgres:16",
    entrypoint=("/entry",),
    command=("serve", "--fast"),
    working_dir="/srv",
    user="999",
    mounts=(
        Mount("volume", "/data", "data"),
        Mount("volume", "/seed", "seed", read_only=True),
        Mount("tmpfs", "/run"),
    ),
    stop_grace_period=3.0,
)


def spec_of(service: ComposeService = DB, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "name": "prevu-x-pr-1-keep-db",
        "image": "reg:5000/prevu-x/pr-1@sha256:" + "a" * 64,
        "network": "net-id",
        "labels": {"prevu.preview": "pr-1", "prevu.part": "keep"},
        "env": {"B": "2", "A": "1"},
        "memory": 32 << 20,
        "cpus": 0.25,
        "pids": 64,
        "volumes": {"data": "prevu-x-pr-1-data", "seed": "prevu-x-pr-1-seed"},
        "volume_labels": {"prevu.preview": "pr-1"},
        "constraints": ["node.role == worker"],
        "restart_limit": 3,
        "stop_grace": 10.0,
    }
    arguments.update(overrides)
    return compose_service_spec(service, **arguments)


def test_a_compose_service_becomes_a_dnsrr_swarm_service_with_its_name_as_alias() -> None:
    spec = spec_of()
    template = spec["TaskTemplate"]
    container = template["ContainerSpec"]
    assert spec["Name"] == "prevu-x-pr-1-keep-db"
    assert spec["EndpointSpec"] == {"Mode": "dnsrr"}
    assert template["Networks"] == [{"Target": "net-id", "Aliases": ["db"]}]
    assert container["Command"] == ["/entry"] and container["Args"] == ["serve", "--fast"]
    assert container["Dir"] == "/srv" and container["User"] == "999"
    assert container["Env"] == ["A=1", "B=2"]
    assert container["StopGracePeriod"] == 3_000_000_000, "the service's own grace period"
    assert container["Mounts"] == [
        {
            "Type": "volume",
            "Source": "prevu-x-pr-1-data",
            "Target": "/data",
            "VolumeOptions": {"Labels": {"prevu.preview": "pr-1"}},
        },
        {
            "Type": "volume",
            "Source": "prevu-x-pr-1-seed",
            "Target": "/seed",
            "VolumeOptions": {"Labels": {"prevu.preview": "pr-1"}},
            "ReadOnly": True,
        },
        {"Type": "tmpfs", "Target": "/run"},
    ]
    assert template["Resources"]["Limits"] == {
        "MemoryBytes": 32 << 20,
        "NanoCPUs": 250_000_000,
        "Pids": 64,
    }
    assert template["Resources"]["Reservations"] == {
        "MemoryBytes": 32 << 20,
        "NanoCPUs": 250_000_000,
    }
    assert template["Placement"]["Constraints"] == ["node.role == worker"]
    assert spec["Labels"]["prevu.part"] == "keep"


def test_a_plain_service_keeps_its_image_command_and_the_default_grace() -> None:
    web = ComposeService(name="web", build=ComposeBuild(context="/c"))
    spec = spec_of(web, volumes={})
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert "Command" not in container and "Args" not in container and "Dir" not in container
    assert container["Mounts"] == []
    assert container["StopGracePeriod"] == 10_000_000_000


def test_spec_digest_changes_with_the_spec_only() -> None:
    assert spec_digest(spec_of()) == spec_digest(spec_of())
    assert spec_digest(spec_of()) != spec_digest(spec_of(env={"A": "1"}))
    assert spec_digest(spec_of()) != spec_digest(spec_of(image="other@sha256:" + "b" * 64))
    assert len(spec_digest(spec_of())) == 16


def test_a_bind_mount_is_refused_on_swarm_with_the_service_and_target() -> None:
    bind = ComposeService(
        name="web", image="x", mounts=(Mount("bind", "/etc/app.conf", "/c/app.conf", True),)
    )
    assert swarm_refusal(ComposeApp((DB,))) is None
    reason = swarm_refusal(ComposeApp((DB, bind)))
    assert reason is not None
    assert "'web'" in reason and "/etc/app.conf" in reason and "not available on Swarm" in reason


ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
REFERENCE = st.builds(
    lambda host, port, path: f"{host}{port}/{path}",
    st.text("abcdefghij.", min_size=1, max_size=12),
    st.sampled_from(["", ":5000", ":443"]),
    st.text("abcdefghij-", min_size=1, max_size=10),
)
TAG = st.builds(
    lambda a, rest: a + rest, st.sampled_from(ALNUM), st.text(ALNUM + ".-", max_size=20)
)


@settings(deadline=None)
@given(REFERENCE, TAG, TAG, st.text("0123456789abcdef", min_size=64, max_size=64))
def test_untagged_is_the_same_for_every_tag(name: str, one: str, two: str, digest: str) -> None:
    first = untagged(f"{name}:{one}@sha256:{digest}")
    assert first == f"{name}@sha256:{digest}"
    assert untagged(f"{name}:{two}@sha256:{digest}") == first
    assert untagged(f"{name}:{one}") == f"{name}:{one}", "no digest: unchanged"


def test_swarm_name_is_the_plain_name_when_valid() -> None:
    assert swarm_name("prevu-x-pr-1-shop-keep", "db") == "prevu-x-pr-1-shop-keep-db"


PREFIX = st.builds(
    lambda a, m, z: a + m + z,
    st.sampled_from(ALNUM),
    st.text(ALNUM + "-", max_size=90),
    st.sampled_from(ALNUM),
)
SERVICE = st.builds(
    lambda a, rest: a + rest, st.sampled_from(ALNUM), st.text(ALNUM + "_.-", max_size=62)
)


@settings(deadline=None)
@given(PREFIX, SERVICE, SERVICE)
def test_swarm_name_is_always_a_valid_stable_distinct_swarm_name(
    prefix: str, one: str, two: str
) -> None:
    name = swarm_name(prefix, one)
    assert len(name) <= MAX_NAME
    assert re.fullmatch(r"[a-zA-Z0-9](?:[-_]*[a-zA-Z0-9])*", name), name
    assert swarm_name(prefix, one) == name
    if one != two:
        assert swarm_name(prefix, two) != name


def test_swarm_name_of_a_long_name_with_a_dot_is_quick_and_valid() -> None:
    """A 62-character run then a dot (a compose file is untrusted input): the
    validity check backtracks linearly (a nested quantifier used to hang here)."""
    name = swarm_name("p", "a" * 60 + ".")
    assert len(name) <= MAX_NAME and "." not in name
    assert re.fullmatch(r"[a-zA-Z0-9](?:[-_]*[a-zA-Z0-9])*", name), name
