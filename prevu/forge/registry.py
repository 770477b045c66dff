"""
The one list of forges: a forge's name → its `Forge` and its API client.

Pure core. `FORGES` maps each name to a `ForgeEntry`: the pure `Forge`
(webhooks, clone credentials, policy rules) and, once it exists, the dotted
name of the forge's I/O client in `prevu/adapters/<forge>_api.py`, which only
the composition root imports (so that this module stays free of Twisted).
Adding a forge is one module under `prevu/forge/` and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import frozen

from prevu.config import Config
from prevu.forge.base import Credentials, Forge
from prevu.forge.events import ForgeName
from prevu.forge.github import GitHub
from prevu.forge.gitlab import GitLab
from prevu.forge.local import Local


@frozen
class ForgeEntry:
    """
    One forge: `forge` (pure) and `api`, the dotted name
    (`prevu.adapters.github_api:GitHubApi`) of its API client; None while
    prevu calls no API of that forge.
    """

    forge: Forge
    api: str | None = None
    webhooks: bool = True
    """False for a forge without webhooks (`local`): `/webhooks/<name>` is then not found."""


FORGES: Mapping[ForgeName, ForgeEntry] = {
    "github": ForgeEntry(GitHub(), "prevu.adapters.github_api:GithubApi"),
    "gitlab": ForgeEntry(GitLab(), "prevu.adapters.gitlab_api:GitlabApi"),
    "local": ForgeEntry(Local(), webhooks=False),
}


def forge_named(name: ForgeName) -> Forge | None:
    """The forge called `name`, or None when prevu knows no such forge."""
    entry = FORGES.get(name)
    return entry.forge if entry is not None else None


def webhook_forge(name: str) -> Forge | None:
    """The forge whose webhooks `/webhooks/<name>` receives, or None."""
    entry = FORGES.get(name)
    return entry.forge if entry is not None and entry.webhooks else None


def clone_credentials(config: Config, forge: ForgeName, repo: str) -> Credentials | None:
    """
    The user name and token git sends to fetch `repo` of `forge` over HTTPS;
    None when that forge has no token configured (public repositories, or the
    local forge). `repo` is the forge path (owner/name): today every
    repository of a forge shares its token, the parameter leaves room for
    per-repository tokens.
    """
    found = forge_named(forge)
    if found is None:
        return None
    token = found.clone_token(config)
    if not token:
        return None
    return Credentials(found.clone_username, token)
