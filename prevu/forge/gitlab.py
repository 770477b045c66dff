"""
GitLab webhooks: token check and parsing.

Pure core. GitLab sends the configured secret as `X-Gitlab-Token`; it is
compared in constant time. Merge Request Hooks become pull request events,
Note Hooks on merge requests with a `/preview` line become commands, whose
author's membership is asked of GitLab's API when they run (so
`forks = "approve"` works: a Developer or above approves).
`GitLab` is this forge behind the `prevu.forge.base.Forge` Protocol: clones
authenticate as `oauth2` with `[gitlab] token` (GitLab documents `oauth2` as
the user name for OAuth tokens over HTTPS, and personal, project and group
access tokens accept it too).
"""

from __future__ import annotations

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

MERGE_REQUEST_ACTIONS: Mapping[str, PullRequestAction] = {
    "open": "open",
    "reopen": "open",
    "update": "push",
    "close": "close",
    "merge": "close",
}


def verify_token(expected: str, header: str | None) -> bool:
    """True when `header` equals the configured token, compared in constant time."""
    if header is None:
        return False
    return hmac.compare_digest(expected.encode(), header.encode("utf-8", "replace"))


def parse(event: str, delivery: str, body: bytes) -> ForgeEvent:
    """A verified GitLab delivery as a typed event; RequestRefused("malformed") when malformed."""
    data = load_json(body)
    try:
        if event == "Merge Request Hook":
            return _merge_request_event(delivery, data)
        if event == "Note Hook":
            return _note(delivery, data)
        if event in ("System Hook", "Test Hook"):
            return Ping(delivery, "gitlab")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise malformed(event, error) from None
    return Ignored(delivery, "gitlab", f"event {event!r} is not used")


def _merge_request_event(delivery: str, data: Mapping[str, Any]) -> ForgeEvent:
    attributes = data["object_attributes"]
    raw_action = str(attributes.get("action") or "")
    action = MERGE_REQUEST_ACTIONS.get(raw_action)
    if action is None:
        return Ignored(delivery, "gitlab", f"merge request action {raw_action!r} is not used")
    return PullRequestEvent(delivery, action, merge_request(data), raw_action)


def merge_request(data: Mapping[str, Any]) -> PullRequest:
    """The PullRequest of a Merge Request Hook (SPEC §4: clone the project's MR ref)."""
    attributes = data["object_attributes"]
    project = data["project"]
    number = int(attributes["iid"])
    labels = data.get("labels") or attributes.get("labels") or ()
    return PullRequest(
        forge="gitlab",
        repo=str(project["path_with_namespace"]),
        number=number,
        sha=str(attributes["last_commit"]["id"]).lower(),
        branch=str(attributes["source_branch"]),
        clone_url=str(project["git_http_url"]),
        ref=f"refs/merge-requests/{number}/head",
        fork=int(attributes["source_project_id"]) != int(attributes["target_project_id"]),
        labels=tuple(str(label["title"]) for label in labels),
        title=str(attributes.get("title") or ""),
        author=str((data.get("user") or {}).get("username") or ""),
        open=attributes.get("state", "opened") in ("opened", "reopened"),
        updated_at=forge_time(attributes.get("updated_at")),
    )


def _note(delivery: str, data: Mapping[str, Any]) -> ForgeEvent:
    # Comment events: https://docs.gitlab.com/ee/user/project/integrations/webhook_events.html#comment-events
    # `object_attributes.action` is `create` or `update` (GitLab 17.0+, MR
    # !147856); an edit never runs.
    attributes = data["object_attributes"]
    if attributes.get("noteable_type") != "MergeRequest":
        return Ignored(delivery, "gitlab", "note is not on a merge request")
    action = attributes.get("action")
    if action is None:
        # GitLab 16.x fired on edits before it said which: a note changed after
        # it was written (an edit, a resolved thread) is an edit.
        created, updated = (forge_time(attributes.get(k)) for k in ("created_at", "updated_at"))
        action = "update" if created and updated and updated > created + 1 else "create"
    if action != "create":
        return Ignored(delivery, "gitlab", f"note action {action!r} is not used")
    if attributes.get("system"):
        return Ignored(delivery, "gitlab", "system note")
    user = data.get("user") or {}
    return command_event(
        delivery,
        "gitlab",
        repo=str(data["project"]["path_with_namespace"]),
        number=int(data["merge_request"]["iid"]),
        commenter=str(user.get("username") or ""),
        body=str(attributes.get("note") or ""),
        commenter_id=int(user.get("id") or attributes.get("author_id") or 0),
        comment=int(attributes.get("id") or 0),
        created_at=forge_time(attributes.get("created_at")),
    )


@frozen
class GitLab:
    """GitLab behind the `Forge` Protocol (`POST /webhooks/gitlab`, `[gitlab]`)."""

    name: str = "gitlab"
    clone_username: str = "oauth2"

    def webhook_secret(self, config: Config) -> str | None:
        return config.gitlab.webhook_token

    def webhooks_off(self) -> str:
        return "GitLab webhooks are off: set [gitlab] webhook_token"

    def verify(self, secret: str, delivery: Delivery) -> str | None:
        if verify_token(secret, delivery.header("x-gitlab-token")):
            return None
        return "bad or missing X-Gitlab-Token"

    def parse(self, delivery: Delivery) -> ForgeEvent:
        event, delivery_id = require_headers(
            delivery,
            ("x-gitlab-event", "x-gitlab-event-uuid|x-gitlab-webhook-uuid"),
            "missing X-Gitlab-Event or X-Gitlab-Event-UUID",
        )
        return parse(event, delivery_id, delivery.body)

    def clone_token(self, config: Config) -> str | None:
        return config.gitlab.token

    def fork_approval(self) -> str | None:
        return None
