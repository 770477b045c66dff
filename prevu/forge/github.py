"""
GitHub webhooks: signature verification and parsing.

Pure core. `verify_signature` checks `X-Hub-Signature-256` (an HMAC-SHA256 of
the raw body with the webhook secret) in constant time; `parse` turns a
verified body into a typed event or raises `RequestRefused("malformed", ...)`.
`GitHub` is this forge behind the `prevu.forge.base.Forge` Protocol: clones
authenticate as `x-access-token` with `[github] token`; `/preview` comments
become `Command`s whose author's permission is asked of GitHub when they run.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from prevu.config import Config
from prevu.forge.base import Delivery, load_json, malformed, require_headers
from prevu.forge.events import (
    ForgeEvent,
    Ignored,
    Ping,
    PullRequest,
    PullRequestAction,
    PullRequestEvent,
    command_event,
    forge_time,
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


def parse(event: str, delivery: str, body: bytes) -> ForgeEvent:
    """A verified GitHub delivery as a typed event; RequestRefused("malformed") when malformed."""
    data = load_json(body)
    try:
        if event == "ping":
            return Ping(delivery, "github")
        if event == "pull_request":
            return _pull_request_event(delivery, data)
        if event == "issue_comment":
            return _comment(delivery, data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise malformed(event, error) from None
    return Ignored(delivery, "github", f"event {event!r} is not used")


def _pull_request_event(delivery: str, data: Mapping[str, Any]) -> ForgeEvent:
    raw_action = str(data["action"])
    action = PULL_REQUEST_ACTIONS.get(raw_action)
    if action is None:
        return Ignored(delivery, "github", f"pull_request action {raw_action!r} is not used")
    installation = (data.get("installation") or {}).get("id")
    return PullRequestEvent(
        delivery,
        action,
        pull_request(data),
        raw_action,
        installation=int(installation) if installation is not None else None,
    )


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
        updated_at=forge_time(pr.get("updated_at")),
    )


def _comment(delivery: str, data: Mapping[str, Any]) -> ForgeEvent:
    # Only `created` runs: an edited comment never does (its command was read, or
    # the edit would let anyone who can edit a comment re-run a maintainer's).
    if data["action"] != "created":
        return Ignored(delivery, "github", f"issue_comment action {data['action']!r} is not used")
    issue = data["issue"]
    if not issue.get("pull_request"):
        return Ignored(delivery, "github", "comment on an issue, not a pull request")
    comment = data["comment"]
    user = comment["user"]
    return command_event(
        delivery,
        "github",
        repo=str(data["repository"]["full_name"]),
        number=int(issue["number"]),
        commenter=str(user["login"]),
        body=str(comment.get("body") or ""),
        commenter_id=int(user.get("id") or 0),
        comment=int(comment.get("id") or 0),
        created_at=forge_time(comment.get("created_at")),
    )


@frozen
class GitHub:
    """GitHub behind the `Forge` Protocol (`POST /webhooks/github`, `[github]`)."""

    name: str = "github"
    clone_username: str = "x-access-token"
    """GitHub's user name for App installation tokens; personal tokens accept it too."""

    def webhook_secret(self, config: Config) -> str | None:
        return config.github.webhook_secret

    def webhooks_off(self) -> str:
        return "GitHub webhooks are off: set [github] webhook_secret"

    def verify(self, secret: str, delivery: Delivery) -> str | None:
        if verify_signature(secret, delivery.body, delivery.header("x-hub-signature-256")):
            return None
        return "bad or missing X-Hub-Signature-256"

    def parse(self, delivery: Delivery) -> ForgeEvent:
        event, delivery_id = require_headers(
            delivery,
            ("x-github-event", "x-github-delivery"),
            "missing X-GitHub-Event or X-GitHub-Delivery",
        )
        return parse(event, delivery_id, delivery.body)

    def clone_token(self, config: Config) -> str | None:
        return config.github.token

    def fork_approval(self) -> str | None:
        return None
