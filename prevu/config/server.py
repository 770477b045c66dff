"""
The `[server]` table (listeners, public URL, API token, timeouts) and the
`[[routes]]` static routes.

Pure core: values and their readers.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from attrs import frozen

from prevu.config.reader import Table
from prevu.endpoints import endpoint_port
from prevu.labels import instance_problem
from prevu.routing import Access


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
    """`prevu.instance` of this prevu's objects; None: random, kept in `state_dir/instance`."""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body: int = 1 << 30
    timeouts: Timeouts = Timeouts()
    deliveries_kept: int = 10_000
    """Entries of the visible webhook delivery trail (`GET /api/deliveries`, `prevu why`)."""

    @property
    def public_host(self) -> str:
        """The host name of `public_url`, where the proxy serves the control app."""
        return (urlsplit(self.public_url).hostname or "").lower()


@frozen
class StaticRouteConfig:
    """One `[[routes]]` entry: a fixed route served by the proxy."""

    host: str
    upstream: str
    access: Access = "public"


def parse_server(t: Table) -> ServerConfig:
    """The `[server]` table; ConfigError on a bad value or an unknown key."""
    d = ServerConfig()
    domain = t.string("domain", d.domain)
    reason = domain_problem(domain)
    if reason:
        raise t.error("domain", reason)
    domain = domain.strip(".").lower()
    label = t.string("label", d.label)
    try:
        label.format(number=1, repo="r", owner="o", branch="b")
    except (KeyError, IndexError, ValueError) as error:
        raise t.error(
            "label", f"unknown placeholder {error}; use {{number}}, {{repo}}, {{owner}}, {{branch}}"
        ) from None
    https = t.endpoint("https", None)
    http = t.endpoint("http", d.http)
    default_public = default_public_url(domain, http, https)
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
        deliveries_kept=t.integer("deliveries_kept", d.deliveries_kept, minimum=1),
    )
    timeouts.finish()
    t.finish()
    return config


def parse_route(t: Table) -> StaticRouteConfig:
    """One `[[routes]]` entry; ConfigError on a bad host pattern or upstream URL."""
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


def domain_problem(domain: str) -> str | None:
    """
    Why `domain` cannot be `[server] domain`, or None. It is a bare DNS name
    (RFC 1123 labels: 1-63 of a-z, 0-9, `-`, not starting or ending with `-`;
    upper case is folded, one trailing dot allowed): no scheme, port or path,
    since previews live at `<label>.<domain>`.
    """
    if "://" in domain:
        return f"give the bare DNS name, without a scheme, got {domain!r}"
    if "/" in domain:
        return f"give the bare DNS name, without a path, got {domain!r}"
    if ":" in domain:
        return f"give the bare DNS name, without a port (ports go in http/https), got {domain!r}"
    name = domain.removesuffix(".")
    if not name or len(name) > 253:
        return f"expected a DNS name, got {domain!r}"
    for label in name.lower().split("."):
        if not _LABEL.fullmatch(label):
            return f"{label!r} is not a DNS label (1-63 of a-z, 0-9, -) in {domain!r}"
    return None


_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def default_public_url(domain: str, http: str, https: str | None) -> str:
    """
    `public_url` when none is given: `<scheme>://prevu.<domain>`, with the
    proxy's port (of `https` when set, else of `http`) whenever it is not the
    scheme's default (80/443), so the login redirect reaches the proxy.
    """
    scheme = "https" if https else "http"
    port = endpoint_port(https if https else http)
    default = 443 if https else 80
    suffix = f":{port}" if port and port != default else ""
    return f"{scheme}://prevu.{domain}{suffix}"


def _valid_host_pattern(host: str) -> bool:
    name = host[2:] if host.startswith("*.") else host
    labels = name.split(".")
    return bool(name) and all(
        label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
        for label in labels
    )


def _instance(t: Table) -> str | None:
    """`[server] instance`: optional; the rule is `prevu.labels.instance_problem`."""
    value = t.optional_string("instance")
    reason = None if value is None else instance_problem(value)
    if reason:
        raise t.error("instance", reason)
    return value
