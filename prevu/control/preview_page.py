"""
What the preview pages need when the control app runs without the API: the
store and the masker (`PreviewPage`), and a read-only view of the previews
in the store (`StoredPreviews`).

The pages themselves (`/previews/{id}`, `/previews/{id}/logs`) are the
dashboard's (`prevu.control.dashboard`); the control app builds its
dashboard from a `PreviewPage` when it has no API (`prevu.control.app`).
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define

from prevu.masking import Masker
from prevu.ports import PreviewRecord, Store


@define
class PreviewPage:
    """The store the preview pages read and the masker of their log lines and reasons."""

    store: Store
    mask: Masker = lambda line: line


@define
class StoredPreviews:
    """
    The previews as stored, for pages without an orchestrator: no live
    updates (`watch` never calls back) and no actions (each answers False).
    """

    store: Store

    def previews(self) -> list[PreviewRecord]:
        """Every stored preview, oldest first."""
        return self.store.list_previews()

    def get(self, preview: str) -> PreviewRecord | None:
        """One stored preview, or None."""
        return self.store.get(preview)

    def watch(self, callback: Callable[[PreviewRecord], None]) -> Callable[[], None]:
        """Nothing changes here: the returned stop does nothing."""
        return lambda: None

    def redeploy(self, preview: str) -> bool:
        """Not possible without an orchestrator: False."""
        return False

    def destroy(self, preview: str, reason: str = "") -> bool:
        """Not possible without an orchestrator: False."""
        return False

    def reset(self, preview: str) -> bool:
        """Not possible without an orchestrator: False."""
        return False
