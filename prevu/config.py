"""
The server configuration: TOML in, frozen and validated attrs values out.

Pure core: the only I/O is reading the config file itself and the `*_file`
secrets it names, both in `load_config`. Every error is a `ConfigError` that
names the file, the dotted key and the reason, and unknown keys are errors so
that a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from attrs import field, frozen

from prevu.errors import ConfigError
from prevu.instance import problem as instance_problem
from prevu.units import parse_duration, parse_size

Access = Literal["private", "public"]
EMBEDDED = "<embedded defaults>"

T = TypeVar("T")

GITHUB_AUTHORIZE_URL = "https://github.com/login/oauth/authorize"
GITHUB_TOKEN_URL = "https://github.com/login/oauth/access_token"
GITHUB_API_URL = "https://api.github.com"


@frozen
class Timeouts:
    """Proxy timeouts, in seconds."""

    connect: float = 5.0
    response: float = 60.0
    idle: float = 120.0


@frozen
class ServerConfig:
    """The `[server]` table."""

    domain: str = "localhost"
    label: str = "pr-{number}-{repo}"
    http: str = "tcp:8000:interface=127.0.0.1"
    https: str | None = None
    control: str = "tcp:8001:interface=127.0.0.1"
    public_url: str = "http://prevu.localhost:8000"
    state_dir: str = ".prevu"
    api_token: str | None = None
    instance: str | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body: int = 1 << 30
    timeouts: Timeouts = Timeouts()

    @property
    def public_host(self) -> str:
        """The host name of `public_url`, where the proxy serves the control app."""
        return (urlsplit(self.public_url).hostname or "").lower()


@frozen
class TlsConfig:
    """The `[tls]` table."""

    mode: Literal["off", "files", "acme"] = "off"
    cert: str | None = None
    key: str | None = None


@frozen
class Rfc2136Config:
    """`[acme] rfc2136 = {...}`: DNS dynamic updates for DNS-01."""

    server: str
    key_name: str
    key_secret: str
    key_algorithm: str = "hmac-sha256"


@frozen
class AcmeConfig:
    """The `[acme]` table."""

    directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    email: str | None = None
    ca_bundle: str | None = None
    challenge: Literal["http-01", "tls-alpn-01", "dns-01"] = "http-01"
    renew_before: float = 30 * 86400.0
    dns_hook: str | None = None
    rfc2136: Rfc2136Config | None = None
    orders_per_hour: int = 20


@frozen
class GithubConfig:
    """The `[github]` table."""

    webhook_secret: str | None = None
    token: str | None = None
    api_url: str = "https://api.github.com"


@frozen
class GitlabConfig:
    """The `[gitlab]` table."""

    webhook_token: str | None = None
    token: str | None = None
    url: str = "https://gitlab.com"


@frozen
class RepoConfig:
    """One `[[repos]]` entry: which repository is served, and how."""

    name: str
    access: Access = "private"
    trigger: Literal["auto", "label"] = "auto"
    forks: Literal["approve", "deny", "allow"] = "approve"


@frozen
class GithubAuthConfig:
    """The `[auth.github]` table: GitHub OAuth login."""

    client_id: str
    client_secret: str
    allowed_orgs: tuple[str, ...] = ()
    allowed_teams: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    repo_readers: bool = False
    authorize_url: str = GITHUB_AUTHORIZE_URL
    token_url: str = GITHUB_TOKEN_URL
    api_url: str = GITHUB_API_URL


@frozen
class AuthConfig:
    """The `[auth]` table."""

    cookie_secret: str | None = None
    cookie_secret_previous: tuple[str, ...] = ()
    session_ttl: float = 12 * 3600.0
    users_file: str | None = None
    github: GithubAuthConfig | None = None


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


@frozen
class PreviewsConfig:
    """The `[previews]` table."""

    ttl: float = 7 * 86400.0
    sleep_after: float = 30 * 60.0


@frozen
class StaticRouteConfig:
    """One `[[routes]]` entry: a fixed route served by the proxy."""

    host: str
    upstream: str
    access: Access = "public"


@frozen
class Config:
    """The whole server configuration, as read from `path`."""

    path: str = EMBEDDED
    server: ServerConfig = ServerConfig()
    tls: TlsConfig = TlsConfig()
    acme: AcmeConfig = AcmeConfig()
    github: GithubConfig = GithubConfig()
    gitlab: GitlabConfig = GitlabConfig()
    repos: tuple[RepoConfig, ...] = ()
    auth: AuthConfig = AuthConfig()
    docker: DockerConfig = DockerConfig()
    previews: PreviewsConfig = PreviewsConfig()
    routes: tuple[StaticRouteConfig, ...] = field(default=())

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


def _no_files(name: str) -> str:
    raise OSError(f"no file reader to read {name}")


def parse_config(
    data: Mapping[str, Any],
    path: str = "<string>",
    read_file: Callable[[str], str] = _no_files,
) -> Config:
    """Validate already-parsed TOML data into a Config."""
    root = _Table(data, path, "", read_file)
    config = Config(
        path=path,
        server=_server(root.table("server")),
        tls=_tls(root.table("tls")),
        acme=_acme(root.table("acme")),
        github=_github(root.table("github")),
        gitlab=_gitlab(root.table("gitlab")),
        repos=tuple(_repo(t) for t in root.array_of_tables("repos")),
        auth=_auth(root.table("auth")),
        docker=_docker(root.table("docker")),
        previews=_previews(root.table("previews")),
        routes=tuple(_route(t) for t in root.array_of_tables("routes")),
    )
    root.finish()
    _cross_checks(config, root)
    return config


class _Table:
    """A TOML table being read: typed getters that raise ConfigError, unknown-key check."""

    def __init__(
        self, data: Mapping[str, Any], path: str, prefix: str, read_file: Callable[[str], str]
    ) -> None:
        self.data = data
        self.path = path
        self.prefix = prefix
        self.read_file = read_file
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), reason)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name)

    def typed(self, name: str, kind: type[T] | tuple[type, ...], default: T, what: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) and kind is not bool:
            raise self.error(name, f"expected {what}, got {value!r}")
        if not isinstance(value, kind):
            raise self.error(name, f"expected {what}, got {type(value).__name__} {value!r}")
        return value  # type: ignore[return-value]

    def string(self, name: str, default: str) -> str:
        return self.typed(name, str, default, "a string")

    def optional_string(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        return self.typed(name, bool, default, "true or false")

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.typed(name, int, default, "a whole number")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        value = float(self.typed(name, (int, float), default, "a number"))
        if value <= minimum and self.has(name):
            raise self.error(name, f"must be more than {minimum:g}, got {value:g}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> Any:
        value = self.string(name, default)
        if value not in choices:
            options = ", ".join(f'"{c}"' for c in choices)
            raise self.error(name, f"must be one of {options}, got {value!r}")
        return value

    def duration(self, name: str, default: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as error:
            raise self.error(name, str(error)) from None

    def size(self, name: str, default: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse_size(value)
        except ValueError as error:
            raise self.error(name, str(error)) from None

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def endpoint(self, name: str, default: str | None) -> Any:
        value = self.optional_string(name)
        if value is None:
            return default
        reason = endpoint_problem(value)
        if reason:
            raise self.error(name, reason)
        return value

    def url(self, name: str, default: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
        value = self.string(name, default)
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise self.error(name, f"expected an {'/'.join(schemes)} URL, got {value!r}")
        return value

    def secret(self, name: str) -> str | None:
        """A secret given inline as `name` or as a file path in `name_file`."""
        inline = self.optional_string(name)
        file_key = f"{name}_file"
        file_name = self.optional_string(file_key)
        if inline is not None and file_name is not None:
            raise self.error(name, f"give either {name} or {file_key}, not both")
        if file_name is None:
            return inline
        try:
            value = self.read_file(file_name)
        except OSError as error:
            reason = error.strerror or str(error)
            raise self.error(file_key, f"cannot read {file_name}: {reason}") from None
        if not value:
            raise self.error(file_key, f"{file_name} is empty")
        return value

    def secrets(self, name: str) -> tuple[str, ...]:
        """A list of secrets, inline as `name` or one per line in `name_file`."""
        inline = self.strings(name)
        file_key = f"{name}_file"
        file_name = self.optional_string(file_key)
        if file_name is None:
            return inline
        try:
            lines = self.read_file(file_name).splitlines()
        except OSError as error:
            reason = error.strerror or str(error)
            raise self.error(file_key, f"cannot read {file_name}: {reason}") from None
        return inline + tuple(line.strip() for line in lines if line.strip())

    def table(self, name: str) -> _Table:
        value = self.raw(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, got {value!r}")
        return _Table(value, self.path, self.key(name) + ".", self.read_file)

    def optional_table(self, name: str) -> _Table | None:
        return self.table(name) if self.has(name) else None

    def array_of_tables(self, name: str) -> list[_Table]:
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(name, f"expected [[{name}]] tables, got {value!r}")
        return [
            _Table(v, self.path, f"{self.key(name)}[{i}].", self.read_file)
            for i, v in enumerate(value)
        ]

    def required(self, name: str) -> str:
        value = self.optional_string(name)
        if not value:
            raise self.error(name, "is required")
        return value

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                raise self.error(name, "unknown key")


def endpoint_problem(description: str) -> str | None:
    """Why a Twisted server endpoint string is invalid, or None when it is fine."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    # serverFromString only builds an endpoint object; nothing listens here.
    try:
        serverFromString(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError) as error:
        return f"invalid Twisted endpoint string {description!r}: {error}"
    return None


