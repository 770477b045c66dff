"""
What a forge event asks of prevu, given the `[[repos]]` settings.

Pure core: `decide` maps a typed event plus the server config to one
admission `Decision` (deploy, destroy, deny, act on a command or skip). The webhook
handler answers from it and the orchestrator carries it out. This module is
the one home of `Decision`; `Gate` (how a deploy was admitted) is the
lifecycle's, whose `Deploy`/`Deny`/`Approve` are *events* of the state machine
that the orchestrator makes from these decisions.
Forge-specific rules come from the forge (`Forge.fork_approval`).
"""

from __future__ import annotations

from attrs import frozen

from prevu.config import Config, RepoConfig
from prevu.forge.events import Command, PullRequest, PullRequestEvent
from prevu.forge.registry import forge_named
from prevu.lifecycle.states import Gate

PREVIEW_LABEL = "preview"


@frozen
class Deploy:
    """Deploy the head of `pull_request`; `revive` may bring back a closed preview."""

    pull_request: PullRequest
    settings: RepoConfig
    gate: Gate = "open"
    revive: bool = False


@frozen
class Destroy:
    """Tear the pull request's preview down."""

    pull_request: PullRequest
    reason: str


@frozen
class Deny:
    """The pull request may not have a preview; its status says why."""

    pull_request: PullRequest
    settings: RepoConfig
    reason: str


@frozen
class Act:
    """
    Run a `/preview` command of a listed repository. The commenter's
    permission is checked, and the command carried out, in the background
    (`prevu.feedback.commands.CommandRunner`): the webhook is answered first.
    """

    command: Command
    settings: RepoConfig


@frozen
class Skip:
    """Nothing to do (answered 200 with the reason)."""

    reason: str


Decision = Deploy | Destroy | Deny | Act | Skip
"""The admission decision for one forge event: what the orchestrator is asked to do."""


def repo_settings(config: Config, repo: str) -> RepoConfig | None:
    """The `[[repos]]` entry for `repo` (defaults without a list); None when filtered out."""
    if not config.repos:
        return RepoConfig(name=repo)
    return config.repo(repo)


def decide(config: Config, event: PullRequestEvent | Command) -> Decision:
    """
    The decision for one verified event.

    A close is never gated by policy (issue 11): it is a Destroy whatever
    `[[repos]]`, `trigger` or the fork rules say now, so that a preview
    started before the repository was unlisted (or renamed) is torn down at
    once; the orchestrator ignores it when prevu runs no preview for the PR.
    """
    repo = event.repo
    if isinstance(event, PullRequestEvent) and event.action == "close":
        return _close(event)
    settings = repo_settings(config, repo)
    if settings is None:
        return Skip(f"repository {repo} is not listed in [[repos]]")
    if isinstance(event, Command):
        return Act(event, settings)
    return _pull_request(event, settings)


def _close(event: PullRequestEvent) -> Destroy:
    merged = event.raw_action == "merge"
    reason = "merge request merged" if merged else "pull request closed"
    return Destroy(event.pull_request, reason)


def _pull_request(event: PullRequestEvent, settings: RepoConfig) -> Decision:
    pr = event.pull_request
    if event.action == "close":
        return _close(event)
    if not pr.open:
        return Skip(f"pull request {pr.number} is already closed")
    labelled = PREVIEW_LABEL in {label.lower() for label in pr.labels}
    if settings.trigger == "label":
        if event.action == "labels" and not labelled:
            return Destroy(pr, f"label {PREVIEW_LABEL!r} removed")
        if not labelled:
            return Skip(f'trigger = "label" and pull request {pr.number} is not labelled')
    elif event.action == "labels":
        return Skip('labels only matter with trigger = "label"')
    revive = event.action in ("open", "labels")
    if not pr.fork or settings.forks == "allow":
        return Deploy(pr, settings, "open", revive)
    if settings.forks == "deny":
        return Deny(pr, settings, 'fork pull requests get no preview (forks = "deny")')
    forge = forge_named(pr.forge)
    refusal = forge.fork_approval() if forge is not None else f"unknown forge {pr.forge!r}"
    if refusal is not None:
        return Deny(pr, settings, refusal)
    return Deploy(pr, settings, "approve", revive)
