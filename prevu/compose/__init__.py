"""
Compose previews: the pure model check and writer (issue 17).

Pure core (attrs and the stdlib only). `check.check_model` turns the normalized
model Compose prints (`docker compose config --format json`) into a
`ComposeApp` through an allowlist, refusing anything else with a
`ComposeRefused(service, key, reason)`; `write.write_project` writes the model
prevu runs from a `ComposeApp` (project names, labels, one network per preview,
limits, restart policy, injected URLs). The adapter that runs the Compose CLI
is `prevu.adapters.compose`.
"""

from prevu.compose.check import ComposeApp, ComposeService, Mount, check_model, env_suffix
from prevu.compose.write import Placement, split_limits, write_project

__all__ = [
    "ComposeApp",
    "ComposeService",
    "Mount",
    "Placement",
    "check_model",
    "env_suffix",
    "split_limits",
    "write_project",
]
