"""
The compose model prevu runs, written from a checked `ComposeApp`.

Pure core. prevu never runs the repository's file: it writes its own JSON
model (Compose reads JSON as YAML) from the allowlisted values only:

- a project per part of the preview (`Placement.project`): the revision's
  built services in one project per revision, the stateful ones in a project
  that lives as long as the preview; both join the preview's one bridge
  network (created by prevu, `external` here), where each service is reached
  by its name and by nothing else;
- prevu's labels on every container and volume (overriding the file's), no
  `container_name`, `no-new-privileges`, a pids limit, memory and CPU
  limits on every service (`split_limits`), prevu's restart policy;
- built services run the image prevu built (BuildKit), never `build:`;
- named volumes are prevu's (`external`, created before with its labels), so
  that a push or a `down` of a revision never removes data;
- every service gets the `PREVU_*` values, `PREVU_URL` and
  `PREVU_URL_<SERVICE>` for each exposed service.

The result is a plain dict ready for `json.dumps`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import field, frozen

from prevu.compose.check import ComposeApp, ComposeService, env_suffix


def _dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


@frozen
class Placement:
    """
    Where and how a set of services runs.

    `project`: the Compose project name; `network`: the preview's network
    (exists, prevu's); `labels`: prevu's labels for every object, plus
    `service_labels` per service (e.g. the exposed service's deployment
    labels); `images`: service -> image prevu built; `volumes`: the file's
    volume key -> the engine's volume name (exists, prevu's); `binds`:
    resolved source in the checkout -> the copy that is mounted; `env`:
    given to every service over its own environment (`PREVU_*` last);
    `memory`/`cpus`: per service (bytes, CPUs); `pids`: per container;
    `restart`: the restart policy of every container.
    """

    project: str
    network: str
    labels: Mapping[str, str] = field(factory=dict, converter=_dict)
    service_labels: Mapping[str, Mapping[str, str]] = field(factory=dict, converter=_dict)
    images: Mapping[str, str] = field(factory=dict, converter=_dict)
    volumes: Mapping[str, str] = field(factory=dict, converter=_dict)
    binds: Mapping[str, str] = field(factory=dict, converter=_dict)
    env: Mapping[str, str] = field(factory=dict, converter=_dict)
    prevu_env: Mapping[str, str] = field(factory=dict, converter=_dict)
    memory: Mapping[str, int] = field(factory=dict, converter=_dict)
    cpus: Mapping[str, float] = field(factory=dict, converter=_dict)
    pids: int = 512
    restart: str = "no"


class DoesNotFit(ValueError):
    """The services' memory limits do not fit the budget (the message has the numbers)."""


def split_limits(
    services: Sequence[ComposeService], memory: int, cpus: float, floor: int = 6 << 20
) -> tuple[dict[str, int], dict[str, float]]:
    """
    Per-service memory (bytes) and CPUs within the budgets `memory` and
    `cpus`: a service's own `deploy.resources.limits` when given (their sum
    must fit), the remainder divided equally among the rest, each at least
    `floor` bytes (Docker's minimum) and 0.01 CPU. Raises DoesNotFit with
    the numbers.
    """
    asked = sum(s.memory for s in services if s.memory is not None)
    rest = [s for s in services if s.memory is None]
    if asked > memory:
        raise DoesNotFit(
            f"services ask for {asked >> 20}m of memory, the preview's budget is {memory >> 20}m"
        )
    share = (memory - asked) // len(rest) if rest else 0
    if rest and share < floor:
        raise DoesNotFit(
            f"{len(rest)} services without a memory limit share {(memory - asked) >> 20}m: "
            f"less than {floor >> 20}m each (the budget is {memory >> 20}m)"
        )
    memories = {s.name: s.memory if s.memory is not None else share for s in services}
    asked_cpus = sum(s.cpus for s in services if s.cpus is not None)
    if asked_cpus > cpus:
        raise DoesNotFit(f"services ask for {asked_cpus:g} CPUs, the preview's budget is {cpus:g}")
    idle = [s for s in services if s.cpus is None]
    cpu_share = max(round((cpus - asked_cpus) / len(idle), 3), 0.01) if idle else 0.0
    cpu_map = {s.name: s.cpus if s.cpus is not None else cpu_share for s in services}
    return memories, cpu_map


