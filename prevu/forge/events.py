"""
Typed forge events: what a verified webhook means, independent of the forge.

Pure core. Each forge's parser (`prevu.forge.github`, `prevu.forge.gitlab`)
turns raw payloads into these frozen values; the policy
(`prevu.forge.policy`) and the orchestrator only ever see these, never a
payload dict.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from attrs import field, frozen, validators

from prevu.forge.commands import find_command
from prevu.revisions import SHA_PATTERN

ForgeName = str
"""
A forge's name as `prevu.forge.registry.FORGES` knows it (`github`, `gitlab`,
`local` for `prevu up`): lower-case letters, digits and `-`. The registry is
the one list of forges; events only check the spelling, so that adding a
forge never touches this module.
"""
FORGE_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"

PullRequestAction = Literal["open", "push", "close", "labels"]
"""
Normalised pull request actions:

- `open`: GitHub `opened`/`reopened`, GitLab `open`/`reopen` (may revive a closed preview);
- `push`: GitHub `synchronize`, GitLab `update` (a new head, or other edits);
- `close`: GitHub `closed` (merged or not), GitLab `close`/`merge`;
- `labels`: GitHub `labeled`/`unlabeled` (matters with `trigger = "label"`).
"""


@frozen
class PullRequest:
    """
    One pull (merge) request as a webhook describes it.

    `repo` is the base repository's forge path; `clone_url` and `ref` say where
    the head commit `sha` is fetched from (the base repository, which carries
    the head of forks too). `fork` is True when the head lives in another
    repository than the base.
    """

    forge: ForgeName = field(validator=validators.matches_re(FORGE_NAME_PATTERN))
    repo: str = field(validator=validators.min_len(1))
    number: int = field(validator=validators.ge(1))
    sha: str = field(validator=validators.matches_re(SHA_PATTERN))
    branch: str
    clone_url: str = field(validator=validators.min_len(1))
    ref: str = field(validator=validators.min_len(1))
    fork: bool = False
    labels: tuple[str, ...] = ()
    title: str = ""
    author: str = ""
    open: bool = True
    """False when the forge already reports the pull request closed or merged."""
    updated_at: float | None = None
    """
    When the forge last changed the pull request (epoch seconds; GitHub
    `pull_request.updated_at`, GitLab `object_attributes.updated_at`), or None
    when the payload does not say. Orders the events of one pull request.
    """


def forge_time(value: Any) -> float | None:
    """
    Epoch seconds of a forge timestamp, or None when `value` is not one.

    Reads ISO 8601 (`2019-05-15T15:21:18Z`, `...+02:00`, GitHub and GitLab's
    documentation) and GitLab's webhook form `2013-12-03 17:23:34 UTC`. A
    time without a zone is taken as UTC.
    """
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(" UTC"):
        text = text[:-4] + "+00:00"
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@frozen
class PullRequestEvent:
    """A pull request was opened, pushed to, closed or (un)labelled."""

    delivery: str
    action: PullRequestAction
    pull_request: PullRequest
    raw_action: str = ""
    installation: int | None = None
    """The GitHub App installation that sent it (`installation.id`), when one did."""

    @property
    def forge(self) -> ForgeName:
        return self.pull_request.forge

    @property
    def repo(self) -> str:
        return self.pull_request.repo


@frozen
class Command:
    """
    A `/preview` comment on a pull request (GitHub `issue_comment` created on
    a pull request, GitLab `Note Hook` created on a merge request).

    `line` is the command line as written (`/preview extend 3d`), found
    outside quotes and code (`prevu.forge.commands.find_command`); it is
    parsed when the command runs, so that a bad one gets a reply. Who may
    run it is asked of the forge then, never read from the webhook
    (`author_association` says nothing about write access). `commenter_id`
    is the forge's numeric user id (GitLab's members API needs it),
    `comment` the comment's id (for a reaction), `created_at` when it was
    written (epoch seconds; pins `/preview approve` to the head shown then).
    """

    delivery: str
    forge: ForgeName
    repo: str
    number: int
    line: str
    commenter: str
    commenter_id: int = 0
    comment: int = 0
    created_at: float | None = None


@frozen
class Ping:
    """The forge checks that the webhook works."""

    delivery: str
    forge: ForgeName


@frozen
class Ignored:
    """A verified, well-formed delivery that prevu has nothing to do for."""

    delivery: str
    forge: ForgeName
    reason: str


ForgeEvent = PullRequestEvent | Command | Ping | Ignored


OWN_MARKER = "<!-- prevu:"
"""Comments carrying it were written by prevu (the sticky comment); they never run."""


def command_event(
    delivery: str,
    forge: ForgeName,
    repo: str,
    number: int,
    commenter: str,
    body: str,
    *,
    commenter_id: int = 0,
    comment: int = 0,
    created_at: float | None = None,
) -> Command | Ignored:
    """
    The event of a comment on pull request `number`: a `Command` when it has
    a `/preview` line outside quotes and code, else `Ignored`. The one place
    that turns a comment into a command: each forge only finds its fields;
    verbs and their arguments are checked when the command runs (so that a
    bad one gets a reply).
    """
    if OWN_MARKER in body:
        return Ignored(delivery, forge, "comment written by prevu")
    line = find_command(body)
    if line is None:
        return Ignored(delivery, forge, "comment has no /preview command")
    return Command(
        delivery, forge, repo, number, line, commenter, commenter_id, comment, created_at
    )
