"""A fake HealthChecker for the orchestrator's unit tests."""

from __future__ import annotations

from attrs import define, field

from prevu.routing import Upstream
from prevu.runtime import HealthChecker


@define
class FakeHealth:
    """Answers from `unhealthy` (upstream hosts that never pass); records every probe."""

    unhealthy: set[str] = field(factory=set)
    probes: list[tuple[Upstream, str | None, str]] = field(factory=list)

    async def check(self, upstream: Upstream, path: str | None, host: str) -> bool:
        self.probes.append((upstream, path, host))
        return upstream.host not in self.unhealthy


def _conforms(health: FakeHealth) -> HealthChecker:
    """mypy checks here that the fake satisfies the Protocol."""
    return health
