"""
Compose previews on Docker Swarm (issue 19, docs/scale-out.md): how one
checked Compose service (`prevu.compose.check.ComposeService`, already
through the same allowlist as on one host) becomes one Swarm service (pure
core: Engine API v1.41 `ServiceSpec` dicts, no I/O).

Each Compose service runs as its own Swarm service (`prevu.swarm.spec.service_spec`:
one replica, dnsrr, limits and reservations, placement) on the preview's
overlay network with one network alias, its Compose service name: services
reach each other by that name and nothing else. `entrypoint` becomes the
container's `Command`, `command` its `Args`, `working_dir`/`user` as such;
named volumes are the preview's volumes, tmpfs mounts stay tmpfs. Bind
mounts (read-only files from the checkout) are refused on Swarm
(`swarm_refusal`): a node other than prevu's has no copy of the checkout.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from prevu.compose.check import ComposeApp, ComposeService
from prevu.swarm.spec import service_spec

MAX_NAME = 63
"""Swarm service names are DNS labels (swarmkit: at most 63 characters)."""
_VALID = re.compile(r"^[a-zA-Z0-9](?:[-_]*[a-zA-Z0-9])*$")
SPEC_LABEL = "prevu.swarm.spec"
"""Label of a kept service: the digest of its spec (the same digest: left running)."""


def swarm_refusal(app: ComposeApp) -> str | None:
    """
    Why `app` cannot run on Swarm although the one-host allowlist accepts it
    (None: it can): a bind mount of checkout files, which exist only where
    prevu runs.
    """
    for service in app.services:
        for mount in service.mounts:
            if mount.kind == "bind":
                return (
                    f"service {service.name!r} bind-mounts {mount.target}: bind-mounted files "
                    "are not available on Swarm (build them into the image)"
                )
    return None


def compose_service_spec(
    service: ComposeService,
    *,
    name: str,
    image: str,
    network: str,
    labels: Mapping[str, str],
    env: Mapping[str, str],
    memory: int,
    cpus: float,
    pids: int,
    volumes: Mapping[str, str],
    volume_labels: Mapping[str, str],
    constraints: Sequence[str],
    restart_limit: int,
    stop_grace: float,
) -> dict[str, Any]:
    """
    The ServiceSpec of Compose service `service` named `name`: `image` the
    reference nodes pull, `network` the overlay's id, `env` the whole
    environment, `memory` bytes and `cpus` CPUs (its share of the preview's
    budget), `volumes` the Compose volume key -> the engine's volume name,
    `stop_grace` seconds unless the service sets its own.
    """
    named = {volumes[m.source]: m.target for m in service.mounts if m.kind == "volume"}
    spec = service_spec(
        name=name,
        image=image,
        network=network,
        labels=labels,
        env=env,
        command=service.command,
        memory=memory,
        cpus=cpus,
        pids=pids,
        volumes=named,
        volume_labels=volume_labels,
        constraints=constraints,
        restart_limit=restart_limit,
        stop_grace=(
            service.stop_grace_period if service.stop_grace_period is not None else stop_grace
        ),
    )
    template = spec["TaskTemplate"]
    container = template["ContainerSpec"]
    readonly = {volumes[m.source] for m in service.mounts if m.kind == "volume" and m.read_only}
    for mount in container["Mounts"]:
        if mount["Source"] in readonly:
            mount["ReadOnly"] = True
    container["Mounts"] += [
        {"Type": "tmpfs", "Target": m.target} for m in service.mounts if m.kind == "tmpfs"
    ]
    if service.entrypoint is not None:
        container["Command"] = list(service.entrypoint)
    if service.working_dir:
        container["Dir"] = service.working_dir
    if service.user:
        container["User"] = service.user
    template["Networks"] = [{"Target": network, "Aliases": [service.name]}]
    return spec


def swarm_name(prefix: str, service: str) -> str:
    """
    The Swarm service name of Compose service `service` under `prefix`
    (`<prefix>-<service>`): when that is not a valid swarm name (over 63
    characters, a dot, a trailing dash) it is cut and ends with 10 hex digits
    of its sha256 instead, so that it stays unique and the same every time.
    """
    name = f"{prefix}-{service}"
    if len(name) <= MAX_NAME and _VALID.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    head = re.sub(r"[^a-zA-Z0-9_-]", "-", name[: MAX_NAME - len(digest) - 1])
    head = re.sub(r"^[^a-zA-Z0-9]+|[^a-zA-Z0-9]+$", "", head)
    return f"{head}-{digest}" if head else digest


def spec_digest(spec: Mapping[str, Any]) -> str:
    """A stable digest of a ServiceSpec (sha256 of its canonical JSON, 16 hex digits)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
