"""
The self-healing rules (issue 15): when to start a preview's container again, and when to give up.

Pure core (attrs and the standard library): the reconcile plan
(`prevu.orchestrator.reconcile`) asks `decide` about each awake preview's
serving container, with what the runtime's `observe()` says of it and the
preview's `Tally`; the runner (`prevu.orchestrator.reconciler`) keeps the
tallies between passes and carries out the answer.

The rules:

- A container that runs, or that the engine is restarting itself (Docker's
  `on-failure` policy, state `restarting`), is left alone; the engine's own
  restarts are counted from its `RestartCount` (what grew since the last
  pass; a count that went down was reset by a `docker start`).
- A container that exited (crash, OOM kill, `docker kill`, a daemon restart
  that did not bring it back) is started again (`restart`); one that is
  gone (`docker rm -f`) is created again from its image (`recreate`).
- Each restart, the engine's or prevu's, is counted at the time it was seen;
  once `limit` restarts were counted within the last `window` seconds, the
  next one is not made: the preview fails (`give-up`) with the exit code,
  "out of memory (limit 512m)" when the kernel killed it for its memory
  limit, and how often it was restarted. `limit = 0` never restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from attrs import field, frozen, validators

from prevu.runtime import Observed

Action = Literal["leave", "restart", "recreate", "give-up"]
WAITING = frozenset({"running", "restarting", "paused", "removing"})
"""Container states in which prevu does nothing (it serves, or the engine is on it)."""


def _int_mapping(value: Mapping[str, int] | None) -> dict[str, int]:
    return dict(value or {})


@frozen
class HealRules:
    """`[previews] restart_limit` (restarts) and `restart_window` (seconds)."""

    limit: int = field(default=3, validator=validators.ge(0))
    window: float = field(default=600.0, validator=validators.gt(0))


@frozen
class Tally:
    """
    One preview's restarts: `restarts` are the times (seconds, the clock's)
    at which a restart was seen or made, oldest first; `counts` is the
    engine's `RestartCount` of each container at the last pass.
    """

    restarts: tuple[float, ...] = ()
    counts: Mapping[str, int] = field(factory=dict, converter=_int_mapping)

    def recent(self, now: float, window: float) -> tuple[float, ...]:
        """The restarts within `window` seconds before `now`."""
        return tuple(at for at in self.restarts if now - at < window)

    def seen(self, container: str, restart_count: int, now: float) -> Tally:
        """The tally after the engine reported `restart_count` for `container` at `now`."""
        before = self.counts.get(container, 0)
        grown = restart_count - before if restart_count >= before else restart_count
        return Tally(
            self.restarts + (now,) * grown,
            {**self.counts, container: restart_count},
        )

    def restarted(self, now: float) -> Tally:
        """The tally after prevu restarted (or recreated) the container at `now`."""
        return Tally((*self.restarts, now), self.counts)

    def pruned(self, now: float, window: float, containers: frozenset[str]) -> Tally:
        """Only the restarts within the window and the counts of `containers`."""
        counts = {c: n for c, n in self.counts.items() if c in containers}
        return Tally(self.recent(now, window), counts)


@frozen
class Decision:
    """What to do about one serving container, why (for the user), and the new tally."""

    action: Action
    reason: str
    tally: Tally


def format_size(size: int) -> str:
    """Bytes the way the config writes them: 536870912 -> "512m", 1 << 30 -> "1g"."""
    for unit, shift in (("g", 30), ("m", 20), ("k", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return f"{size}b"


def format_window(seconds: float) -> str:
    """A window the way the config writes it: 600 -> "10m", 90 -> "90s"."""
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length and seconds % length == 0:
            return f"{int(seconds // length)}{unit}"
    return f"{seconds:g}s"


def what_happened(container: str, observed: Observed | None) -> str:
    """
    A one-line account of a container that is not running: removed, or
    exited with its code, "out of memory (limit 64m)" when OOM-killed.
    """
    if observed is None:
        return f"container {container[:12]} was removed"
    if observed.oom_killed:
        limit = f" (limit {format_size(observed.memory)})" if observed.memory else ""
        code = observed.exit_code if observed.exit_code is not None else 137
        return f"container {container[:12]} exited with code {code}: out of memory{limit}"
    if observed.exit_code is not None:
        return f"container {container[:12]} exited with code {observed.exit_code}"
    return f"container {container[:12]} is {observed.state or 'stopped'}"


def decide(
    container: str, observed: Observed | None, tally: Tally, rules: HealRules, now: float
) -> Decision:
    """
    What to do about the serving `container` of an awake preview, given what
    the engine says of it now (`observed`; None: it is gone). See the module
    docstring for the rules.
    """
    if observed is not None:
        tally = tally.seen(container, observed.restart_count, now)
        if observed.state in WAITING:
            return Decision("leave", "", tally)
    happened = what_happened(container, observed)
    recent = tally.recent(now, rules.window)
    if len(recent) >= rules.limit:
        if rules.limit == 0:
            why = f"{happened}; not restarted ([previews] restart_limit = 0)"
        else:
            why = (
                f"{happened}; restarted {len(recent)} times within "
                f"{format_window(rules.window)} (restart_limit {rules.limit}): gave up"
            )
        return Decision("give-up", why, tally)
    action: Action = "recreate" if observed is None else "restart"
    verb = "recreating it" if observed is None else "restarting it"
    attempt = f"{verb} ({len(recent) + 1} of {rules.limit} within {format_window(rules.window)})"
    return Decision(action, f"{happened}; {attempt}", tally.restarted(now))
