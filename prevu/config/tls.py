"""
The `[tls]` and `[acme]` tables: where certificates come from.

Pure core: values and their readers.
"""

from __future__ import annotations

from typing import Literal

from attrs import frozen

from prevu.config.reader import Table


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


def parse_tls(t: Table) -> TlsConfig:
    """The `[tls]` table; `cert` and `key` are required with `mode = "files"`."""
    mode = t.choice("mode", "off", ("off", "files", "acme"))
    config = TlsConfig(mode=mode, cert=t.optional_string("cert"), key=t.optional_string("key"))
    if mode == "files":
        if not config.cert:
            raise t.error("cert", 'is required when mode = "files"')
        if not config.key:
            raise t.error("key", 'is required when mode = "files"')
    t.finish()
    return config


def parse_acme(t: Table) -> AcmeConfig:
    """The `[acme]` table; `dns-01` needs `dns_hook` or `rfc2136`."""
    d = AcmeConfig()
    rfc = t.optional_table("rfc2136")
    rfc2136 = None
    if rfc is not None:
        rfc2136 = Rfc2136Config(
            server=rfc.address("server"),
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
