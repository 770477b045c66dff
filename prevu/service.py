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
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from prevu.adapters.buildkit import (
    BuildKitCli,
    clean_environment,
    find_builder_at_startup,
    prepare_docker_config,
)
from prevu.adapters.compose_runtime import with_compose
from prevu.adapters.docker import DockerEngine
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.adapters.git import GitCli
from prevu.adapters.github_api import GithubApi
from prevu.adapters.health import NetworkHealthChecker
from prevu.adapters.swarm_setup import swarm_runtime_for
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
from prevu.endpoints import endpoint_port, loopback_address, with_backlog
from prevu.errors import DockerError
from prevu.feedback.wiring import build_forges, github_api, secrets_of
from prevu.idle import IdleService
from prevu.orchestrator import Orchestrator, OrchestratorService, OrchestratorSettings
from prevu.orchestrator.settings import CloneTokenSource
from prevu.proxy.server import ProxyFactory, ProxySettings
from prevu.routing import Route, RouteRegistry, Upstream
from prevu.runtime import Runtime
from prevu.secretfile import API_TOKEN_FILE, load_or_create_secret
from prevu.store import SqliteStore
from prevu.tls.service import build_tls
from prevu.tls.status import CertificatesApi

log = Logger()


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


class ListeningService(StreamServerEndpointService):
    """
    A listener that refuses to start without its port: the listen happens in
    `privilegedStartService` (before the reactor runs) and a failure ends
    twistd with one line naming the config key and the endpoint (exit 1),
    instead of Twisted's "Unhandled Error" and a process serving nothing.
    """

    _raiseSynchronously = True

    def __init__(
        self, reactor: Any, key: str, description: str, factory: Any, backlog: bool = False
    ) -> None:
        listen = with_backlog(description) if backlog else description
        super().__init__(serverFromString(reactor, listen), factory)
        self.key = key
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as error:  # any listen failure: the one line says which and why
            raise SystemExit(cannot_listen(self.key, self.description, error)) from None


def cannot_listen(key: str, description: str, error: BaseException) -> str:
    """The one line twistd ends with when `[server] key = description` cannot be listened on."""
    reason = getattr(error, "socketError", None) or error
    if isinstance(reason, OSError) and reason.strerror:
        reason = reason.strerror
    port = endpoint_port(description)
    where = f"port {port}" if port is not None else description
    return f"prevu: cannot listen on {where} ({key} = {description!r}): {reason}"


def startup_summary(config: Config, builder: str, token_file: str | None) -> str:
    """
    The start-up summary block: where previews and the dashboard are, where
    the API token is, how to point the CLI here, the builder found and the
    TLS mode. `token_file` is the file prevu made the token in (None: the
    config gives it).
    """
    server = config.server
    scheme = "https" if server.https else "http"
    port = endpoint_port(server.https or server.http)
    suffix = f":{port}" if port and port != (443 if server.https else 80) else ""
    previews = f"{scheme}://{server.label}.{server.domain}{suffix}/"
    control = loopback_address(server.control)
    if control is not None:
        host = f"[{control.host}]" if ":" in control.host else control.host
        api = f"http://{host}:{control.port}"
    else:
        api = server.public_url
    if token_file is not None:
        token = token_file
        cli = f'export PREVU_URL={api} PREVU_TOKEN="$(cat {token_file})"'
    else:
        token = f"{config.path}: server.api_token"
        cli = f"export PREVU_URL={api} PREVU_TOKEN=<server.api_token>"
    tls = config.tls.mode + (f" ({server.https})" if server.https else "")
    return "\n".join(
        (
            "prevu is up",
            f"  previews   {previews}  (proxy on {server.http})",
            f"  dashboard  {server.public_url}/  (control app on {server.control})",
            f"  API token  {token}",
            f"  CLI        {cli}",
            f"  builder    {builder}",
            f"  TLS        {tls}",
        )
    )


class _SummaryService(Service):
    """Logs the start-up summary once every listener is up (it starts last)."""

    def __init__(self, summary: str) -> None:
        self.summary = summary

    def startService(self) -> None:
        super().startService()
        log.info("{summary}", summary=self.summary)


