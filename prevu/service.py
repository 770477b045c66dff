"""
The composition root: `build_service` wires config, reactor and adapters.

Everything prevu runs hangs off the MultiService returned here; the twistd
plugin only parses options and calls `build_service`.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from attrs import evolve, frozen
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.python.threadpool import ThreadPool

from prevu.adapters.docker import DockerEngine
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.adapters.git import GitCli
from prevu.adapters.health import NetworkHealthChecker
from prevu.auth.authority import Authority
from prevu.auth.gate import AuthGate
from prevu.auth.revocations import load_revoked
from prevu.auth.revocations import saver as revocation_saver
from prevu.config import Config
from prevu.control.api import PreviewsApi
from prevu.control.app import ControlApp
from prevu.control.limits import control_site as control_site_for
from prevu.control.login import build_login
from prevu.control.preview_page import PreviewPage
from prevu.control.webhooks import Webhooks
from prevu.feedback.wiring import build_feedback, secrets_of
from prevu.idle import IdleService
from prevu.orchestrator import Orchestrator, OrchestratorService, OrchestratorSettings
from prevu.proxy.server import ProxyFactory, ProxySettings
from prevu.routing import Route, RouteRegistry, Upstream
from prevu.secretfile import API_TOKEN_FILE, load_or_create_secret
from prevu.store import SqliteStore
from prevu.tls.service import build_tls
from prevu.tls.status import CertificatesApi


class ThreadPoolService(Service):
    """Starts and stops prevu's own thread pool (Docker, ACME and other blocking calls)."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Any:
        super().stopService()
        self.pool.stop()


class _StoreService(Service):
    """Closes the SQLite store at shutdown."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def stopService(self) -> Any:
        super().stopService()
        self.store.close()
        return None


@frozen
class PreviewPipeline:
    """The wired preview pipeline: orchestrator, web handlers, and the services to run."""

    orchestrator: Orchestrator
    webhooks: Webhooks
    api: PreviewsApi
    page: PreviewPage
    services: tuple[Service, ...]


def build_previews(
    config: Config, reactor: Any, pool: ThreadPool, routes: RouteRegistry
) -> PreviewPipeline:
    """Store under `state_dir`, git and the `[docker] runtime` on `pool`, orchestrator, handlers."""
    state_dir = os.path.abspath(config.server.state_dir)
    store = SqliteStore.in_state_dir(state_dir, reactor, config.server.deliveries_kept)
    client_kwargs = {"base_url": config.docker.host} if config.docker.host else {}
    docker = DockerEngine(
        reactor, pool, client_kwargs=client_kwargs, self_container=config.docker.self_container
    )
    settings = OrchestratorSettings.from_config(config)
    # `[docker] runtime` picks the engine; "docker" is the only one so far (config refuses others).
    runtime = DockerRuntime.from_config(
        docker, NetworkHealthChecker(reactor), config.docker, settings.instance
    )
    git = GitCli(reactor, os.path.join(state_dir, "workspaces"), pool)
    orchestrator = Orchestrator(settings, reactor, routes, runtime, git, store)
    webhooks = Webhooks(config, orchestrator, store, orchestrator.metrics)
    api = PreviewsApi(config, orchestrator, store, docker, orchestrator.metrics)
    services: tuple[Service, ...] = (_StoreService(store), OrchestratorService(orchestrator))
    feedback = build_feedback(config, reactor, orchestrator.watch, store)
    if feedback is not None:
        services += (feedback,)
    page = PreviewPage(store, secrets_of(config))
    return PreviewPipeline(orchestrator, webhooks, api, page, services)


def static_routes(config: Config) -> list[Route]:
    """The `[[routes]]` of the config as routes."""
    return [
        Route(host=r.host, upstream=Upstream.from_url(r.upstream), access=r.access)
        for r in config.routes
    ]


def control_upstream(description: str) -> Upstream | None:
    """The address the proxy uses to reach the control app, if it listens on TCP."""
    parts = description.split(":")
    if parts[0] not in ("tcp", "tcp6") or len(parts) < 2:
        return None
    interface = "127.0.0.1" if parts[0] == "tcp" else "::1"
    port = None
    for part in parts[1:]:
        if part.startswith("interface="):
            interface = part.split("=", 1)[1] or interface
        elif part.startswith("port="):
            port = int(part.split("=", 1)[1])
        elif part.isdigit() and port is None:
            port = int(part)
    if port is None:
        return None
    if interface in ("0.0.0.0", ""):
        interface = "127.0.0.1"
    elif interface == "::":
        interface = "::1"
    return Upstream(interface, port)


def with_backlog(description: str, backlog: int = 1024) -> str:
    """
    A proxy endpoint with a listen backlog fit for bursts of new connections.

    Twisted's default is 50: under a burst the kernel then drops SYNs and
    clients wait a second to retry. Only added to TCP endpoints that give none.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description


