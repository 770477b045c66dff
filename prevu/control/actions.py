"""
The dashboard's actions on one preview: one table, verb -> handler.

Each `Action` names its verb (the last segment of
`POST /previews/{id}/{verb}`), its button, whether it is offered, and its
handler. A handler gets an `ActionContext` and answers a `Done`: a message
and, for a share link, the link. The CSRF token and the operator check run
before any handler (`prevu.control.dashboard`). To add a verb, add one line
to `ACTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from attrs import frozen

from prevu.control.operators import Keeper
from prevu.errors import RequestRefused
from prevu.ports import PreviewRecord
from prevu.units import parse_duration

SHARE_DEFAULT = "24h"
SHARE_MAX = 30 * 86400.0


class Operations(Protocol):
    """What the actions need of the orchestrator (`prevu.orchestrator.Orchestrator`)."""

    def redeploy(self, preview: str) -> bool: ...

    def destroy(self, preview: str, reason: str = ...) -> bool: ...

    def reset(self, preview: str) -> bool: ...


class ShareLinks(Protocol):
    """Signed share links (`prevu.control.login.LoginPages`)."""

    def share_link(self, host: str, duration: float) -> dict[str, Any]: ...


@frozen
class ActionContext:
    """Everything a handler may use: the preview, who acts, the form, the facades."""

    record: PreviewRecord
    user: str
    form: Callable[[str], str]
    orchestrator: Operations
    keeper: Keeper | None
    shares: ShareLinks | None


@frozen
class Done:
    """What an action did: a `message` for the user, and a `link` (a share URL)."""

    message: str
    link: str | None = None


def _duration(text: str, what: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise RequestRefused("malformed", f"bad {what} {text!r}: {error}") from None
    if not 0 < seconds <= SHARE_MAX:
        raise RequestRefused("malformed", f"{what} must be more than 0s and at most 30d")
    return seconds


def redeploy(context: ActionContext) -> Done:
    """Build the preview's current commit again; a closed preview is refused (409)."""
    record = context.record
    if record.closed:
        raise RequestRefused("conflict", f"{record.id} is closed: reopen the pull request")
    context.orchestrator.redeploy(record.id)
    return Done(f"Redeploying {record.id} at {record.sha[:12]}.")


def destroy(context: ActionContext) -> Done:
    """Tear the preview down (listed as stopped)."""
    record = context.record
    context.orchestrator.destroy(record.id, f"destroyed from the dashboard by {context.user}")
    return Done(f"Destroying {record.id}.")


def reset(context: ActionContext) -> Done:
    """Drop the preview's data and start its commit again (docs/data.md); 409 when it cannot."""
    record = context.record
    if not context.orchestrator.reset(record.id):
        raise RequestRefused("conflict", f"{record.id} cannot be reset: closed or never deployed")
    return Done(f"Resetting {record.id}: its data is dropped, on_push and seed run again.")


def share(context: ActionContext) -> Done:
    """A signed link that opens the preview without a login for `for` (default 24h)."""
    if context.shares is None:
        raise RequestRefused("unavailable", "share links need the login ([auth])")
    seconds = _duration(context.form("for") or SHARE_DEFAULT, "duration")
    link = context.shares.share_link(context.record.host, seconds)
    until = link["expires_at"]
    return Done(f"Share link for {context.record.id}, valid until {until}:", link["url"])


def keep(context: ActionContext) -> Done:
    """Keep the preview with no TTL (the orchestrator's keep facade)."""
    assert context.keeper is not None
    context.keeper.keep(context.record.id)
    return Done(f"{context.record.id} is kept until it is closed.")


def extend(context: ActionContext) -> Done:
    """Push the preview's TTL further by `by` (default 3d)."""
    assert context.keeper is not None
    seconds = _duration(context.form("by") or "3d", "extension")
    context.keeper.extend(context.record.id, seconds)
    return Done(f"{context.record.id} extended by {context.form('by') or '3d'}.")


def _always(keeper: Keeper | None) -> bool:
    return True


def _with_keeper(keeper: Keeper | None) -> bool:
    return keeper is not None


@frozen
class Action:
    """One verb of the table: its button, an optional form field, and when it is offered."""

    verb: str
    label: str
    run: Callable[[ActionContext], Done]
    danger: bool = False
    field: str | None = None
    field_label: str = ""
    field_default: str = ""
    offered: Callable[[Keeper | None], bool] = _always


ACTIONS: tuple[Action, ...] = (
    Action("redeploy", "Redeploy", redeploy),
    Action("destroy", "Destroy", destroy, danger=True),
    Action("reset", "Reset data", reset, danger=True),
    Action("share", "Share link", share, field="for", field_label="Valid for", field_default="24h"),
    Action("keep", "Keep", keep, offered=_with_keeper),
    Action("extend", "Extend", extend, field="by", field_label="By", field_default="3d",
           offered=_with_keeper),
)
"""The dashboard's verbs; keep/extend are offered only when a `Keeper` is wired."""


def offered(keeper: Keeper | None) -> list[Action]:
    """The actions to show (and accept) with `keeper`."""
    return [action for action in ACTIONS if action.offered(keeper)]
