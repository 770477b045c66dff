"""
GitHub webhooks: signature verification and parsing.

Pure core. `verify_signature` checks `X-Hub-Signature-256` (an HMAC-SHA256 of
the raw body with the webhook secret) in constant time; `parse` turns a
verified body into a typed event or raises `WebhookError(400, ...)`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from prevu.errors import WebhookError
from prevu.forge.events import (
    ApproveCommand,
    ForgeEvent,
    Ignored,
    Ping,
    PullRequest,
    PullRequestAction,
    PullRequestEvent,
    parse_command,
)

SIGNATURE_PREFIX = "sha256="
PULL_REQUEST_ACTIONS: Mapping[str, PullRequestAction] = {
    "opened": "open",
    "reopened": "open",
    "synchronize": "push",
    "closed": "close",
    "labeled": "labels",
    "unlabeled": "labels",
}


def sign(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body` (used by tests and bench)."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """True when `header` is the HMAC-SHA256 of `body` under `secret`, compared in constant time."""
    if not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    expected = sign(secret, body).encode()
    return hmac.compare_digest(expected, header.strip().encode("ascii", "replace"))


def load_json(body: bytes) -> Mapping[str, Any]:
    """The JSON object in `body`, or WebhookError(400)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise WebhookError(400, f"body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise WebhookError(400, "body is not a JSON object")
    return data


def parse(event: str, delivery: str, body: bytes) -> ForgeEvent:
    """A verified GitHub delivery as a typed event; WebhookError(400) when malformed."""
    data = load_json(body)
    try:
        if event == "ping":
            return Ping(delivery, "github")
        if event == "pull_request":
            return _pull_request_event(delivery, data)
        if event == "issue_comment":
            return _comment(delivery, data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise WebhookError(400, f"malformed {event} payload: {_describe(error)}") from None
    return Ignored(delivery, "github", f"event {event!r} is not used")


def _describe(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error.args[0]!r}"
    return str(error)


def _pull_request_event(delivery: str, data: Mapping[str, Any]) -> ForgeEvent:
    raw_action = str(data["action"])
    action = PULL_REQUEST_ACTIONS.get(raw_action)
    if action is None:
        return Ignored(delivery, "github", f"pull_request action {raw_action!r} is not used")
    return PullRequestEvent(delivery, action, pull_request(data), raw_action)


def pull_request(data: Mapping[str, Any]) -> PullRequest:
    """The PullRequest of a `pull_request` payload (SPEC §4: clone the base repo's ref)."""
    pr = data["pull_request"]
    number = int(data.get("number", pr["number"]))
    base_repo = pr["base"]["repo"]
    head_repo = pr["head"].get("repo")
    # A deleted fork has no head repo any more; it is still not the base repo.
    fork = head_repo is None or head_repo["full_name"].lower() != base_repo["full_name"].lower()
    return PullRequest(
        forge="github",
        repo=str(base_repo["full_name"]),
        number=number,
        sha=str(pr["head"]["sha"]).lower(),
        branch=str(pr["head"]["ref"]),
        clone_url=str(base_repo["clone_url"]),
        ref=f"refs/pull/{number}/head",
        fork=fork,
        labels=tuple(str(label["name"]) for label in pr.get("labels") or ()),
        title=str(pr.get("title") or ""),
        author=str((pr.get("user") or {}).get("login") or ""),
        open=pr.get("state", "open") == "open",
    )


def _comment(delivery: str, data: Mapping[str, Any]) -> ForgeEvent:
    if data["action"] != "created":
        return Ignored(delivery, "github", f"issue_comment action {data['action']!r} is not used")
    issue = data["issue"]
    if not issue.get("pull_request"):
        return Ignored(delivery, "github", "comment on an issue, not a pull request")
    comment = data["comment"]
    command = parse_command(str(comment.get("body") or ""))
    if command is None:
        return Ignored(delivery, "github", "comment has no /preview command")
    if command != "approve":
        return Ignored(delivery, "github", f"unknown command /preview {command}")
    return ApproveCommand(
        delivery=delivery,
        forge="github",
        repo=str(data["repository"]["full_name"]),
        number=int(issue["number"]),
        commenter=str(comment["user"]["login"]),
        association=str(comment.get("author_association") or "NONE"),
    )
