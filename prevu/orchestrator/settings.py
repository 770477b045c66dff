"""
The orchestrator's settings: the few config values it reads, as one frozen value.

Pure (attrs and the standard library). `OrchestratorSettings.from_config`
takes them from the server `Config` once, like `ProxySettings`, so that the
orchestrator's modules depend on these values and not on the config's shape.
Durations are seconds, memory bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from attrs import field, frozen

from prevu.backoff import BackoffPolicy, exponential
from prevu.config import Config
from prevu.endpoints import endpoint_port
from prevu.forge.base import Credentials
from prevu.forge.registry import FORGES, clone_credentials
from prevu.instance import load_or_create as load_instance
from prevu.naming import PreviewName, network_name
from prevu.repoconfig import Limits

Access = Literal["private", "public"]


def _clone_credentials(config: Config) -> dict[str, Credentials]:
    """Each forge's clone user name and token, as its `Forge` says (`prevu.forge.registry`)."""
    found = {forge: clone_credentials(config, forge, "") for forge in FORGES}
    return {forge: credentials for forge, credentials in found.items() if credentials}


CloneTokenSource = Callable[[str, str], Awaitable[str | None]]
"""(forge, repo) -> a fresh clone token, or None to use the configured one."""


def _dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


def repo_secret_values(config: Config) -> tuple[str, ...]:
    """The values of every `[[repos]]` `secrets` and `build_secrets` file (for masking)."""
    values: list[str] = []
    for repo in config.repos:
        values += repo.secrets.values()
        values += repo.build_secret_values
    return tuple(values)


DEFAULT_HISTORY = 7 * 86400.0
"""Seconds a closed preview is remembered when `[previews] history` is not set."""


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
    clone_credentials: Mapping[str, Credentials] = field(factory=dict, converter=_dict, repr=False)
    clone_token_source: CloneTokenSource | None = field(default=None, eq=False, repr=False)
    """Per-repository clone tokens that expire (a GitHub App's installation tokens)."""
    repo_access: Mapping[str, Access] = field(factory=dict, converter=_dict)
    """Lower-cased `[[repos]]` name → its access, for `prevu up`."""
    login: bool = False
    """True when a way to log in is configured (a private preview can be opened)."""
    repo_env: Mapping[str, Mapping[str, str]] = field(factory=dict, converter=_dict)
    """Lower-cased `[[repos]]` name → its `env` (run time)."""
    repo_secrets: Mapping[str, Mapping[str, str]] = field(
        factory=dict, converter=_dict, repr=False
    )
    """Lower-cased `[[repos]]` name → its `secrets` values (run time; never for `allow`ed forks)."""
    repo_build_secrets: Mapping[str, Mapping[str, str]] = field(
        factory=dict, converter=_dict, repr=False
    )
    """Lower-cased `[[repos]]` name → BuildKit secret id → file (never for `allow`ed forks)."""
    cache_ttl: float = 7 * 86400.0
    """`previews.ttl`: a repository's build cache image goes after so long without a preview."""
    secret_values: tuple[str, ...] = field(default=(), repr=False)
    """Every `secrets` value and build secret's contents: masked in preview logs."""
    listed: frozenset[str] | None = None
    """Lower-cased `[[repos]]` names; None when there is no list (every repository is served)."""
    unlisted_grace: float = 3600.0
    """Seconds before the reconcile closes a preview of a repository no longer listed."""
    restart_limit: int = 3
    """`[previews] restart_limit`: restarts within `restart_window` before a preview fails."""
    restart_window: float = 600.0
    """`[previews] restart_window`, seconds."""
    repo_noindex: Mapping[str, bool] = field(factory=dict, converter=_dict)
    """Lower-cased `[[repos]]` name → its `noindex` (unlisted repositories: True)."""
    history: float = DEFAULT_HISTORY
    """`[previews] history`: seconds a closed preview's host still says it was removed."""

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
            "port": endpoint_port(server.https if https else server.http),
            "label_template": server.label,
            "network": docker.network,
            "max_previews": docker.max_previews,
            "build_concurrency": docker.build_concurrency,
            "reconcile_interval": docker.reconcile_interval,
            "limits": Limits(memory=docker.memory, cpus=docker.cpus),
            "clone_credentials": _clone_credentials(config),
            "repo_access": {repo.name.lower(): repo.access for repo in config.repos},
            "login": bool(config.auth.users_file or config.auth.github),
            "repo_env": {repo.name.lower(): dict(repo.env) for repo in config.repos},
            "repo_secrets": {repo.name.lower(): dict(repo.secrets) for repo in config.repos},
            "secret_values": repo_secret_values(config),
            "cache_ttl": config.previews.ttl,
            "repo_build_secrets": {
                repo.name.lower(): dict(repo.build_secrets) for repo in config.repos
            },
            "listed": frozenset(r.name.lower() for r in config.repos) if config.repos else None,
            "unlisted_grace": config.previews.unlisted_grace,
            "restart_limit": config.previews.restart_limit,
            "restart_window": config.previews.restart_window,
            "repo_noindex": {repo.name.lower(): repo.noindex for repo in config.repos},
            "history": config.previews.history,
        }
        values.update(overrides)
        return cls(**values)

    def name(self, label: str) -> PreviewName:
        """The id, host and URL of the preview called `label`."""
        return PreviewName.build(label, self.domain, self.scheme, self.port)

    def clone_token(self, forge: str) -> str | None:
        """The token that fetches from `forge`; None for `local` and forges without one."""
        credentials = self.clone_credentials.get(forge)
        return credentials.token if credentials else None

    def clone_username(self, forge: str) -> str:
        """The HTTPS user name that goes with `forge`'s token (GitHub's when none is set)."""
        credentials = self.clone_credentials.get(forge)
        return credentials.username if credentials else "x-access-token"

    def network_of(self, preview: str) -> str:
        """The name of the preview's network (kept in its record), carrying the instance."""
        return network_name(self.network, self.instance, preview)
