"""
What prevu asks of Docker Swarm and how it reads the answers (pure core:
plain dicts in the Docker Engine API's shapes, no I/O).

Shapes: `service_spec` returns a `ServiceSpec` and `network_spec` a
`NetworkCreateRequest` of the Engine API v1.41
(https://docs.docker.com/engine/api/v1.41/#operation/ServiceCreate,
#operation/NetworkCreate); `task_address`, `service_state` read `Task`
objects (GET /tasks). Every preview service:

- runs one replica on the preview's own attachable overlay network, with
  `EndpointSpec.Mode = "dnsrr"`: no virtual IP and no ingress mesh (they need
  IPVS); prevu routes to the task's own address on that network;
- carries prevu's labels on the service, its containers and its volumes;
- has resource limits (memory bytes, NanoCPUs, pids) and reservations (the
  same memory and CPUs: a node that cannot hold a preview is not chosen);
- is placed by `[swarm] constraints`, and a stateful one (with volumes) is
  pinned to the node that holds its volumes (`node.id == <id>`) once known;
- restarts on failure at most `restart_limit` times (Swarm's own restarts,
  counted like Docker's on one host).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen

RUNNING_STATES = frozenset({"running"})
STARTING_STATES = frozenset(
    {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
)
"""Task states on the way to running (https://docs.docker.com/engine/swarm/how-swarm-mode-works/swarm-task-states/)."""


@frozen
class ServiceState:
    """
    A service as a container state: `state` is "running", "restarting" (a task
    on its way to running), "exited" (no task wanted or none left) ; `address`
    the running task's address on the preview network (""), `node` its node id,
    `container` its container id on that node, `error` the last failed task's error.
    """

    state: str
    address: str = ""
    node: str = ""
    container: str = ""
    error: str = ""
    exit_code: int | None = None
    restarts: int = 0


def network_spec(name: str, labels: Mapping[str, str], encrypt: bool) -> dict[str, Any]:
    """An attachable overlay network (encrypted with IPsec when `encrypt`)."""
    options = {"encrypted": ""} if encrypt else {}
    return {
        "Name": name,
        "Driver": "overlay",
        "Attachable": True,
        "CheckDuplicate": True,
        "Labels": dict(labels),
        "Options": options,
    }


def service_spec(
    *,
    name: str,
    image: str,
    network: str,
    labels: Mapping[str, str],
    env: Mapping[str, str],
    command: Sequence[str] | None,
    memory: int,
    cpus: float,
    pids: int,
    volumes: Mapping[str, str],
    volume_labels: Mapping[str, str],
    constraints: Sequence[str],
    restart_limit: int,
    stop_grace: float,
    replicas: int = 1,
) -> dict[str, Any]:
    """
    The ServiceSpec of one preview service. `memory` is bytes, `cpus` CPUs,
    `volumes` named volume -> container path, `stop_grace` seconds;
    `constraints` Swarm placement constraints, in order.
    """
    nano_cpus = int(cpus * 1e9)
    container: dict[str, Any] = {
        "Image": image,
        "Env": [f"{key}={value}" for key, value in sorted(env.items())],
        "Labels": dict(labels),
        "StopGracePeriod": int(stop_grace * 1e9),
        "Privileges": None,
        "Mounts": [
            {
                "Type": "volume",
                "Source": source,
                "Target": target,
                "VolumeOptions": {"Labels": dict(volume_labels)},
            }
            for source, target in sorted(volumes.items())
        ],
    }
    if command:
        container["Args"] = list(command)
    restart = (
        {"Condition": "on-failure", "MaxAttempts": restart_limit, "Delay": 1_000_000_000}
        if restart_limit > 0
        else {"Condition": "none"}
    )
    return {
        "Name": name,
        "Labels": dict(labels),
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {
                "Limits": {"MemoryBytes": memory, "NanoCPUs": nano_cpus, "Pids": pids},
                "Reservations": {"MemoryBytes": memory, "NanoCPUs": nano_cpus},
            },
            "RestartPolicy": restart,
            "Placement": {"Constraints": list(constraints)},
            "Networks": [{"Target": network}],
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
        "EndpointSpec": {"Mode": "dnsrr"},
    }


def pinned(constraints: Sequence[str], node: str | None) -> tuple[str, ...]:
    """`constraints` plus `node.id == <node>` (a stateful service's volume holder)."""
    if not node:
        return tuple(constraints)
    return (*constraints, f"node.id=={node}")


def task_address(task: Mapping[str, Any], network_id: str) -> str:
    """The task's IP address on the network `network_id` (no prefix length); "" if none."""
    for attachment in task.get("NetworksAttachments") or ():
        network = attachment.get("Network") or {}
        if network.get("ID") != network_id:
            continue
        for address in attachment.get("Addresses") or ():
            return str(address).split("/", 1)[0]
    return ""


def _order(task: Mapping[str, Any]) -> tuple[int, str]:
    version = (task.get("Version") or {}).get("Index", 0)
    return (int(version or 0), str(task.get("UpdatedAt", "")))


def service_state(tasks: Iterable[Mapping[str, Any]], network_id: str) -> ServiceState:
    """
    The state of a one-replica service from its tasks: the running task wanted
    running wins ("running", with its address); else a task wanted running on
    its way ("restarting"); else "exited" with the newest task's error.
    """
    listed = sorted(tasks, key=_order, reverse=True)
    failures = sum(
        1 for t in listed if (t.get("Status") or {}).get("State") in ("failed", "rejected")
    )
    wanted = [t for t in listed if t.get("DesiredState") == "running"]
    for task in wanted:
        status = task.get("Status") or {}
        if status.get("State") in RUNNING_STATES:
            container = (status.get("ContainerStatus") or {}).get("ContainerID", "")
            return ServiceState(
                "running",
                task_address(task, network_id),
                str(task.get("NodeID", "")),
                str(container or ""),
                restarts=failures,
            )
    for task in wanted:
        if (task.get("Status") or {}).get("State") in STARTING_STATES:
            return ServiceState("restarting", node=str(task.get("NodeID", "")), restarts=failures)
    newest = listed[0] if listed else {}
    status = newest.get("Status") or {}
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    return ServiceState(
        "exited",
        node=str(newest.get("NodeID", "")),
        error=str(status.get("Err", "") or ""),
        exit_code=int(code) if isinstance(code, int) else None,
        restarts=failures,
    )


def host_refusal(
    in_container: bool, own_container: str | None, control_available: bool, swarm_state: str
) -> str | None:
    """
    Why this prevu may not run the swarm runtime (None: it may). It must run
    in a container (`in_container`: /.dockerenv or `[docker] self_container`
    named) that the engine knows (`own_container`, to join each preview's
    overlay network: task addresses are reachable only there), on a manager
    (`docker info` Swarm.ControlAvailable) of an active swarm
    (Swarm.LocalNodeState "active").
    """
    if swarm_state != "active":
        return f"this Docker engine is not part of a swarm (Swarm.LocalNodeState {swarm_state!r})"
    if not control_available:
        return "this Docker engine is not a swarm manager (Swarm.ControlAvailable false)"
    if not in_container or own_container is None:
        return (
            "prevu runs on the host: with the swarm runtime it must run in its own container "
            "on a manager, to join each preview's overlay network (task addresses are "
            "reachable only there; the ingress mesh is not used)"
        )
    return None
