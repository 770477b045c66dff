"""
The proxy's settings: what it needs from the config, for one endpoint.
"""

from __future__ import annotations

from attrs import Factory as Default
from attrs import frozen

from prevu.config import Config
from prevu.proxy.admission import Network, Policy
from prevu.proxy.deadlines import Timeouts
from prevu.proxy.hooks import AccessGate, Interceptor
from prevu.proxy.pages import PageLinks
from prevu.routing import RouteRegistry


@frozen
class ProxySettings:
    """Everything the proxy needs from the config."""

    scheme: str = "http"
    trusted_proxies: tuple[Network, ...] = ()
    max_body: int = 1 << 30
    timeouts: Timeouts = Default(Timeouts)  # prevu.proxy.deadlines
    max_head: int = 64 * 1024
    max_target: int = 8 * 1024
    max_connections: int = 10_000
    max_connections_per_client: int = 512
    retry_after: int = 5
    direct_write: bool = True  # prevu.proxy.fastpath; off under TLS by construction
    public_url: str = ""  # prevu's control app: the pages link to its logs and login
    login_configured: bool = True  # users_file or [auth.github]: else no login link (pages.py)

    @classmethod
    def from_config(cls, config: Config, scheme: str = "http") -> ProxySettings:
        """Settings for the proxy endpoint that serves `scheme`."""
        server = config.server
        return cls(
            scheme=scheme,
            trusted_proxies=server.trusted_proxies,
            max_body=server.max_body,
            timeouts=Timeouts.from_config(server.timeouts),
            public_url=server.public_url.rstrip("/"),
            login_configured=bool(config.auth.users_file or config.auth.github),
        )

    def policy(
        self, routes: RouteRegistry, gate: AccessGate, interceptors: tuple[Interceptor, ...]
    ) -> Policy:
        """What `admission.admit` consults for this endpoint, with these hooks."""
        return Policy(
            self.scheme,
            routes,
            gate,
            interceptors,
            max_body=self.max_body,
            retry_after=self.retry_after,
            trusted_proxies=self.trusted_proxies,
            links=PageLinks(self.public_url.rstrip("/"), self.login_configured),
        )
