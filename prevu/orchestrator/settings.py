"""
The orchestrator's settings: the few config values it reads, as one frozen value.

Pure (attrs and the standard library). `OrchestratorSettings.from_config`
takes them from the server `Config` once, like `ProxySettings`, so that the
orchestrator's modules depend on these values and not on the config's shape.
Durations are seconds, memory bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from attrs import field, frozen

from prevu.backoff import BackoffPolicy, exponential
from prevu.config import Config
from prevu.instance import load_or_create as load_instance
from prevu.naming import PreviewName, network_name
from prevu.repoconfig import Limits

Access = Literal["private", "public"]


def _endpoint_port(description: str | None) -> int | None:
    """The port of a Twisted server endpoint string (`tcp:8000`, `ssl:port=443:...`)."""
    if not description:
        return None
    for part in description.split(":")[1:]:
        if part.startswith("port="):
            part = part.split("=", 1)[1]
        if part.isdigit():
            return int(part)
    return None


def _clone_tokens(config: Config) -> dict[str, str]:
    """The token each forge's clones authenticate with (the one place that chooses it)."""
    tokens = {"github": config.github.token, "gitlab": config.gitlab.token}
    return {forge: token for forge, token in tokens.items() if token}


def _dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


@frozen
class OrchestratorSettings:
    """
    What the orchestrator needs of the config, plus its timing knobs.

    `retry` is the delay policy for calls that fail with DockerUnavailable;
    `drain_delay` lets requests already sent to an old container finish
    before it is removed; `start_timeout` bounds the wait for a healthy
    container, probed every `probe_interval`.
    """

    instance: str
    domain: str = "localhost"
    scheme: str = "http"
    port: int | None = 8000
    label_template: str = "pr-{number}-{repo}"
    network: str = "prevu"
    max_previews: int = 20
    build_concurrency: int = 2
    reconcile_interval: float = 60.0
    limits: Limits = field(factory=Limits)
    fetch_timeout: float = 300.0
    drain_delay: float = 1.0
    start_timeout: float = 60.0
    probe_interval: float = 0.1
    retry: BackoffPolicy = field(default=exponential(0.5, 2.0, 30.0), eq=False)
    clone_tokens: Mapping[str, str] = field(factory=dict, converter=_dict, repr=False)
    repo_access: Mapping[str, Access] = field(factory=dict, converter=_dict)
    """Lower-cased `[[repos]]` name → its access, for `prevu up`."""
    login: bool = False
    """True when a way to log in is configured (a private preview can be opened)."""
    listed: frozenset[str] | None = None
    """Lower-cased `[[repos]]` names; None when there is no list (every repository is served)."""
    unlisted_grace: float = 3600.0
    """Seconds before the reconcile closes a preview of a repository no longer listed."""

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> OrchestratorSettings:
        """The settings of `config`; `overrides` set the timing knobs (tests, benchmarks)."""
        server, docker = config.server, config.docker
        https = config.tls.mode != "off" and bool(server.https)
        values: dict[str, Any] = {
            "instance": overrides.pop("instance", None)
            or load_instance(server.state_dir, server.instance),
            "domain": server.domain,
            "scheme": "https" if https else "http",
            "port": _endpoint_port(server.https if https else server.http),
            "label_template": server.label,
            "network": docker.network,
            "max_previews": docker.max_previews,
            "build_concurrency": docker.build_concurrency,
            "reconcile_interval": docker.reconcile_interval,
            "limits": Limits(memory=docker.memory, cpus=docker.cpus),
            "clone_tokens": _clone_tokens(config),
            "repo_access": {repo.name.lower(): repo.access for repo in config.repos},
            "login": bool(config.auth.users_file or config.auth.github),
            "listed": frozenset(r.name.lower() for r in config.repos) if config.repos else None,
            "unlisted_grace": config.previews.unlisted_grace,
        }
        values.update(overrides)
        return cls(**values)

    def name(self, label: str) -> PreviewName:
        """The id, host and URL of the preview called `label`."""
        return PreviewName.build(label, self.domain, self.scheme, self.port)

    def clone_token(self, forge: str) -> str | None:
        """The token that fetches from `forge`; None for `local` and forges without one."""
        return self.clone_tokens.get(forge)

    def network_of(self, preview: str) -> str:
        """The name of the preview's network (kept in its record), carrying the instance."""
        return network_name(self.network, self.instance, preview)
