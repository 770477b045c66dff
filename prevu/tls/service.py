"""
`build_tls`: the TLS parts of prevu, wired from the config, for `build_service`.

It returns the service to start (issuer or files watcher), the interceptors
for the plain-HTTP proxy (HTTP-01 answers, then the redirect to HTTPS), a
function that wraps the https proxy factory in TLS, and the status source for
the API and metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from attrs import frozen
from twisted.application.service import MultiService
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from prevu.config import Config
from prevu.proxy.hooks import Interceptor
from prevu.routing import RouteRegistry
from prevu.tls.acme import DNS_01, HTTP_01, TLS_ALPN_01, AcmeClient
from prevu.tls.certs import self_signed
from prevu.tls.contexts import SniContexts
from prevu.tls.dns import DnsProvider, ExecDnsProvider, Rfc2136DnsProvider
from prevu.tls.files import FilesCertificate
from prevu.tls.handshake import HoldingFactory
from prevu.tls.http import AcmeChallengeInterceptor, Http01Tokens, HttpsRedirect
from prevu.tls.issuer import CertificateIssuer
from prevu.tls.responders import (
    ChallengeResponder,
    Dns01Responder,
    Http01Responder,
    TlsAlpn01Responder,
)
from prevu.tls.status import StatusSource, metrics_lines
from prevu.tls.store import CertificateStore

log = Logger()


def endpoint_port(description: str | None, default: int = 443) -> int:
    """The port a `tcp:PORT[:...]` (or `ssl:`) endpoint string listens on; `default` if unknown."""
    if not description:
        return default
    parts = description.split(":")
    for part in parts[1:]:
        if part.startswith("port="):
            part = part.split("=", 1)[1]
        if part.isdigit():
            return int(part) or default
    return default


@frozen
class TlsParts:
    """What `build_service` plugs in when TLS is on."""

    mode: str
    service: MultiService
    contexts: SniContexts
    interceptors: tuple[Interceptor, ...]
    wrap: Callable[[IProtocolFactory], IProtocolFactory]
    status: StatusSource
    issuer: CertificateIssuer | None = None

    def metrics_lines(self) -> list[str]:
        """Prometheus lines for `/metrics`."""
        return metrics_lines(self.status.statuses(), self.status.order_counts())


def dns_provider(config: Config, reactor: Any, pool: ThreadPool) -> DnsProvider:
    """The DNS-01 provider the config names: the exec hook first, else RFC 2136."""
    if config.acme.dns_hook:
        return ExecDnsProvider(reactor=reactor, hook=config.acme.dns_hook)
    assert config.acme.rfc2136 is not None, "config validation requires dns_hook or rfc2136"
    return Rfc2136DnsProvider(reactor=reactor, pool=pool, config=config.acme.rfc2136)


def build_tls(
    config: Config,
    reactor: Any,
    pool: ThreadPool,
    routes: RouteRegistry,
    clock: Any = None,
) -> TlsParts | None:
    """The TLS parts for `config`, or None when TLS is off (or no `https` endpoint is set)."""
    if config.tls.mode == "off":
        return None
    if not config.server.https:
        log.warn(
            '[tls] mode = "{mode}" but server.https is not set: TLS is off', mode=config.tls.mode
        )
        return None
    clock = clock if clock is not None else reactor
    contexts = SniContexts(default=self_signed(("prevu-default.invalid",), clock.seconds()))
    top = MultiService()
    redirect = HttpsRedirect(
        https_port=endpoint_port(config.server.https), trusted_proxies=config.server.trusted_proxies
    )
    if config.tls.mode == "files":
        assert config.tls.cert and config.tls.key, "config validation requires cert and key"
        files = FilesCertificate(
            clock=clock, contexts=contexts, cert_path=config.tls.cert, key_path=config.tls.key
        )
        files.setServiceParent(top)

        def wrap_files(factory: IProtocolFactory) -> IProtocolFactory:
            return cast(
                IProtocolFactory, TLSMemoryBIOFactory(contexts.server_options(), False, factory)
            )

        return TlsParts("files", top, contexts, (redirect,), wrap_files, files)

    tokens = Http01Tokens()
    acme = config.acme
    responder: ChallengeResponder
    if acme.challenge == HTTP_01:
        responder = Http01Responder(tokens)
    elif acme.challenge == TLS_ALPN_01:
        responder = TlsAlpn01Responder(contexts, clock)
    else:
        assert acme.challenge == DNS_01
        responder = Dns01Responder(dns_provider(config, reactor, pool))

    def client_factory(account_key: bytes) -> AcmeClient:
        return AcmeClient(
            directory_url=acme.directory,
            account_key_pem=account_key,
            email=acme.email,
            verify=acme.ca_bundle or True,
        )

    issuer = CertificateIssuer(
        clock=clock,
        reactor=reactor,
        pool=pool,
        store=CertificateStore.under(config.server.state_dir),
        contexts=contexts,
        responder=responder,
        client_factory=client_factory,
        domain=config.server.domain,
        renew_before=acme.renew_before,
        orders_per_hour=acme.orders_per_hour,
    )
    issuer.setServiceParent(top)
    routes.listen(issuer.routes_changed)

    def wrap_acme(factory: IProtocolFactory) -> IProtocolFactory:
        tls = TLSMemoryBIOFactory(contexts.server_options(), False, factory)
        return cast(IProtocolFactory, HoldingFactory(tls, issuer))

    interceptors = (AcmeChallengeInterceptor(tokens), redirect)
    return TlsParts("acme", top, contexts, interceptors, wrap_acme, issuer, issuer)
