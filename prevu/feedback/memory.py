"""
What feedback wants shown and what it last published, per pull request, kept
in `<state_dir>/feedback.json` (I/O edge: one small file, rewritten whole
with a rename so that a crash leaves the old or the new one, never half).

Kept outside the preview records on purpose: the comment id, the SHAs'
statuses and deployment ids, the build clock and the frozen log tail are the
forge's business, not the orchestrator's. After a restart the publisher
compares wanted with published and republishes the difference.
"""

from __future__ import annotations

import json
import os
from typing import Any

from attrs import asdict, define, field

from prevu.feedback.view import View

FILE_NAME = "feedback.json"
VERSION = 1


@define
class PrFeedback:
    """One pull request's feedback: wanted (`view`, `statuses`, `deployments`) and published."""

    forge: str
    repo: str
    number: int
    preview: str
    view: View | None = None
    tail: list[str] = field(factory=list)
    comment: int | None = None
    body: str | None = None
    """The comment body last published."""
    statuses: dict[str, list[str]] = field(factory=dict)
    """sha -> [state, description, target_url] wanted."""
    statuses_published: dict[str, list[str]] = field(factory=dict)
    deployments: dict[str, str] = field(factory=dict)
    """sha -> deployment state wanted."""
    deployments_published: dict[str, str] = field(factory=dict)
    deployment_ids: dict[str, int] = field(factory=dict)
    remove_environment: bool = False
    environment_removed: bool = False
    closed_at: float | None = None
    """When the pull request was seen closed (its entry is pruned a week later)."""
    replies: list[str] = field(factory=list)
    """The answers to the last `/preview` commands, newest last, shown in the comment."""
    shown_sha: str = ""
    """The head the published comment shows (pins `/preview approve` without a SHA)."""
    shown_at: float | None = None
    """When the published comment first showed `shown_sha` (epoch seconds)."""

    @property
    def key(self) -> str:
        """`forge:owner/name#n`, lower-cased repository."""
        return key_of(self.forge, self.repo, self.number)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self, recurse=False)
        data["view"] = asdict(self.view) if self.view is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrFeedback:
        """The inverse of `to_json`."""
        values = dict(data)
        view = values.pop("view", None)
        item = cls(**values)
        item.view = View(**view) if view else None
        return item


def key_of(forge: str, repo: str, number: int) -> str:
    """The memory key of a pull request."""
    return f"{forge}:{repo.lower()}#{number}"


@define
class FeedbackMemory:
    """The file of `PrFeedback` entries under `state_dir` (reactor thread only)."""

    state_dir: str
    items: dict[str, PrFeedback] = field(factory=dict)

    @property
    def path(self) -> str:
        """`<state_dir>/feedback.json`."""
        return os.path.join(self.state_dir, FILE_NAME)

    @classmethod
    def load(cls, state_dir: str) -> FeedbackMemory:
        """The memory stored in `state_dir`; empty when none or unreadable (converges anew)."""
        memory = cls(state_dir)
        try:
            with open(memory.path, encoding="utf-8") as handle:
                data = json.load(handle)
            for entry in data.get("prs", []):
                item = PrFeedback.from_json(entry)
                memory.items[item.key] = item
        except (OSError, ValueError, TypeError, KeyError):
            pass
        return memory

    def save(self) -> None:
        """Write every entry (a few KiB per pull request) and rename over the old file."""
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        temporary = self.path + ".tmp"
        data = {"version": VERSION, "prs": [item.to_json() for item in self.items.values()]}
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, separators=(",", ":"))
        os.replace(temporary, self.path)
