"""
The orchestrator as a Twisted service: started and stopped with prevu's service tree.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred

from prevu.orchestrator.engine import Orchestrator


class OrchestratorService(Service):
    """Starts the orchestrator (load, reconcile, periodic reconcile) with the service tree."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    def startService(self) -> None:
        super().startService()
        deferred = ensureDeferred(self.orchestrator.start())
        deferred.addErrback(
            lambda f: self.orchestrator.log.failure("orchestrator start", failure=f)
        )

    def stopService(self) -> Any:
        super().stopService()
        self.orchestrator.stop()
        return None
