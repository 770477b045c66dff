"""
The Runtime port: what the orchestrator asks of an engine that runs app models.

A runtime builds an `AppModel` (prevu.appmodel) for one preview revision,
starts it, probes it, stops and resumes it, runs commands in it, and removes
everything of a preview. The orchestrator's jobs (prevu.orchestrator.jobs)
speak only this port; `[docker] runtime` chooses the implementation per server
("docker": `prevu.adapters.docker_runtime.DockerRuntime`, one host; "swarm":
`prevu.adapters.swarm_runtime.SwarmRuntime`, Swarm services, docs/scale-out.md).
A revision whose model differs from the serving one is a normal
build-start-switch: the runtime starts the new model next to the old one and
the old is discarded after the route moved.

Contract, for every implementation:

- Threading: every method is called on the reactor thread and never blocks it
  (blocking engine calls run on prevu's own thread pool); the `LogSink` passed
  to `build` is called on the reactor thread.
- Cancellation: cancelling the Deferred that wraps any of these coroutines
  stops waiting soon and fails with CancelledError; `build` then leaves no
  tagged image, `start` may leave containers that `discard`/`remove` clean up.
- Errors: `DockerError` (any engine failure, with the operation and reason),
  `DockerUnavailable` (its subclass) when the engine cannot be reached at all,
  so that callers retry with a backoff policy instead of failing the preview.
  Removals are idempotent: a missing object is not an error.
- Units: seconds for timeouts, bytes for memory, CPUs as a float, ports as
  integers 1-65535; addresses are IP literals reachable from prevu.
- Ownership: a runtime only lists and removes objects of its own prevu
  instance (the `prevu.instance` label), never another prevu's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from attrs import field, frozen

from prevu.appmodel import AppModel
from prevu.lifecycle import Revision
from prevu.ports import ExecResult, LogSink, Managed
from prevu.routing import Upstream


def _mapping(value: Mapping[str, object] | None) -> dict[str, object]:
    return dict(value or {})


@frozen
class Release:
    """
    Which preview and revision a model is built and started for.

    `labels` identify the preview (SPEC §5) and go on every object; `env` is
    the `PREVU_*` values given to builds (as declared args) and containers;
    `host` is the preview's host name (health probes send it).

    From the server's `[[repos]]` entry: `run_env` is its `env` and
    `secrets` already merged (secrets win), given to containers under
    `PREVU_*` and over `.prevu.toml`'s env; `build_secrets` maps a BuildKit
    secret id to a file on the server. Both are empty for a fork that may
    not have them. `cache` names the repository whose shared cache image the
    build reads and refreshes (None: neither, e.g. a fork's build).
    """

    preview: str
    revision: Revision
    host: str
    labels: Mapping[str, str] = field(factory=dict, converter=_mapping)
    env: Mapping[str, str] = field(factory=dict, converter=_mapping)
    run_env: Mapping[str, str] = field(factory=dict, converter=_mapping, repr=False)
    build_secrets: Mapping[str, str] = field(factory=dict, converter=_mapping, repr=False)
    cache: str | None = None


@frozen
class Built:
    """A built model: the image id of every service, by service name."""

    release: Release
    model: AppModel
    images: Mapping[str, str] = field(factory=dict, converter=_mapping)

    @property
    def image(self) -> str:
        """The image of the exposed service."""
        return self.images[self.model.exposed]


@frozen
class Deployed:
    """
    A started model: per service its container and image, and the named
    endpoints (service -> address and port) prevu reaches it at.
    `health` is the exposed service's health path (None: a TCP connect).
    """

    preview: str
    host: str
    exposed: str
    containers: Mapping[str, str] = field(factory=dict, converter=_mapping)
    images: Mapping[str, str] = field(factory=dict, converter=_mapping)
    endpoints: Mapping[str, Upstream] = field(factory=dict, converter=_mapping)
    health: str | None = None

    @property
    def container(self) -> str:
        """The container of the exposed service."""
        return self.containers[self.exposed]

    @property
    def endpoint(self) -> Upstream:
        """Where the exposed service is reached."""
        return self.endpoints[self.exposed]


@frozen
class Health:
    """
    One probe of a deployment: healthy now, else whether its container still
    runs, its engine state ("exited", "restarting", "gone") and, when it
    exited, its last exit code (None when unknown).
    """

    healthy: bool
    running: bool = True
    state: str = "running"
    exit_code: int | None = None


@frozen
class Observed:
    """A container of this instance as the engine reports it now."""

    preview: str
    service: str
    container: str
    state: str
    exit_code: int | None = None
    oom_killed: bool = False
    restart_count: int = 0
    memory: int | None = None
    """The memory limit in bytes (None: unknown or none)."""


class HealthChecker(Protocol):
    """Probes a service once (an HTTP GET of the health path, or a TCP connect)."""

    async def check(self, upstream: Upstream, path: str | None, host: str) -> bool:
        """True when the service at `upstream` is healthy now; never raises."""
        ...


class Runtime(Protocol):
    """An engine that runs app models for previews (see the module docstring)."""

    async def build(self, model: AppModel, release: Release, log: LogSink) -> Built:
        """Build the images of the model's services that have a build; feed output to `log`."""
        ...

    async def start(self, built: Built) -> Deployed:
        """Create and start every service of `built` on the preview's network."""
        ...

    async def health(self, deployed: Deployed) -> Health:
        """Probe the exposed service once; when not healthy, say whether it still runs."""
        ...

    async def stop(self, deployed: Deployed) -> None:
        """Stop the deployment's containers (sleep); stopped or missing ones are fine."""
        ...

    async def resume(self, deployed: Deployed) -> Deployed:
        """Start a stopped deployment again; its addresses may change."""
        ...

    async def discard(
        self, containers: Sequence[str], images: Sequence[str], networks: Sequence[str] = ()
    ) -> None:
        """Remove these containers, then images, then networks (old, failed or orphaned)."""
        ...

    async def remove(self, preview: str, data: bool) -> None:
        """Remove every container, image and network of `preview`; its volumes when `data`."""
        ...

    async def exec(self, deployed: Deployed, service: str, argv: Sequence[str]) -> ExecResult:
        """Run `argv` in the running container of `service`; its exit code and output."""
        ...

    async def logs(self, container: str, tail: int = 200) -> list[str]:
        """The last `tail` lines a container printed (stdout and stderr)."""
        ...

    async def observe(self) -> tuple[Observed, ...]:
        """Every container of this instance: state, exit code, OOM kill, restart count."""
        ...

    async def list_owned(self) -> Managed:
        """Every container, network, image and volume of this instance."""
        ...

    async def prune_caches(self, keep: frozenset[str], now: float, ttl: float) -> list[str]:
        """
        Remove the shared cache images of repositories not in `keep` (lower-cased
        names with a preview) last refreshed more than `ttl` seconds before `now`
        (Unix time); the removed repositories' names.
        """
        ...
