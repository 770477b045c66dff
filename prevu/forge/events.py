"""
Typed forge events: what a verified webhook means, independent of the forge.

Pure core. The GitHub and GitLab parsers turn raw payloads into these frozen
values; the policy (`prevu.forge.policy`) and the orchestrator only ever see
these, never a payload dict.
"""

from __future__ import annotations

from typing import Literal

from attrs import field, frozen, validators

Forge = Literal["github", "gitlab", "local"]
"""`local` is `prevu up`: a branch deployed without any forge."""
FORGES: tuple[Forge, ...] = ("github", "gitlab", "local")

PullRequestAction = Literal["open", "push", "close", "labels"]
"""
Normalised pull request actions:

- `open`: GitHub `opened`/`reopened`, GitLab `open`/`reopen` (may revive a closed preview);
- `push`: GitHub `synchronize`, GitLab `update` (a new head, or other edits);
- `close`: GitHub `closed` (merged or not), GitLab `close`/`merge`;
- `labels`: GitHub `labeled`/`unlabeled` (matters with `trigger = "label"`).
"""

TRUSTED_ASSOCIATIONS = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
SHA_PATTERN = r"^[0-9a-f]{40}([0-9a-f]{24})?$"


@frozen
class PullRequest:
    """
    One pull (merge) request as a webhook describes it.

    `repo` is the base repository's forge path; `clone_url` and `ref` say where
    the head commit `sha` is fetched from (the base repository, which carries
    the head of forks too). `fork` is True when the head lives in another
    repository than the base.
    """

    forge: Forge = field(validator=validators.in_(FORGES))
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


@frozen
class PullRequestEvent:
    """A pull request was opened, pushed to, closed or (un)labelled."""

    delivery: str
    action: PullRequestAction
    pull_request: PullRequest
    raw_action: str = ""

    @property
    def forge(self) -> Forge:
        return self.pull_request.forge

    @property
    def repo(self) -> str:
        return self.pull_request.repo


@frozen
class ApproveCommand:
    """
    A `/preview approve` comment on a pull request.

    `association` is the commenter's relation to the repository as the forge
    reports it (GitHub: OWNER, MEMBER, COLLABORATOR, CONTRIBUTOR, NONE, ...).
    """

    delivery: str
    forge: Forge
    repo: str
    number: int
    commenter: str
    association: str

    @property
    def trusted(self) -> bool:
        """True when the commenter may approve previews of fork pull requests."""
        return self.association.upper() in TRUSTED_ASSOCIATIONS


@frozen
class Ping:
    """The forge checks that the webhook works."""

    delivery: str
    forge: Forge


@frozen
class Ignored:
    """A verified, well-formed delivery that prevu has nothing to do for."""

    delivery: str
    forge: Forge
    reason: str


ForgeEvent = PullRequestEvent | ApproveCommand | Ping | Ignored


def parse_command(body: str) -> str | None:
    """
    The `/preview` command in a comment body (`approve`, ...), or None.

    Only a line that starts with `/preview` counts, so quoting a command in a
    reply (`> /preview approve`) does not repeat it.
    """
    for line in body.splitlines():
        words = line.strip().split()
        if len(words) >= 2 and words[0].lower() == "/preview":
            return words[1].lower()
    return None
