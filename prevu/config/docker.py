"""
The `[docker]` and `[previews]` tables: the runtime, limits, and how long
previews live.

Pure core: values and their readers.
"""

from __future__ import annotations

from typing import Literal

from attrs import frozen

from prevu.config.reader import Table

Runtime = Literal["docker", "swarm"]
"""The runtimes prevu can run previews on: one host, or Docker Swarm (issue 19)."""


@frozen
class DockerConfig:
    """The `[docker]` table."""

    network: str = "prevu"
    memory: int = 512 << 20
    cpus: float = 1.0
    pids: int = 512
    max_previews: int = 20
    build_timeout: float = 15 * 60.0
    build_concurrency: int = 2
    reconcile_interval: float = 60.0
    host: str | None = None
    self_container: str = "auto"
    runtime: Runtime = "docker"
    """Which engine runs previews (SPEC §6): "docker" (this host) or "swarm" (docs/scale-out.md)."""
    cli: str = "auto"
    """The Docker client that builds with BuildKit: "auto" (found at start-up) or its path."""
    registry_auth_file: str | None = None
    """A Docker `config.json` whose registry credentials builds may use (default: none)."""
    build_cache_max: int | None = None
    """Bytes: `docker builder prune --keep-storage` after builds (engine-wide); None: never."""
    compose: str = "auto"
    """The Compose v2 CLI (SPEC §6, docs/compose.md): "auto" (probed on first use) or a path."""
    compose_memory: int | None = None
    """Bytes: the memory budget of a Compose preview, shared by its services (None: `memory`)."""


@frozen
class PreviewsConfig:
    """The `[previews]` table."""

    ttl: float = 7 * 86400.0
    sleep_after: float = 30 * 60.0
    unlisted_grace: float = 3600.0
    """Seconds a preview of a repository taken out of `[[repos]]` keeps running."""
    history: float = 7 * 86400.0
    """Seconds a destroyed preview stays in the dashboard's list before it goes to the history."""
    restart_limit: int = 3
    """Self-healing (issue 15): restarts of a preview's container within `restart_window`
    (Docker's own and prevu's) before the preview is marked failed; 0: never restart."""
    restart_window: float = 600.0
    """Seconds over which `restart_limit` counts restarts."""


def parse_docker(t: Table) -> DockerConfig:
    """The `[docker]` table (`runtime = "swarm"` also needs `[swarm] registry`)."""
    d = DockerConfig()
    runtime = t.string("runtime", d.runtime)
    if runtime not in ("docker", "swarm"):
        raise t.error("runtime", f'must be "docker" or "swarm", got {runtime!r}')
    network = t.string("network", d.network)
    if not network.replace("-", "").replace("_", "").isalnum():
        raise t.error("network", f"use letters, digits, '-' and '_' only, got {network!r}")
    config = DockerConfig(
        network=network,
        memory=t.size("memory", d.memory),
        cpus=t.number("cpus", d.cpus),
        pids=t.integer("pids", d.pids, minimum=1),
        max_previews=t.integer("max_previews", d.max_previews, minimum=1),
        build_timeout=t.duration("build_timeout", d.build_timeout),
        build_concurrency=t.integer("build_concurrency", d.build_concurrency, minimum=1),
        reconcile_interval=t.duration("reconcile_interval", d.reconcile_interval),
        host=t.optional_string("host"),
        self_container=t.string("self_container", d.self_container),
        runtime="swarm" if runtime == "swarm" else "docker",
        cli=t.string("cli", d.cli),
        registry_auth_file=t.optional_string("registry_auth_file"),
        build_cache_max=t.size("build_cache_max", 0) if t.has("build_cache_max") else None,
        compose=t.string("compose", d.compose),
        compose_memory=t.size("compose_memory", 0) if t.has("compose_memory") else None,
    )
    if config.compose != "auto" and not config.compose.startswith("/"):
        raise t.error("compose", f'"auto" or the path of Compose v2, got {config.compose!r}')
    if config.compose_memory is not None and config.compose_memory < 6 << 20:
        raise t.error("compose_memory", "must be at least 6m (Docker's minimum)")
    if config.cli != "auto" and not config.cli.startswith("/"):
        raise t.error("cli", f'"auto" or the absolute path of a docker client, got {config.cli!r}')
    if config.build_cache_max is not None and config.build_cache_max < 1 << 20:
        raise t.error("build_cache_max", "must be at least 1m (it bounds the engine's build cache)")
    if config.memory < 6 << 20:
        raise t.error("memory", "must be at least 6m (Docker's minimum)")
    if config.reconcile_interval <= 0:
        raise t.error("reconcile_interval", "must be more than 0")
    t.finish()
    return config


def parse_previews(t: Table) -> PreviewsConfig:
    """The `[previews]` table."""
    d = PreviewsConfig()
    config = PreviewsConfig(
        ttl=t.duration("ttl", d.ttl),
        sleep_after=t.duration("sleep_after", d.sleep_after),
        unlisted_grace=t.duration("unlisted_grace", d.unlisted_grace),
        history=t.duration("history", d.history),
        restart_limit=t.integer("restart_limit", d.restart_limit, minimum=0),
        restart_window=t.duration("restart_window", d.restart_window),
    )
    if config.restart_window <= 0:
        raise t.error("restart_window", "must be more than 0")
    t.finish()
    return config
