"""
Wiring of the preview pipeline for `build_service`: store, adapters,
orchestrator, webhooks and API, in one call so that `prevu/service.py` only
needs a few lines.
"""

from __future__ import annotations

import os
from typing import Any

from attrs import frozen
from twisted.application.service import Service
from twisted.python.threadpool import ThreadPool

from prevu.adapters.docker import DockerEngine
from prevu.adapters.git import GitCli
from prevu.config import Config
from prevu.control.api import PreviewsApi
from prevu.control.webhooks import Webhooks
from prevu.feedback.wiring import build_feedback
from prevu.orchestrator.engine import Orchestrator, OrchestratorService
from prevu.orchestrator.health import NetworkHealthChecker
from prevu.routing import RouteRegistry
from prevu.store import SqliteStore


class _StoreService(Service):
    """Closes the SQLite store at shutdown."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def stopService(self) -> Any:
        super().stopService()
        self.store.close()
        return None


@frozen
class Previews:
    """The wired preview pipeline."""

    orchestrator: Orchestrator
    webhooks: Webhooks
    api: PreviewsApi
    services: tuple[Service, ...]


def build_previews(
    config: Config, reactor: Any, pool: ThreadPool, routes: RouteRegistry
) -> Previews:
    """Store under `state_dir`, git and Docker adapters on `pool`, orchestrator, web handlers."""
    state_dir = os.path.abspath(config.server.state_dir)
    store = SqliteStore.in_state_dir(state_dir, reactor)
    client_kwargs = {"base_url": config.docker.host} if config.docker.host else {}
    docker = DockerEngine(
        reactor, pool, client_kwargs=client_kwargs, self_container=config.docker.self_container
    )
    git = GitCli(reactor, os.path.join(state_dir, "workspaces"), pool)
    orchestrator = Orchestrator(
        config=config,
        clock=reactor,
        routes=routes,
        docker=docker,
        git=git,
        store=store,
        health=NetworkHealthChecker(reactor),
    )
    webhooks = Webhooks(config, orchestrator, store, orchestrator.metrics)
    api = PreviewsApi(config, orchestrator, store, docker, orchestrator.metrics)
    services: tuple[Service, ...] = (_StoreService(store), OrchestratorService(orchestrator))
    feedback = build_feedback(config, reactor, orchestrator.watch, store)
    if feedback is not None:
        services += (feedback,)
    return Previews(orchestrator, webhooks, api, services)
