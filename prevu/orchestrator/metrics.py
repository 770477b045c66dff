"""
Counters and gauges of the orchestrator and webhooks, in Prometheus text format.

Deliberately tiny: a few labelled counters kept in dicts and rendered by
hand (exposition format 0.0.4), so that /metrics needs no dependency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from attrs import define, field

HELP = {
    "prevu_webhooks_total": ("counter", "Webhook deliveries by forge and outcome."),
    "prevu_builds_total": ("counter", "Finished image builds by result."),
    "prevu_build_seconds_total": ("counter", "Time spent in image builds (fetch + build)."),
    "prevu_deploys_total": ("counter", "Route switches to a new container."),
    "prevu_docker_retries_total": ("counter", "Docker calls retried because the engine was down."),
    "prevu_reconciles_total": ("counter", "Reconcile passes by result."),
    "prevu_heals_total": ("counter", "Self-healing: containers restarted (heal) or given up on."),
    "prevu_previews": ("gauge", "Previews by status."),
    "prevu_proxy_requests_total": ("counter", "Requests the proxy sent to an upstream."),
    "prevu_proxy_connections": ("gauge", "Open client connections to the proxy."),
    "prevu_proxy_upstream_connects_total": ("counter", "Upstream connections opened."),
    "prevu_proxy_upstream_idle": ("gauge", "Idle pooled upstream connections."),
}

Sample = tuple[str, Mapping[str, str], float]


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    escaped = (
        f'{key}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for key, value in sorted(labels.items())
    )
    return "{" + ",".join(escaped) + "}"


@define
class Metrics:
    """The counters; `render` adds the gauges it is given."""

    counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = field(factory=Counter)
    # Other parts' figures (the proxy's), read at each render.
    sources: list[Callable[[], Iterable[Sample]]] = field(factory=list)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to counter `name` with `labels`."""
        self.counters[(name, tuple(sorted(labels.items())))] += amount  # type: ignore[assignment]

    def value(self, name: str, **labels: str) -> float:
        """The current value of one counter (0 when never incremented)."""
        return float(self.counters.get((name, tuple(sorted(labels.items()))), 0))

    def render(self, gauges: Iterable[tuple[str, Mapping[str, str], float]] = ()) -> str:
        """Prometheus text exposition of every counter plus `gauges`."""
        samples: dict[str, list[str]] = {}
        for (counter, pairs), count in sorted(self.counters.items()):
            samples.setdefault(counter, []).append(f"{counter}{_labels(dict(pairs))} {count:g}")
        extra = [sample for source in self.sources for sample in source()]
        for name, labels, value in [*gauges, *extra]:
            samples.setdefault(name, []).append(f"{name}{_labels(labels)} {value:g}")
        lines: list[str] = []
        for name in sorted(samples):
            kind, text = HELP.get(name, ("untyped", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples[name]]
        return "\n".join(lines) + "\n"
