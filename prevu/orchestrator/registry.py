"""
The registry of previews: one `Slot` per preview, how slots are found and named,
and the `CancelToken` that stops a preview's job.

Reactor thread only. A slot holds who the preview is (forge, repository,
number), its name, its lifecycle state and its mailbox; the registry maps
ids and (forge, repository, number) keys to slots. Nothing here carries out
anything: the driver feeds slots, the jobs work on them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Iterator
from typing import Any, Literal, TypeVar

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

from prevu import lifecycle as lc
from prevu.forge.events import PullRequest
from prevu.labels import Identity
from prevu.naming import PreviewName, preview_label
from prevu.orchestrator.settings import OrchestratorSettings
from prevu.runtime import Built

T = TypeVar("T")
CLOSED_UNKNOWN_KEPT = 10_000
Access = Literal["private", "public"]


class Superseded(Exception):
    """The job's revision is no longer wanted (newer commit, close, cancel)."""


@define
class CancelToken:
    """Cancels one job: the awaited step is cancelled and the next check raises Superseded."""

    revision: lc.Revision | None
    cancelled: bool = False
    current: Deferred[Any] | None = None

    def cancel(self) -> None:
        """Cancel the step in flight; every later `check` or `wait` raises Superseded."""
        self.cancelled = True
        if self.current is not None:
            self.current.cancel()

    def check(self) -> None:
        """Raise Superseded once cancelled."""
        if self.cancelled:
            raise Superseded()

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` as the cancellable step; a cancel raises Superseded."""
        self.check()
        deferred: Deferred[T] = ensureDeferred(awaitable)  # type: ignore[arg-type]
        self.current = deferred
        try:
            return await deferred
        except CancelledError:
            raise Superseded() from None
        finally:
            self.current = None


@define(eq=False)
class Slot:
    """One preview: who it is, where it lives, its lifecycle state and its mailbox."""

    identity: Identity
    name: PreviewName
    branch: str
    clone_url: str
    ref: str
    access: Access
    created_at: float
    updated_at: float
    state: lc.Preview = field(factory=lc.Preview)
    built: dict[str, Built] = field(factory=dict)
    """Image id → what was built into it (its app model), for start and resume."""
    token: CancelToken | None = None
    epoch: int = 0
    mailbox: deque[lc.Event] = field(factory=deque)
    busy: bool = False
    forge_seen: float = 0.0
    """The newest forge `updated_at` (epoch seconds) of the events applied to this PR."""
    forge_closed: float | None = None
    """The forge `updated_at` of the close applied last (None: not closed by the forge)."""
    untrusted: bool = False
    """A fork admitted by `forks = "allow"`: it gets no secrets, build secrets or cache."""
    seeded: bool = False
    """`[data] seed` ran since the preview's volumes were made (kept in the record)."""
    wipe: bool = False
    """A reset was asked for: the next build first removes the preview's data (docs/data.md)."""
    keep_until: float | None = None
    """Epoch seconds before which idle rules never remove it (`inf`: kept); None: ttl rules."""

    def stale(self, pr: PullRequest) -> bool:
        """True when `pr` (an event's view) is older than an event already applied."""
        return pr.updated_at is not None and pr.updated_at < self.forge_seen

    def reopened(self, pr: PullRequest) -> bool:
        """
        True when the slot was closed by the forge and `pr`, an open view of
        it, is newer than that close: the pull request was reopened since (its
        `reopened` delivery may be late or lost).
        """
        closed_at = self.forge_closed
        return (
            self.state.closed
            and pr.open
            and closed_at is not None
            and pr.updated_at is not None
            and pr.updated_at > closed_at
        )

    def tied(self, pr: PullRequest) -> bool:
        """
        True when `pr` is as new as the newest event applied (the forge's
        `updated_at` has a one-second resolution) but names another SHA than
        the target: only the repository can tell which is the head.
        """
        target = self.state.target
        return (
            pr.updated_at is not None
            and pr.updated_at == self.forge_seen
            and target is not None
            and target.sha != pr.sha
            and not self.state.closed
        )

    def saw(self, pr: PullRequest) -> None:
        """Note that an event with `pr`'s `updated_at` was applied."""
        if pr.updated_at is not None:
            self.forge_seen = max(self.forge_seen, pr.updated_at)

    @property
    def id(self) -> str:
        return self.identity.preview

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.identity.forge, self.identity.repo.lower(), self.identity.number)


@define
class Registry:
    """The slots by id and by (forge, lower-cased repository, number)."""

    settings: OrchestratorSettings
    _slots: dict[str, Slot] = field(factory=dict)
    _keys: dict[tuple[str, str, int], str] = field(factory=dict)
    _closed_unknown: dict[tuple[str, str, int], float] = field(factory=dict)
    """Closes of pull requests without a slot (key → forge updated_at); bounded, in memory."""

    def __iter__(self) -> Iterator[Slot]:
        return iter(list(self._slots.values()))

    def __contains__(self, preview: str) -> bool:
        return preview in self._slots

    def get(self, preview: str) -> Slot | None:
        """The slot of `preview`, or None."""
        return self._slots.get(preview)

    def add(self, slot: Slot) -> None:
        """Register `slot` (a new or restored preview)."""
        self._slots[slot.id] = slot
        self._keys[slot.key] = slot.id

    def find(self, forge: str, repo: str, number: int) -> Slot | None:
        """The slot of a pull request, or None."""
        preview = self._keys.get((forge, repo.lower(), number))
        return self._slots.get(preview) if preview else None

    def note_close(self, pr: PullRequest) -> None:
        """Remember a close of a pull request that has no slot, so older events stay stale."""
        if pr.updated_at is None:
            return
        key = (pr.forge, pr.repo.lower(), pr.number)
        self._closed_unknown[key] = max(self._closed_unknown.get(key, 0.0), pr.updated_at)
        while len(self._closed_unknown) > CLOSED_UNKNOWN_KEPT:
            del self._closed_unknown[next(iter(self._closed_unknown))]

    def stale(self, pr: PullRequest) -> bool:
        """True when `pr` (an event's view) is older than what prevu knows of the PR."""
        slot = self.find(pr.forge, pr.repo, pr.number)
        if slot is not None:
            return slot.stale(pr)
        closed = self._closed_unknown.get((pr.forge, pr.repo.lower(), pr.number))
        return closed is not None and pr.updated_at is not None and pr.updated_at <= closed

    def has_room(self, slot: Slot) -> bool:
        """True when `slot` holds resources already or fewer than `max_previews` do."""
        if slot.state.active:
            return True
        active = sum(1 for other in self._slots.values() if other.state.active)
        return active < self.settings.max_previews

    def local_number(self, repo: str, branch: str) -> int:
        """The number of `prevu up` previews: one per branch, counted per repository."""
        local = [
            slot
            for slot in self._slots.values()
            if slot.identity.forge == "local" and slot.identity.repo.lower() == repo.lower()
        ]
        for slot in local:
            if slot.ref == f"refs/heads/{branch}":
                return slot.identity.number
        return max((slot.identity.number for slot in local), default=0) + 1

    def free_label(self, forge: str, repo: str, number: int, branch: str) -> str:
        """
        A preview id no slot holds, for the pull request (`forge`, `repo`, `number`).

        The template's label when it is free; else the label salted with the
        pull request's own key (forge, lower-cased repository, number), so that
        two pull requests the template cannot tell apart (`{branch}` with
        `fix/login` and `fix_login`, two repositories that fold alike, unicode
        folded away) never share an id, a host or a Docker object name. A salted
        label that is taken too (a 24-bit hash collision) is salted again with
        a counter. Ids of slots restored from the store are never recomputed:
        the host of a running preview does not change.
        """
        template = self.settings.label_template
        label = preview_label(template, repo, number, branch)
        key = f"{forge}:{repo.lower()}#{number}"
        attempt = 0
        while label in self._slots:
            salt = key if attempt == 0 else f"{key}/{attempt}"
            label = preview_label(template, repo, number, branch, salt=salt)
            attempt += 1
        return label

    def slot_for(self, pr: PullRequest, access: Access, now: float) -> Slot:
        """The pull request's slot, made (and named) on its first deploy."""
        slot = self.find(pr.forge, pr.repo, pr.number)
        if slot is not None:
            slot.clone_url, slot.ref, slot.branch = pr.clone_url, pr.ref, pr.branch
            return slot
        label = self.free_label(pr.forge, pr.repo, pr.number, pr.branch)
        identity = Identity(self.settings.instance, label, pr.repo, pr.number, pr.forge)
        slot = Slot(
            identity, self.settings.name(label), pr.branch, pr.clone_url, pr.ref, access, now, now
        )
        self.add(slot)
        return slot