@frozen
class PreviewPipeline:
    """The wired preview pipeline: orchestrator, web handlers, and the services to run."""

    orchestrator: Orchestrator
    webhooks: Webhooks
    api: PreviewsApi
    page: PreviewPage
    services: tuple[Service, ...]
    github: GithubApi | None = None
    """The GitHub API client (None: no credential): the dashboard asks it who may write."""


def _app_clone_tokens(github: GithubApi | None) -> CloneTokenSource | None:
    """With a GitHub App, GitHub clones use its installation tokens (docs/forge.md)."""
    if github is None or github.app is None:
        return None
    app = github

    async def token(forge: str, repo: str) -> str | None:
        return await app.clone_token(repo) if forge == "github" else None

    return token


def find_build_client(config: Config, reactor: Any) -> BuildKitCli:
    """
    The BuildKit client of `[docker] cli`, found once at start-up (blocking, before
    the reactor runs), with prevu's own DOCKER_CONFIG under `state_dir/docker`.

    :raises SystemExit: one line saying that no client builds with BuildKit.
    """
    docker = config.docker
    state_dir = os.path.abspath(config.server.state_dir)
    try:
        directory = prepare_docker_config(
            os.path.join(state_dir, "docker"), docker.registry_auth_file
        )
    except OSError as error:
        raise SystemExit(f"prevu: [docker] registry_auth_file: {error}") from None
    host = docker.host or os.environ.get("DOCKER_HOST")
    environment = clean_environment(directory, host)
    try:
        cli = find_builder_at_startup(docker.cli, environment)
    except DockerError as error:
        raise SystemExit(f"prevu: cannot start: {error.reason}") from None
    for repo in config.repos:
        if repo.forks == "allow":
            log.warn(
                '[[repos]] {repo}: forks = "allow" builds fork code without approval; it gets '
                "no secrets, but RUN --mount=type=cache directories are shared by every build "
                "on the engine: allow trusted forks only",
                repo=repo.name,
            )
    return BuildKitCli(reactor, cli, environment)


def build_previews(
    config: Config,
    reactor: Any,
    pool: ThreadPool,
    routes: RouteRegistry,
    builder: BuildKitCli | None = None,
) -> PreviewPipeline:
    """
    Store under `state_dir`, git and the `[docker] runtime` on `pool`, orchestrator,
    handlers. `builder` is the BuildKit client (None: found on the first build).
    """
    state_dir = os.path.abspath(config.server.state_dir)
    store = SqliteStore.in_state_dir(state_dir, reactor, config.server.deliveries_kept)
    client_kwargs = {"base_url": config.docker.host} if config.docker.host else {}
    docker = DockerEngine(
        reactor,
        pool,
        client_kwargs=client_kwargs,
        self_container=config.docker.self_container,
        builder=builder,
        build_cache_max=config.docker.build_cache_max,
    )
    github = github_api(config, reactor)
    settings = OrchestratorSettings.from_config(
        config, clone_token_source=_app_clone_tokens(github)
    )
    # `[docker] runtime` picks the engine: this host (with Compose), or Docker Swarm (issue 19).
    inner = DockerRuntime.from_config(
        docker,
        NetworkHealthChecker(reactor),
        config.docker,
        settings.instance,
        restart_limit=config.previews.restart_limit,
    )
    runtime: Runtime
    if config.docker.runtime == "swarm":
        runtime = swarm_runtime_for(config, reactor, pool, inner)
    else:
        runtime = with_compose(
            inner,
            reactor,
            state_dir,
            config.docker.compose,
            config.docker.compose_memory,
            docker_host=config.docker.host,
        )
    git = GitCli(reactor, os.path.join(state_dir, "workspaces"), pool)
    orchestrator = Orchestrator(settings, reactor, routes, runtime, git, store)
    feedback, commands = build_forges(
        config, reactor, orchestrator, orchestrator.watch, store, github=github
    )
    webhooks = Webhooks(
        config,
        orchestrator,
        store,
        orchestrator.metrics,
        installations=github.remember_installation if github is not None else None,
        commands=commands.submit,
    )
    api = PreviewsApi(config, orchestrator, store, docker, orchestrator.metrics)
    services: tuple[Service, ...] = (_StoreService(store), OrchestratorService(orchestrator))
    services += tuple(feedback)
    page = PreviewPage(store, secrets_of(config, settings.secret_values))
    return PreviewPipeline(orchestrator, webhooks, api, page, services, github)


