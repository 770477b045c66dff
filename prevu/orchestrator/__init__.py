"""
The orchestrator: carries out the lifecycle's effects with git, Docker, the
route registry and the store, and feeds the results back (see
docs/orchestrator.md).
"""

from prevu.orchestrator.engine import Orchestrator, OrchestratorService, Receipt

__all__ = ["Orchestrator", "OrchestratorService", "Receipt"]
