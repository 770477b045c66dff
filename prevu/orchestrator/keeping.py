"""
The orchestrator's facade for `/preview` commands and the API: keep,
extend, approve a pinned commit, find a pull request's preview (issue 16).

A mixin of `Orchestrator` (engine.py stays small): it works on the same
registry, driver and clock. `keep_until` (epoch seconds, `inf` for "keep")
lives in the slot and in its record (`data["keep_until"]`); the idle rules
(`prevu.idle`) never remove a preview before it. Reactor thread only.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Any

from prevu import lifecycle as lc
from prevu.orchestrator.driver import Driver
from prevu.orchestrator.registry import Registry, Slot


class Keeping:
    """keep / extend / approve_commit / find_preview / background, for the orchestrator."""

    registry: Registry
    driver: Driver
    clock: Any

    def find_preview(self, forge: str, repo: str, number: int) -> str | None:
        """The id of pull request `repo#number`'s preview on `forge`, or None."""
        slot = self.registry.find(forge, repo, number)
        return slot.id if slot is not None else None

    def _kept(self, preview: str, until: float) -> float | None:
        slot: Slot | None = self.registry.get(preview)
        if slot is None:
            return None
        slot.keep_until = until
        self.driver.save(slot)
        return until

    def keep(self, preview: str) -> float | None:
        """
        Never remove `preview` for being idle (`previews.ttl`); it may still
        sleep. Answers the new `keep_until` (`inf`), None when unknown.
        """
        return self._kept(preview, math.inf)

    def extend(self, preview: str, seconds: float) -> float | None:
        """
        Keep `preview` at least `seconds` longer: `keep_until` becomes
        `max(now, keep_until) + seconds` (epoch seconds, answered), so that
        extending twice adds up. None when unknown; ValueError when
        `seconds` is not positive.
        """
        if not seconds > 0 or math.isinf(seconds):
            raise ValueError("extend needs a positive, finite duration")
        slot = self.registry.get(preview)
        if slot is None:
            return None
        start = max(self.clock.seconds(), slot.keep_until or 0.0)
        return self._kept(preview, start + seconds)

    def awaiting(self, preview: str) -> str | None:
        """The SHA of the fork commit awaiting approval, or None."""
        slot = self.registry.get(preview)
        revision = slot.state.awaiting if slot is not None else None
        return revision.sha if revision is not None else None

    def approve_commit(self, preview: str, sha: str, by: str) -> str | None:
        """
        Approve the fork commit `sha` (the full SHA) of `preview`, and only
        that one: None when done, else why not (nothing awaits, or another
        commit awaits now). Checked and fed on the same reactor turn, so a
        push in between cannot slip another commit in.
        """
        slot = self.registry.get(preview)
        awaiting = slot.state.awaiting if slot is not None else None
        if slot is None or awaiting is None:
            return "nothing awaits approval"
        if awaiting.sha != sha:
            return f"commit {sha[:12]} does not await approval (the head is {awaiting.sha[:12]})"
        self.driver.feed(slot, lc.Approve(by))
        return None

    def background(self, coroutine: Awaitable[None]) -> None:
        """Run `coroutine` as one of the orchestrator's tracked tasks (`idle()` waits for it)."""
        self.driver.background(coroutine)