def service_host(service: str, host: str) -> str:
    """
    The host of a `[compose] expose` service: `<service>--<preview label>.<domain>`
    (one DNS label per preview host: one wildcard certificate covers them all).
    """
    label, _, domain = host.partition(".")
    safe = "".join(c if c.isalnum() else "-" for c in service.lower())
    return f"{safe}--{label}.{domain}" if domain else f"{safe}--{label}"


def urls(exposed: Mapping[str, str]) -> dict[str, str]:
    """`PREVU_URL_<SERVICE>` for each exposed service (service -> its URL)."""
    return {f"PREVU_URL_{env_suffix(name)}": url for name, url in sorted(exposed.items())}


def write_project(app: ComposeApp, names: Sequence[str], placement: Placement) -> dict[str, Any]:
    """
    The model of project `placement.project` running the services `names`
    of `app` (depends_on to services outside `names` are dropped: those run
    in another project, started first).
    """
    chosen = set(names)
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for service in app.services:
        if service.name not in chosen:
            continue
        services[service.name] = _service(service, chosen, placement)
        for mount in service.mounts:
            if mount.kind == "volume":
                volumes[mount.source] = {"name": placement.volumes[mount.source], "external": True}
    model: dict[str, Any] = {
        "name": placement.project,
        "services": services,
        "networks": {"preview": {"name": placement.network, "external": True}},
    }
    if volumes:
        model["volumes"] = volumes
    return model


def _service(service: ComposeService, chosen: set[str], placement: Placement) -> dict[str, Any]:
    image = placement.images.get(service.name) or service.image
    labels = {
        **service.labels,
        **placement.labels,
        **placement.service_labels.get(service.name, {}),
    }
    env = {**service.environment, **placement.env, **placement.prevu_env}
    body: dict[str, Any] = {
        "image": image,
        # prevu's images are never pulled; a file's image is pulled when missing
        # (public registries only: Compose runs with prevu's empty DOCKER_CONFIG).
        "pull_policy": "never" if service.build is not None else "missing",
        "environment": env,
        "labels": labels,
        "networks": {"preview": {"aliases": [service.name]}},
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": placement.pids,
        "mem_limit": placement.memory[service.name],
        "memswap_limit": placement.memory[service.name],
        "cpus": placement.cpus[service.name],
        "restart": placement.restart,
    }
    if service.command is not None:
        body["command"] = list(service.command)
    if service.entrypoint is not None:
        body["entrypoint"] = list(service.entrypoint)
    if service.healthcheck is not None:
        body["healthcheck"] = dict(service.healthcheck)
    depends = {
        other: {"condition": condition}
        for other, condition in service.depends_on.items()
        if other in chosen
    }
    if depends:
        body["depends_on"] = depends
    if service.working_dir is not None:
        body["working_dir"] = service.working_dir
    if service.user is not None:
        body["user"] = service.user
    if service.expose:
        body["expose"] = list(service.expose)
    if service.stop_grace_period is not None:
        body["stop_grace_period"] = f"{service.stop_grace_period:g}s"
    mounts: list[dict[str, Any]] = []
    for mount in service.mounts:
        if mount.kind == "tmpfs":
            mounts.append({"type": "tmpfs", "target": mount.target})
        elif mount.kind == "volume":
            mounts.append(
                {
                    "type": "volume",
                    "source": mount.source,
                    "target": mount.target,
                    "read_only": mount.read_only,
                }
            )
        else:
            mounts.append(
                {
                    "type": "bind",
                    "source": placement.binds[mount.source],
                    "target": mount.target,
                    "read_only": True,
                }
            )
    if mounts:
        body["volumes"] = mounts
    return body
