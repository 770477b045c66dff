"""
What a pull request shows about its preview, decided from the stored record
(pure: attrs and the standard library; `now` is passed in).

The rule that keeps feedback quiet: the sticky comment is edited only when the
*visible* state changes (queued, building, running, failed, held, superseded,
awaiting approval, expired, removed). Sleeping, waking and restarts by
self-healing keep a running preview "running" (and a held one "held"); they
edit nothing.

"held": the head commit was *not deployed* because its `[data] on_push`
failed, and the previous commit keeps serving (docs/data.md). The preview's
status is then `running` with `error` set, but the pull request must not say
"ready" for a commit that never served: the view names the error and the
commit still serving, the commit status is a failure.

`next_view(record, previous, now)` is the whole rule; `commit_status` and
`deployment_state` map a view to what GitHub's statuses and deployments API
take (docs/forge.md shows each).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from attrs import frozen

from prevu.ports import PreviewRecord

Visible = Literal[
    "queued",
    "building",
    "running",
    "failed",
    "held",
    "superseded",
    "awaiting",
    "expired",
    "removed",
]
StatusState = Literal["pending", "success", "failure", "error"]
DeploymentState = Literal["queued", "in_progress", "success", "failure", "error", "inactive"]

STATUS_CONTEXT = "prevu"


@frozen
class View:
    """
    The visible state of one pull request's preview.

    `since` is when the current SHA started building (seconds since the
    epoch, for the duration) and `duration` the seconds its build and start
    took, known once running. `superseded` is the earlier SHA this one
    replaced before that one ran; `reason` why a build failed, why a "held"
    commit was not deployed (its `on_push` error), or why a preview was
    removed; `serving` the SHA still serving while `sha` is "held" (else None).
    """

    state: Visible
    sha: str
    url: str
    reason: str | None = None
    since: float | None = None
    duration: float | None = None
    superseded: str | None = None
    serving: str | None = None

    @property
    def short(self) -> str:
        """The SHA as shown: 7 hex digits."""
        return self.sha[:7]

    def shown(self) -> tuple[object, ...]:
        """What the comment shows of this view: two views that show the same edit nothing."""
        return (
            self.state,
            self.sha,
            self.url,
            self.reason,
            self.duration,
            self.superseded,
            self.serving,
        )


def _stored_state(record: PreviewRecord) -> dict[str, Any]:
    """The lifecycle state JSON of the record (`prevu.orchestrator.records`), or {}."""
    try:
        state = json.loads(record.data.get("state") or "{}")
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def _held_serving(record: PreviewRecord) -> str | None:
    """
    The SHA still serving when the record's target was not deployed because
    its `on_push` failed (the lifecycle's `held`, `Preview.holding`), else None.
    """
    state = _stored_state(record)
    serving = state.get("serving")
    if not state.get("held") or not isinstance(serving, dict):
        return None
    if state.get("failed") is None or state.get("failed") != state.get("target"):
        return None
    revision = serving.get("revision")
    sha = revision.get("sha") if isinstance(revision, dict) else None
    return sha if isinstance(sha, str) and sha else None


def _visible(record: PreviewRecord, previous: View | None) -> Visible:
    if record.closed:
        note = (record.data.get("detail") or "").lower()
        return "expired" if "expire" in note or "ttl" in note else "removed"
    # Records of release 7ee9a63 kept `awaiting` flat; later ones in the state JSON.
    if "awaiting" in record.data or _stored_state(record).get("awaiting"):
        return "awaiting"
    # Running (or asleep, or waking) on the previous commit: the head was not deployed.
    if _held_serving(record) is not None:
        return "held"
    same_sha = previous is not None and previous.sha == record.sha
    was_running = same_sha and previous is not None and previous.state == "running"
    match record.status:
        case "failed":
            return "failed"
        case "running":
            return "running"
        case "sleeping":
            return "running"
        case "starting":
            # A start after a build is part of building; a wake or a self-healing
            # restart of what already ran is not a visible change.
            return "running" if was_running else "building"
        case "building":
            return "building"
        case "queued":
            return "running" if was_running and record.data.get("clean") == "0" else "queued"
    return "removed"


def next_view(record: PreviewRecord, previous: View | None, now: float) -> View:
    """
    The view after `record` was written, given the view before it.

    A new SHA while the previous one was still queued or building supersedes
    it (the returned view names it); the build clock starts when a SHA is
    first seen building and stops when it first runs.
    """
    state = _visible(record, previous)
    sha = record.sha or (previous.sha if previous else "")
    reason = record.error if state in ("failed", "held") else None
    serving = _held_serving(record) if state == "held" else None
    if state in ("removed", "expired"):
        reason = record.data.get("detail")
    if previous is None or previous.sha != sha:
        superseded = None
        if previous is not None and previous.state in ("queued", "building", "awaiting"):
            superseded = previous.sha
        since = now if state == "building" else None
        # A SHA first seen running (adopted after a restart) has no known build time.
        return View(state, sha, record.url, reason, since, None, superseded, serving)
    since = previous.since
    duration = previous.duration
    if state == "building" and since is None:
        since = now
    if state == "running" and duration is None:
        duration = max(0.0, now - since) if since is not None else None
    if state in ("building", "queued"):
        duration = None
    return View(state, sha, record.url, reason, since, duration, previous.superseded, serving)


def commit_status(view: View) -> tuple[StatusState, str]:
    """The commit status (state, description) of the view's SHA, context `prevu`."""
    match view.state:
        case "queued":
            return "pending", "Preview queued"
        case "building":
            return "pending", "Building the preview"
        case "awaiting":
            return "pending", "Preview awaits approval by a maintainer"
        case "running":
            return "success", "Preview ready"
        case "failed":
            return "failure", _clip(f"Preview failed: {view.reason or 'unknown reason'}")
        case "held":
            still = f", {view.serving[:7]} still serves" if view.serving else ""
            return "failure", _clip(f"Not deployed{still}: {view.reason or 'on_push failed'}")
        case "superseded":
            return "error", "Preview superseded"
        case "expired":
            return "success", "Preview expired"
    return "success", "Preview removed"


def superseded_status(by: str) -> tuple[StatusState, str]:
    """The status of a SHA whose preview was replaced by `by` before it ran."""
    return "error", f"Superseded by {by[:7]}"


def deployment_state(view: View) -> DeploymentState | None:
    """The deployment status for the view's SHA, or None when there is none yet."""
    match view.state:
        case "building":
            return "in_progress"
        case "running":
            return "success"
        case "failed" | "held":
            return "failure"
        case "removed" | "expired" | "superseded":
            return "inactive"
    return None


def environment(number: int) -> str:
    """The GitHub environment of pull request `number`: `pr-<n>`."""
    return f"pr-{number}"


def _clip(text: str, limit: int = 140) -> str:
    # GitHub refuses status descriptions over 140 characters.
    return text if len(text) <= limit else text[: limit - 1] + "…"
