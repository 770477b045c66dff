"""
The orchestrator: carries out the lifecycle's effects with git, a runtime, the
route registry and the store, and feeds the results back (see
docs/orchestrator.md for the modules and which way they depend).
"""

from prevu.orchestrator.engine import Orchestrator, Receipt
from prevu.orchestrator.service import OrchestratorService
from prevu.orchestrator.settings import OrchestratorSettings

__all__ = ["Orchestrator", "OrchestratorService", "OrchestratorSettings", "Receipt"]
