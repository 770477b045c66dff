"""
The `[swarm]` table: where previews run when `[docker] runtime = "swarm"`
(issue 19, docs/scale-out.md).

Pure core: values and their reader. Keys:

- `registry` (required with the swarm runtime): `host[:port]` of the registry
  that every preview image is pushed to and every node pulls from. It holds
  every pull request's code, forks included: authenticated and TLS in
  production (credentials in `[docker] registry_auth_file`).
- `constraints`: Swarm placement constraints put on every preview service
  (e.g. `["node.role == worker", "node.labels.previews == true"]`), Docker's
  syntax (https://docs.docker.com/engine/swarm/services/#placement-constraints).
- `encrypt`: encrypted overlay networks (`--opt encrypted`, IPsec between nodes).
- `nodes`: `[[swarm.nodes]]` tables `{ name, docker_host }`: each node's engine,
  for removing its node-local images and volumes when a preview closes.
"""

from __future__ import annotations

import re

from attrs import frozen

from prevu.config.reader import Table

_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.\-]+ *(==|!=) *[^\s]+$")
"""`<attribute> == <value>` or `!=`: the two operators Swarm accepts."""
_REGISTRY = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[a-z0-9._\-/]+)?$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


@frozen
class SwarmNode:
    """One node of the swarm: its `name` (as `docker node ls` shows it) and engine address."""

    name: str
    docker_host: str


@frozen
class SwarmConfig:
    """The `[swarm]` table (see the module docstring); `registry` None: not configured."""

    registry: str | None = None
    constraints: tuple[str, ...] = ()
    encrypt: bool = False
    nodes: tuple[SwarmNode, ...] = ()


def parse_swarm(t: Table, runtime: str) -> SwarmConfig:
    """
    The `[swarm]` table; `runtime` is `[docker] runtime`: "swarm" requires
    `registry`. Raises ConfigError naming the key and the reason.
    """
    registry = t.optional_string("registry")
    if registry is not None and not _REGISTRY.match(registry):
        raise t.error("registry", f"expected host[:port][/path], got {registry!r}")
    if runtime == "swarm" and not registry:
        raise t.error(
            "registry", 'is required with [docker] runtime = "swarm" (nodes pull from it)'
        )
    constraints = t.strings("constraints")
    for constraint in constraints:
        if not _CONSTRAINT.match(constraint.strip()):
            raise t.error(
                "constraints", f"expected '<attribute> == <value>' or '!=', got {constraint!r}"
            )
    nodes: list[SwarmNode] = []
    for node in t.array_of_tables("nodes"):
        name = node.required("name")
        if not _NODE_NAME.match(name):
            raise node.error("name", f"use letters, digits, '.', '-' and '_', got {name!r}")
        host = node.required("docker_host")
        if not host.startswith(("unix://", "tcp://", "ssh://")):
            raise node.error("docker_host", f"expected unix://, tcp:// or ssh://, got {host!r}")
        node.finish()
        if any(seen.name == name for seen in nodes):
            raise node.error("name", f"{name} is listed twice")
        nodes.append(SwarmNode(name, host))
    config = SwarmConfig(
        registry=registry,
        constraints=tuple(c.strip() for c in constraints),
        encrypt=t.boolean("encrypt", False),
        nodes=tuple(nodes),
    )
    t.finish()
    return config
