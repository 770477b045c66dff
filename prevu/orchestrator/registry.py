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