def _instance(t: _Table) -> str | None:
    """`[server] instance`: optional, checked by `prevu.instance.problem`."""
    value = t.optional_string("instance")
    reason = None if value is None else instance_problem(value)
    if reason:
        raise t.error("instance", reason)
    return value


def _server(t: _Table) -> ServerConfig:
    d = ServerConfig()
    domain = t.string("domain", d.domain).strip(".").lower()
    if not domain or " " in domain:
        raise t.error("domain", f"expected a DNS name, got {domain!r}")
    label = t.string("label", d.label)
    try:
        label.format(number=1, repo="r", owner="o", branch="b")
    except (KeyError, IndexError, ValueError) as error:
        raise t.error(
            "label", f"unknown placeholder {error}; use {{number}}, {{repo}}, {{owner}}, {{branch}}"
        ) from None
    https = t.endpoint("https", None)
    http = t.endpoint("http", d.http)
    default_public = f"{'https' if https else 'http'}://prevu.{domain}" + (
        ":8000" if http == d.http and not https else ""
    )
    public_url = t.url("public_url", default_public).rstrip("/")
    proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for text in t.strings("trusted_proxies"):
        try:
            proxies.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise t.error("trusted_proxies", f"not an IP address or network: {text!r}") from None
    timeouts = t.table("timeouts")
    config = ServerConfig(
        domain=domain,
        label=label,
        http=http,
        https=https,
        control=t.endpoint("control", d.control),
        public_url=public_url,
        state_dir=t.string("state_dir", d.state_dir),
        api_token=t.secret("api_token"),
        instance=_instance(t),
        trusted_proxies=tuple(proxies),
        max_body=t.size("max_body", d.max_body),
        timeouts=Timeouts(
            connect=timeouts.duration("connect", Timeouts().connect),
            response=timeouts.duration("response", Timeouts().response),
            idle=timeouts.duration("idle", Timeouts().idle),
        ),
    )
    timeouts.finish()
    t.finish()
    return config


