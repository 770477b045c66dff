"""
Idle previews: put to sleep after `sleep_after`, destroyed after `ttl`.

`idle_actions` is the pure rule; `IdleService` runs it on the injected clock
with the proxy's record of the last request per preview. Activity is the
later of the last request through the proxy and the last deploy (a preview's
`updated_at` while it is being built or run). A preview asleep keeps the
activity it had when it went to sleep, so `ttl` counts from the last real use.
A preview kept (`/preview keep`, `/preview extend`, the API's keep and
extend) carries `keep_until` in its record: it is never destroyed before
then (`inf`: never), though it may still sleep (it wakes on a request).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Literal, Protocol

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from prevu.ports import PreviewRecord
from prevu.units import format_duration

log = Logger()

ACTIVE = frozenset({"queued", "building", "starting", "running"})


@frozen
class IdleAction:
    """Put one preview to sleep, or destroy it."""

    kind: Literal["sleep", "destroy"]
    preview: str
    idle_for: float


def note_activity(
    known: MutableMapping[str, float],
    previews: Iterable[PreviewRecord],
    last_request: Mapping[str, float],
) -> None:
    """Bring `known` (preview id -> last activity) up to date."""
    for record in previews:
        latest = max(known.get(record.id, 0.0), last_request.get(record.id, 0.0))
        if record.status in ACTIVE or record.id not in known:
            latest = max(latest, record.updated_at)
        known[record.id] = latest


def keep_until(record: PreviewRecord) -> float | None:
    """The record's `keep_until` (epoch seconds, `inf` for kept), or None."""
    text = record.data.get("keep_until")
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def idle_actions(
    previews: Iterable[PreviewRecord],
    activity: Mapping[str, float],
    now: float,
    sleep_after: float,
    ttl: float,
) -> list[IdleAction]:
    """
    What to do with idle previews now; `0` for either limit means never. A
    preview whose `keep_until` is later than `now` is never destroyed.
    """
    actions: list[IdleAction] = []
    for record in previews:
        if record.closed or record.status == "stopped":
            continue
        idle_for = now - activity.get(record.id, record.updated_at)
        kept = (keep_until(record) or 0.0) > now
        if ttl and idle_for >= ttl and not kept:
            actions.append(IdleAction("destroy", record.id, idle_for))
        elif sleep_after and record.status == "running" and idle_for >= sleep_after:
            actions.append(IdleAction("sleep", record.id, idle_for))
    return actions


class IdlePreviews(Protocol):
    """What the idle service needs of the orchestrator."""

    def previews(self) -> list[PreviewRecord]: ...

    def sleep(self, preview: str) -> None: ...

    def destroy(self, preview: str, reason: str = ...) -> bool: ...


class IdleService(Service):
    """Checks for idle previews every `interval` seconds on `clock`."""

    def __init__(
        self,
        clock: Any,
        previews: IdlePreviews,
        last_request: Mapping[str, float],
        sleep_after: float,
        ttl: float,
    ) -> None:
        self.clock = clock
        self.orchestrator = previews
        self.last_request = last_request
        self.sleep_after = sleep_after
        self.ttl = ttl
        self.activity: dict[str, float] = {}
        limits = [limit for limit in (sleep_after, ttl) if limit]
        self.interval = min(60.0, max(1.0, min(limits) / 4)) if limits else 0.0
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        if self.interval:
            self._loop = LoopingCall(self.check)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return None

    def check(self) -> list[IdleAction]:
        """Sleep or destroy what has been idle too long; returns what was done."""
        previews = self.orchestrator.previews()
        note_activity(self.activity, previews, self.last_request)
        now = self.clock.seconds()
        actions = idle_actions(previews, self.activity, now, self.sleep_after, self.ttl)
        for action in actions:
            idle = format_duration(round(action.idle_for))
            if action.kind == "sleep":
                log.info(
                    "preview {preview} idle for {idle}: sleeping", preview=action.preview, idle=idle
                )
                self.orchestrator.sleep(action.preview)
            else:
                log.info(
                    "preview {preview} idle for {idle}: destroying",
                    preview=action.preview,
                    idle=idle,
                )
                self.orchestrator.destroy(action.preview, f"idle for {idle} (previews.ttl)")
        return actions
