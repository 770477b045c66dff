"""The pure parts of the swarm runtime (issue 19): `[swarm]` config, service specs, task states."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prevu.config import ConfigError, parse_config
from prevu.config.swarm import SwarmConfig, SwarmNode
from prevu.swarm.spec import (
    host_refusal,
    network_spec,
    pinned,
    service_spec,
    service_state,
    task_address,
)

NET = "netid1"


def task(
    state: str, desired: str = "running", index: int = 1, address: str = "10.0.1.5/24", **more: Any
) -> dict[str, Any]:
    return {
        "ID": f"t{index}",
        "Version": {"Index": index},
        "DesiredState": desired,
        "NodeID": more.get("node", "node1"),
        "Status": {
            "State": state,
            "Err": more.get("err", ""),
            "ContainerStatus": {"ContainerID": f"c{index}", "ExitCode": more.get("code", 0)},
        },
        "NetworksAttachments": [
            {"Network": {"ID": "ingress"}, "Addresses": ["10.255.0.9/16"]},
            {"Network": {"ID": NET}, "Addresses": [address]},
        ],
    }


def test_swarm_config_is_read_with_every_key() -> None:
    config = parse_config(
        {
            "docker": {"runtime": "swarm"},
            "swarm": {
                "registry": "registry.example.com:5000",
                "constraints": ["node.role == worker", "node.labels.previews==true"],
                "encrypt": True,
                "nodes": [{"name": "w1", "docker_host": "ssh://root@w1"}],
            },
        }
    )
    assert config.docker.runtime == "swarm"
    assert config.swarm == SwarmConfig(
        "registry.example.com:5000",
        ("node.role == worker", "node.labels.previews==true"),
        True,
        (SwarmNode("w1", "ssh://root@w1"),),
    )
    assert parse_config({}).swarm == SwarmConfig()


@pytest.mark.parametrize(
    ("swarm", "key", "reason"),
    [
        ({"registry": "http://r"}, "swarm.registry", "host[:port]"),
        ({"registry": "r", "constraints": ["node.role worker"]}, "swarm.constraints", "=="),
        ({"registry": "r", "constraints": "x"}, "swarm.constraints", "list of strings"),
        ({"registry": "r", "nodes": [{"name": "a"}]}, "swarm.nodes[0].docker_host", "required"),
        (
            {"registry": "r", "nodes": [{"name": "a", "docker_host": "http://a"}]},
            "swarm.nodes[0].docker_host",
            "unix://",
        ),
        (
            {"registry": "r", "nodes": [{"name": "a", "docker_host": "unix:///s", "x": 1}]},
            "swarm.nodes[0].x",
            "unknown",
        ),
        ({"registry": "r", "encrypt": "yes"}, "swarm.encrypt", "true or false"),
        ({"registry": "r", "regsitry": "r"}, "swarm.regsitry", "registry"),
    ],
)
def test_bad_swarm_config_names_the_key(swarm: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"docker": {"runtime": "swarm"}, "swarm": swarm}, "prevu.toml")
    assert raised.value.key == key and reason in raised.value.reason, raised.value


def test_service_spec_has_dnsrr_labels_limits_reservations_and_constraints() -> None:
    spec = service_spec(
        name="prevu-i-pr-1-a-abc-1",
        image="r:5000/prevu-i/pr-1-a:abc-1@sha256:00",
        network=NET,
        labels={"prevu.preview": "pr-1-a", "prevu.managed": "true"},
        env={"B": "2", "A": "1"},
        command=("serve", "--port", "8080"),
        memory=64 << 20,
        cpus=0.5,
        pids=100,
        volumes={"vol-data": "/data"},
        volume_labels={"prevu.preview": "pr-1-a"},
        constraints=("node.role == worker",),
        restart_limit=3,
        stop_grace=10.0,
    )
    template = spec["TaskTemplate"]
    assert spec["EndpointSpec"] == {"Mode": "dnsrr"}
    assert spec["Labels"] == template["ContainerSpec"]["Labels"]
    assert template["ContainerSpec"]["Env"] == ["A=1", "B=2"]
    assert template["ContainerSpec"]["Args"] == ["serve", "--port", "8080"]
    assert template["ContainerSpec"]["Mounts"][0]["VolumeOptions"]["Labels"] == {
        "prevu.preview": "pr-1-a"
    }
    assert template["Resources"]["Limits"] == {
        "MemoryBytes": 64 << 20,
        "NanoCPUs": 500_000_000,
        "Pids": 100,
    }
    assert template["Resources"]["Reservations"] == {
        "MemoryBytes": 64 << 20,
        "NanoCPUs": 500_000_000,
    }
    assert template["Placement"]["Constraints"] == ["node.role == worker"]
    assert template["Networks"] == [{"Target": NET}]
    assert template["RestartPolicy"]["MaxAttempts"] == 3
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}


def test_network_spec_is_an_attachable_overlay_encrypted_on_request() -> None:
    plain = network_spec("n", {"prevu.preview": "p"}, encrypt=False)
    assert (plain["Driver"], plain["Attachable"], plain["Options"]) == ("overlay", True, {})
    assert network_spec("n", {}, encrypt=True)["Options"] == {"encrypted": ""}


def test_a_stateful_service_is_pinned_to_its_volumes_node() -> None:
    assert pinned(("node.role == worker",), "abc") == ("node.role == worker", "node.id==abc")
    assert pinned(("node.role == worker",), None) == ("node.role == worker",)


def test_task_address_is_read_from_the_preview_network_attachment() -> None:
    assert task_address(task("running"), NET) == "10.0.1.5"
    assert task_address(task("running"), "other") == ""
    assert task_address({}, NET) == ""


def test_service_state_from_tasks() -> None:
    assert service_state([task("running")], NET).address == "10.0.1.5"
    replaced = [task("failed", "shutdown", 1, err="boom"), task("starting", index=2)]
    assert service_state(replaced, NET).state == "restarting"
    assert service_state(replaced, NET).restarts == 1
    gone = [task("failed", "shutdown", 3, err="exit 2", code=2), task("shutdown", "shutdown", 1)]
    state = service_state(gone, NET)
    assert (state.state, state.error, state.exit_code) == ("exited", "exit 2", 2)
    assert service_state([], NET).state == "exited"


@given(
    st.permutations(
        [
            task("shutdown", "shutdown", 1),
            task("running", index=2, address="10.0.1.9/24"),
            task("failed", "shutdown", 3),
        ]
    )
)
def test_service_state_does_not_depend_on_the_order_of_tasks(tasks: list[dict[str, Any]]) -> None:
    state = service_state(tasks, NET)
    assert (state.state, state.address, state.container) == ("running", "10.0.1.9", "c2")


def test_host_refusal_says_why() -> None:
    assert host_refusal(True, "abc", True, "active") is None
    assert "not part of a swarm" in (host_refusal(True, "abc", True, "inactive") or "")
    assert "not a swarm manager" in (host_refusal(True, "abc", False, "active") or "")
    assert "prevu runs on the host" in (host_refusal(False, None, True, "active") or "")
    assert "prevu runs on the host" in (host_refusal(True, None, True, "active") or "")


def test_the_registry_is_http_only_when_the_engine_calls_it_insecure() -> None:
    from prevu.adapters.registry import Registry

    info = {"RegistryConfig": {"IndexConfigs": {"10.0.0.1:5000": {"Secure": False}}}}
    assert Registry.for_engine("10.0.0.1:5000", info, {}) == Registry("10.0.0.1:5000", False)
    assert Registry.for_engine("reg.example:443/team", info, {}).secure is True
    auths = {"reg.example:443": {"username": "u", "password": "p"}}
    assert Registry.for_engine("reg.example:443", {}, auths).auth == "dTpw"
    assert (
        Registry.for_engine("reg.example:443", {}, {"reg.example:443": {"auth": "x"}}).auth == "x"
    )