def _tls(t: _Table) -> TlsConfig:
    mode = t.choice("mode", "off", ("off", "files", "acme"))
    config = TlsConfig(mode=mode, cert=t.optional_string("cert"), key=t.optional_string("key"))
    if mode == "files":
        if not config.cert:
            raise t.error("cert", 'is required when mode = "files"')
        if not config.key:
            raise t.error("key", 'is required when mode = "files"')
    t.finish()
    return config


def _acme(t: _Table) -> AcmeConfig:
    d = AcmeConfig()
    rfc = t.optional_table("rfc2136")
    rfc2136 = None
    if rfc is not None:
        rfc2136 = Rfc2136Config(
            server=rfc.required("server"),
            key_name=rfc.required("key_name"),
            key_secret=rfc.secret("key_secret") or "",
            key_algorithm=rfc.string("key_algorithm", "hmac-sha256"),
        )
        if not rfc2136.key_secret:
            raise rfc.error("key_secret", "is required")
        rfc.finish()
    config = AcmeConfig(
        directory=t.url("directory", d.directory),
        email=t.optional_string("email"),
        ca_bundle=t.optional_string("ca_bundle"),
        challenge=t.choice("challenge", d.challenge, ("http-01", "tls-alpn-01", "dns-01")),
        renew_before=t.duration("renew_before", d.renew_before),
        dns_hook=t.optional_string("dns_hook"),
        rfc2136=rfc2136,
        orders_per_hour=t.integer("orders_per_hour", d.orders_per_hour, minimum=1),
    )
    if config.challenge == "dns-01" and not (config.dns_hook or config.rfc2136):
        raise t.error("challenge", '"dns-01" needs dns_hook or rfc2136')
    t.finish()
    return config