def control_routes(config: Config) -> list[Route]:
    """The proxy route that serves the control app under the host of `public_url`."""
    upstream = control_upstream(config.server.control)
    host = urlsplit(config.server.public_url).hostname
    if upstream is None or not host:
        return []
    return [Route(host=host.lower(), upstream=upstream, access="public", trusted=True)]


def build_service(config: Config, reactor: Any) -> MultiService:
    """Wire every part of prevu for `config` on `reactor`."""
    if config.server.api_token is None:
        token = load_or_create_secret(config.server.state_dir, API_TOKEN_FILE)
        config = evolve(config, server=evolve(config.server, api_token=token))
    top = MultiService()
    pool = ThreadPool(minthreads=1, maxthreads=8, name="prevu")
    ThreadPoolService(pool).setServiceParent(top)

    routes = RouteRegistry()
    routes.replace("control", control_routes(config))
    routes.replace("static", static_routes(config))

    stored = None if config.auth.cookie_secret else load_or_create_secret(config.server.state_dir)
    authority = Authority.from_config(config, stored)
    authority.revoked = load_revoked(config.server.state_dir, reactor.seconds())
    authority.on_revoke = revocation_saver(config.server.state_dir)
    login = build_login(config, reactor, authority, routes, pool)
    tls = build_tls(config, reactor, pool, routes)
    if tls is not None:
        tls.service.setServiceParent(top)
    certificates = CertificatesApi.for_tls(config, tls)
    previews = build_previews(config, reactor, pool, routes)
    for service in previews.services:
        service.setServiceParent(top)
    control = ControlApp(
        config=config,
        login=login,
        certificates=certificates,
        webhooks=previews.webhooks,
        previews=previews.api,
        page=previews.page,
    )
    control_site = control_site_for(control.resource())
    StreamServerEndpointService(
        serverFromString(reactor, config.server.control), control_site
    ).setServiceParent(top)

    activity: dict[str, float] = {}
    IdleService(
        reactor,
        previews.orchestrator,
        activity,
        config.previews.sleep_after,
        config.previews.ttl,
    ).setServiceParent(top)
    proxy = ProxyFactory(
        reactor=reactor,
        routes=routes,
        settings=ProxySettings.from_config(config),
        gate=AuthGate(authority, reactor),
        interceptors=tls.interceptors if tls is not None else (),
        waker=previews.orchestrator,
        activity=activity,
    )
    StreamServerEndpointService(
        serverFromString(reactor, with_backlog(config.server.http)), proxy
    ).setServiceParent(top)
    previews.orchestrator.metrics.sources.append(proxy.samples)
    if tls is not None and config.server.https:
        https_proxy = ProxyFactory(
            reactor=reactor,
            routes=routes,
            settings=ProxySettings.from_config(config, scheme="https"),
            gate=AuthGate(authority, reactor),
            waker=previews.orchestrator,
            activity=activity,
        )
        StreamServerEndpointService(
            serverFromString(reactor, with_backlog(config.server.https)),
            tls.wrap(https_proxy),  # type: ignore[arg-type]  # zope interfaces are not Protocols
        ).setServiceParent(top)
        previews.orchestrator.metrics.sources.append(https_proxy.samples)
    return top
