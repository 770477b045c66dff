"""
Start-up of `[docker] runtime = "swarm"` (issue 19, docs/scale-out.md): may
this prevu run it here (`check_host`), and the `SwarmRuntime` of the config
(`swarm_runtime_for`, the composition root's call). Blocking: start-up only.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import docker
import docker.auth
import docker.errors
from twisted.python.threadpool import ThreadPool

from prevu.adapters.compose_runtime import with_compose
from prevu.adapters.docker import in_container_marker
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.adapters.registry import Registry
from prevu.adapters.swarm_runtime import SwarmRuntime
from prevu.config import Config
from prevu.swarm.spec import host_refusal


def check_host(client: Any, self_container: str) -> str | None:
    """
    Why prevu may not run the swarm runtime on this engine (None: it may);
    blocking (start-up only). See `prevu.swarm.spec.host_refusal`: prevu must
    run in a container the engine knows (`[docker] self_container`, or
    /.dockerenv and the host name), on a manager of an active swarm.
    """
    info = client.info()
    swarm = info.get("Swarm") or {}
    own: str | None = None
    named = self_container not in ("auto", "none")
    if self_container != "none" and (named or in_container_marker()):
        candidate = self_container if named else socket.gethostname()
        try:
            attrs = client.api.inspect_container(candidate)
            if attrs.get("HostConfig", {}).get("NetworkMode") != "host":
                own = str(attrs["Id"])
        except docker.errors.NotFound:
            own = None
    return host_refusal(
        named or in_container_marker(),
        own,
        bool(swarm.get("ControlAvailable")),
        str(swarm.get("LocalNodeState", "inactive")),
    )


def swarm_runtime_for(
    config: Config, reactor: Any, pool: ThreadPool, inner: DockerRuntime
) -> SwarmRuntime:
    """
    The runtime of `[docker] runtime = "swarm"` (composition root, start-up:
    blocking). Raises SystemExit with the reason when this engine cannot be
    reached, is not a swarm manager, or prevu does not run in a container
    of it (`check_host`). Registry credentials come from
    `[docker] registry_auth_file` (a Docker config.json) when given.
    """
    kwargs = {"base_url": config.docker.host} if config.docker.host else {}
    try:
        client = docker.DockerClient(**kwargs) if kwargs else docker.from_env()
        refusal = check_host(client, config.docker.self_container)
    except (docker.errors.DockerException, OSError) as error:
        raise SystemExit(f'prevu: cannot start: [docker] runtime = "swarm": {error}') from None
    if refusal is not None:
        raise SystemExit(f'prevu: cannot start: [docker] runtime = "swarm": {refusal}')
    if config.docker.registry_auth_file:
        client.api._auth_configs = docker.auth.load_config(config.docker.registry_auth_file)
    own = None
    if config.docker.self_container not in ("auto", "none"):
        own = config.docker.self_container
    else:
        own = socket.gethostname()
    auths: dict[str, Any] = {}
    if config.docker.registry_auth_file:
        try:
            with open(config.docker.registry_auth_file, encoding="utf-8") as handle:
                auths = dict(json.load(handle).get("auths") or {})
        except (OSError, ValueError) as error:
            raise SystemExit(f"prevu: [docker] registry_auth_file: {error}") from None
    registry = Registry.for_engine(config.swarm.registry or "", client.info(), auths)
    # A fixed API version: no call at construction (a node's engine may be down at
    # start-up); ssh:// goes through the `ssh` program (no paramiko).
    nodes = {}
    for index, node in enumerate(config.swarm.nodes):
        try:
            nodes[node.name] = docker.DockerClient(
                base_url=node.docker_host,
                version="1.41",
                use_ssh_client=node.docker_host.startswith("ssh://"),
            )
        except docker.errors.DockerException as error:  # ssh:// without paramiko
            key = f"swarm.nodes[{index}].docker_host"
            reason = f"{error} (pip install 'prevu[swarm]')"
            raise SystemExit(f"prevu: {config.path}: {key}: {reason}") from None
    return SwarmRuntime(
        inner,
        reactor,
        pool,
        client,
        config.swarm,
        own_container=own,
        nodes=nodes,
        registry=registry,
        compose=with_compose(
            inner,
            reactor,
            os.path.abspath(config.server.state_dir),
            config.docker.compose,
            config.docker.compose_memory,
            docker_host=config.docker.host,
        ),
        compose_memory=config.docker.compose_memory,
    )
