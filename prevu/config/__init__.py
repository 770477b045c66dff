"""
The server configuration: TOML in, frozen and validated attrs values out.

Pure core, one module per table group: `reader` (the shared `Table` reader),
`server` (`[server]`, `[[routes]]`), `tls` (`[tls]`, `[acme]`), `forges`
(`[github]`, `[gitlab]`), `repos` (`[[repos]]`), `auth` (`[auth]`), `docker`
(`[docker]`, `[previews]`). This module holds the whole `Config`, the
cross-table checks, and re-exports every name importers use.

The only I/O is reading the config file itself and the `*_file` secrets it
names, both in `load_config` (the builtin `open`: no I/O module is imported).
Every error is a `ConfigError` that names the file, the dotted key and the
reason, and unknown keys are errors so that a typo never silently falls back
to a default.
"""

from __future__ import annotations

import os.path
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field, frozen

from prevu.config.auth import (
    GITHUB_API_URL,
    GITHUB_AUTHORIZE_URL,
    GITHUB_TOKEN_URL,
    AuthConfig,
    GithubAuthConfig,
    parse_auth,
)
from prevu.config.docker import DockerConfig, PreviewsConfig, parse_docker, parse_previews
from prevu.config.forges import (
    FEEDBACK_KINDS,
    GithubConfig,
    GitlabConfig,
    parse_github,
    parse_gitlab,
)
from prevu.config.reader import EMBEDDED, Table, no_files
from prevu.config.repos import RepoConfig, parse_repo
from prevu.config.server import (
    ServerConfig,
    StaticRouteConfig,
    Timeouts,
    parse_route,
    parse_server,
)
from prevu.config.swarm import SwarmConfig, SwarmNode, parse_swarm
from prevu.config.tls import AcmeConfig, Rfc2136Config, TlsConfig, parse_acme, parse_tls
from prevu.errors import ConfigError
from prevu.routing import Access

__all__ = [
    "EMBEDDED",
    "FEEDBACK_KINDS",
    "GITHUB_API_URL",
    "GITHUB_AUTHORIZE_URL",
    "GITHUB_TOKEN_URL",
    "Access",
    "AcmeConfig",
    "AuthConfig",
    "Config",
    "DockerConfig",
    "GithubAuthConfig",
    "GithubConfig",
    "GitlabConfig",
    "PreviewsConfig",
    "RepoConfig",
    "Rfc2136Config",
    "ServerConfig",
    "StaticRouteConfig",
    "SwarmConfig",
    "SwarmNode",
    "Timeouts",
    "TlsConfig",
    "default_config",
    "load_config",
    "parse_config",
]


@frozen
class Config:
    """The whole server configuration, as read from `path`."""

    path: str = EMBEDDED
    server: ServerConfig = field(factory=ServerConfig)
    tls: TlsConfig = field(factory=TlsConfig)
    acme: AcmeConfig = field(factory=AcmeConfig)
    github: GithubConfig = field(factory=GithubConfig)
    gitlab: GitlabConfig = field(factory=GitlabConfig)
    repos: tuple[RepoConfig, ...] = ()
    auth: AuthConfig = field(factory=AuthConfig)
    docker: DockerConfig = field(factory=DockerConfig)
    previews: PreviewsConfig = field(factory=PreviewsConfig)
    routes: tuple[StaticRouteConfig, ...] = field(default=())
    swarm: SwarmConfig = field(factory=SwarmConfig)

    def repo(self, name: str) -> RepoConfig | None:
        """The `[[repos]]` entry for a forge path; None when not listed."""
        wanted = name.lower()
        for repo in self.repos:
            if repo.name.lower() == wanted:
                return repo
        return None


def default_config() -> Config:
    """The embedded defaults used when no config file is given (SPEC §1)."""
    return Config()


def load_config(path: str) -> Config:
    """Read and validate the TOML file at `path`; raise ConfigError on any problem."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(path, "-", "file not found") from None
    except OSError as error:
        raise ConfigError(path, "-", f"cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "-", f"invalid TOML: {error}") from None
    base = os.path.dirname(os.path.abspath(path))
    return parse_config(data, path, read_file=_file_reader(base))


def _file_reader(base: str) -> Callable[[str], str]:
    def read(name: str) -> str:
        with open(os.path.join(base, os.path.expanduser(name)), encoding="utf-8") as handle:
            return handle.read().strip()

    return read


def parse_config(
    data: Mapping[str, Any],
    path: str = "<string>",
    read_file: Callable[[str], str] = no_files,
) -> Config:
    """Validate already-parsed TOML data into a Config; ConfigError on any problem."""
    root = Table(data, path, "", read_file)
    docker = parse_docker(root.table("docker"))
    config = Config(
        path=path,
        server=parse_server(root.table("server")),
        tls=parse_tls(root.table("tls")),
        acme=parse_acme(root.table("acme")),
        github=parse_github(root.table("github")),
        gitlab=parse_gitlab(root.table("gitlab")),
        repos=tuple(parse_repo(t) for t in root.array_of_tables("repos")),
        auth=parse_auth(root.table("auth")),
        docker=docker,
        previews=parse_previews(root.table("previews")),
        routes=tuple(parse_route(t) for t in root.array_of_tables("routes")),
        swarm=parse_swarm(root.table("swarm"), docker.runtime),
    )
    root.finish()
    _cross_checks(config)
    return config


def _cross_checks(config: Config) -> None:
    if config.tls.mode != "off" and not config.server.https:
        raise ConfigError(
            config.path, "server.https", f'is required when tls.mode = "{config.tls.mode}"'
        )
    seen: set[str] = set()
    for index, route in enumerate(config.routes):
        if route.host in seen:
            raise ConfigError(config.path, f"routes[{index}].host", f"{route.host} is listed twice")
        seen.add(route.host)
    names: set[str] = set()
    for index, repo in enumerate(config.repos):
        if repo.name.lower() in names:
            raise ConfigError(config.path, f"repos[{index}].name", f"{repo.name} is listed twice")
        names.add(repo.name.lower())
