"""Client side of the proxy (placeholder while the real one is written)."""

from __future__ import annotations

import ipaddress
from typing import Any

from attrs import field, frozen
from twisted.internet.protocol import Factory

from prevu.config import Config
from prevu.proxy.hooks import AccessGate, Interceptor, NoWaker, OpenGate, Waker
from prevu.routing import RouteRegistry


@frozen
class ProxySettings:
    """Everything the proxy needs from the config."""

    scheme: str = "http"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body: int = 1 << 30
    connect_timeout: float = 5.0
    response_timeout: float = 60.0
    idle_timeout: float = 120.0
    max_head: int = 64 * 1024
    max_target: int = 8 * 1024

    @classmethod
    def from_config(cls, config: Config, scheme: str = "http") -> ProxySettings:
        server = config.server
        return cls(
            scheme=scheme,
            trusted_proxies=server.trusted_proxies,
            max_body=server.max_body,
            connect_timeout=server.timeouts.connect,
            response_timeout=server.timeouts.response,
            idle_timeout=server.timeouts.idle,
        )


@frozen
class ProxyFactory(Factory):
    """Builds one client connection protocol per accepted connection."""

    reactor: Any
    routes: RouteRegistry
    settings: ProxySettings = ProxySettings()
    gate: AccessGate = field(factory=OpenGate)
    interceptors: tuple[Interceptor, ...] = ()
    waker: Waker = field(factory=NoWaker)
