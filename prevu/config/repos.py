"""
The `[[repos]]` entries: which repositories are served, and how.

Pure core: values and their reader.
"""

from __future__ import annotations

from typing import Literal

from attrs import frozen

from prevu.config.reader import Table
from prevu.routing import Access


@frozen
class RepoConfig:
    """One `[[repos]]` entry: which repository is served, and how."""

    name: str
    access: Access = "private"
    trigger: Literal["auto", "label"] = "auto"
    forks: Literal["approve", "deny", "allow"] = "approve"
    comment_logs: bool | None = None
    """Log tail in PR comments: None means only when the repository is private on the forge."""


def parse_repo(t: Table) -> RepoConfig:
    """One `[[repos]]` entry; `name` is a forge path like owner/name."""
    config = RepoConfig(
        name=t.required("name").strip("/"),
        access=t.choice("access", "private", ("private", "public")),
        trigger=t.choice("trigger", "auto", ("auto", "label")),
        forks=t.choice("forks", "approve", ("approve", "deny", "allow")),
        comment_logs=t.boolean("comment_logs", False) if t.has("comment_logs") else None,
    )
    if "/" not in config.name:
        raise t.error("name", f"expected a forge path like owner/name, got {config.name!r}")
    t.finish()
    return config