def _github(t: _Table) -> GithubConfig:
    config = GithubConfig(
        webhook_secret=t.secret("webhook_secret"),
        token=t.secret("token"),
        api_url=t.url("api_url", GithubConfig().api_url).rstrip("/"),
    )
    t.finish()
    return config


def _gitlab(t: _Table) -> GitlabConfig:
    config = GitlabConfig(
        webhook_token=t.secret("webhook_token"),
        token=t.secret("token"),
        url=t.url("url", GitlabConfig().url).rstrip("/"),
    )
    t.finish()
    return config


def _repo(t: _Table) -> RepoConfig:
    config = RepoConfig(
        name=t.required("name").strip("/"),
        access=t.choice("access", "private", ("private", "public")),
        trigger=t.choice("trigger", "auto", ("auto", "label")),
        forks=t.choice("forks", "approve", ("approve", "deny", "allow")),
    )
    if "/" not in config.name:
        raise t.error("name", f"expected a forge path like owner/name, got {config.name!r}")
    t.finish()
    return config


def _auth(t: _Table) -> AuthConfig:
    d = AuthConfig()
    secret = t.secret("cookie_secret")
    if secret is not None and len(secret.encode()) < 32:
        raise t.error("cookie_secret", "must be at least 32 bytes long")
    gh = t.optional_table("github")
    github = None
    if gh is not None:
        secret_value = gh.secret("client_secret")
        if not secret_value:
            raise gh.error("client_secret", "is required")
        github = GithubAuthConfig(
            client_id=gh.required("client_id"),
            client_secret=secret_value,
            allowed_orgs=gh.strings("allowed_orgs"),
            allowed_teams=gh.strings("allowed_teams"),
            allowed_users=gh.strings("allowed_users"),
            repo_readers=gh.boolean("repo_readers", False),
            authorize_url=gh.url("authorize_url", GITHUB_AUTHORIZE_URL),
            token_url=gh.url("token_url", GITHUB_TOKEN_URL),
            api_url=gh.url("api_url", GITHUB_API_URL).rstrip("/"),
        )
        for team in github.allowed_teams:
            if team.count("/") != 1:
                raise gh.error("allowed_teams", f"expected org/team-slug, got {team!r}")
        gh.finish()
    config = AuthConfig(
        cookie_secret=secret,
        cookie_secret_previous=t.secrets("cookie_secret_previous"),
        session_ttl=t.duration("session_ttl", d.session_ttl),
        users_file=t.optional_string("users_file"),
        github=github,
    )
    t.finish()
    return config


def _docker(t: _Table) -> DockerConfig:
    d = DockerConfig()
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
    )
    if config.memory < 6 << 20:
        raise t.error("memory", "must be at least 6m (Docker's minimum)")
    if config.reconcile_interval <= 0:
        raise t.error("reconcile_interval", "must be more than 0")
    t.finish()
    return config


def _previews(t: _Table) -> PreviewsConfig:
    d = PreviewsConfig()
    config = PreviewsConfig(
        ttl=t.duration("ttl", d.ttl), sleep_after=t.duration("sleep_after", d.sleep_after)
    )
    t.finish()
    return config


def _route(t: _Table) -> StaticRouteConfig:
    host = t.required("host").lower().rstrip(".")
    if not _valid_host_pattern(host):
        raise t.error("host", f"expected a host name or *.domain, got {host!r}")
    upstream = t.url("upstream", "", schemes=("http",))
    parts = urlsplit(upstream)
    if parts.path not in ("", "/") or parts.query:
        raise t.error("upstream", "give only scheme, host and port (no path)")
    try:
        parts.port  # noqa: B018 - the property validates the port
    except ValueError as error:
        raise t.error("upstream", str(error)) from None
    config = StaticRouteConfig(
        host=host, upstream=upstream, access=t.choice("access", "public", ("private", "public"))
    )
    t.finish()
    return config


def _valid_host_pattern(host: str) -> bool:
    name = host[2:] if host.startswith("*.") else host
    labels = name.split(".")
    return bool(name) and all(
        label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
        for label in labels
    )


def _cross_checks(config: Config, root: _Table) -> None:
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