@frozen
class GithubWriters:
    """
    The dashboard's `WritePermission` (prevu.control.operators) from GitHub's
    collaborator permission (`role_name` admin, maintain or write; docs/forge.md).
    A failed call answers False and is logged: nobody gains rights by an outage.
    """

    api: GithubApi

    async def may_write(self, repo: str, user: str) -> bool:
        """True when GitHub says `user` may write to `repo`; False on any failure."""
        try:
            return await self.api.may_write(repo, user)
        except Exception as error:
            log.warn(
                "cannot ask GitHub whether {user} may write to {repo}: {error}",
                user=user,
                repo=repo,
                error=error,
            )
            return False


def dashboard_writers(config: Config, github: GithubApi | None) -> GithubWriters | None:
    """
    Who besides `[auth] admins` may act from the dashboard: GitHub writers of
    the preview's repository, when reviewers log in with GitHub only (with a
    users file too, a session's name could be a users-file name that merely
    equals a GitHub login, so only `admins` act; docs/dashboard.md).
    """
    if github is None or config.auth.github is None or config.auth.users_file is not None:
        return None
    return GithubWriters(github)


def static_routes(config: Config) -> list[Route]:
    """The `[[routes]]` of the config as routes."""
    return [
        Route(host=r.host, upstream=Upstream.from_url(r.upstream), access=r.access)
        for r in config.routes
    ]


def control_upstream(description: str) -> Upstream | None:
    """The address the proxy uses to reach the control app, if it listens on TCP."""
    address = loopback_address(description)
    return Upstream(address.host, address.port) if address is not None else None


def control_routes(config: Config) -> list[Route]:
    """The proxy route that serves the control app under the host of `public_url`."""
    upstream = control_upstream(config.server.control)
    host = urlsplit(config.server.public_url).hostname
    if upstream is None or not host:
        return []
    return [Route(host=host.lower(), upstream=upstream, access="public", trusted=True)]


def build_service(config: Config, reactor: Any) -> MultiService:
    """Wire every part of prevu for `config` on `reactor`."""
    token_file = None
    if config.server.api_token is None:
        token = load_or_create_secret(config.server.state_dir, API_TOKEN_FILE)
        config = evolve(config, server=evolve(config.server, api_token=token))
        token_file = os.path.join(os.path.abspath(config.server.state_dir), API_TOKEN_FILE)
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
    builder = find_build_client(config, reactor)
    previews = build_previews(config, reactor, pool, routes, builder)
    for service in previews.services:
        service.setServiceParent(top)
    control = ControlApp(
        config=config,
        login=login,
        certificates=certificates,
        webhooks=previews.webhooks,
        previews=previews.api,
        page=previews.page,
        builder=builder.cli.describe(),
        may_write=dashboard_writers(config, previews.github),
    )
    control_site = control_site_for(control.resource())
    control_site.noisy = False  # no "Starting factory" line per start (a fifth of the log)
    ListeningService(
        reactor, "server.control", config.server.control, control_site
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
    ListeningService(
        reactor, "server.http", config.server.http, proxy, backlog=True
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
        wrapped = tls.wrap(https_proxy)  # type: ignore[arg-type]  # zope interfaces are not Protocols
        ListeningService(
            reactor, "server.https", config.server.https, wrapped, backlog=True
        ).setServiceParent(top)
        previews.orchestrator.metrics.sources.append(https_proxy.samples)
    summary = startup_summary(config, builder.cli.describe(), token_file)
    _SummaryService(summary).setServiceParent(top)
    return top
