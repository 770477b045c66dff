"""
The `[github]` and `[gitlab]` tables: webhook secrets, API tokens and URLs.

Pure core: values and their readers.
"""

from __future__ import annotations

from attrs import frozen

from prevu.config.reader import Table

FEEDBACK_KINDS = ("comment", "status", "deployment")
"""What prevu may publish on a pull request: `[github]`/`[gitlab] feedback` (docs/forge.md)."""


@frozen
class GithubConfig:
    """The `[github]` table."""

    webhook_secret: str | None = None
    token: str | None = None
    api_url: str = "https://api.github.com"
    app_id: int | None = None
    private_key_file: str | None = None
    feedback: tuple[str, ...] = FEEDBACK_KINDS

    @property
    def credential(self) -> bool:
        """True when prevu can call GitHub's API (a token or a GitHub App)."""
        return bool(self.token or self.app_id)

    @property
    def publishing(self) -> tuple[str, ...]:
        """The feedback kinds to publish: none without a credential (docs/forge.md)."""
        return self.feedback if self.credential else ()


@frozen
class GitlabConfig:
    """The `[gitlab]` table."""

    webhook_token: str | None = None
    token: str | None = None
    url: str = "https://gitlab.com"
    """The GitLab instance; its API is `<url>/api/v4`."""
    feedback: tuple[str, ...] = FEEDBACK_KINDS
    """MR note ("comment"), commit status ("status"), environment ("deployment")."""

    @property
    def credential(self) -> bool:
        """True when prevu can call GitLab's API (`[gitlab] token`)."""
        return bool(self.token)

    @property
    def publishing(self) -> tuple[str, ...]:
        """The feedback kinds to publish: none without a token (docs/forge.md)."""
        return self.feedback if self.credential else ()


def _feedback(t: Table) -> tuple[str, ...]:
    kinds = t.strings("feedback") if t.has("feedback") else FEEDBACK_KINDS
    for kind in kinds:
        if kind not in FEEDBACK_KINDS:
            choices = ", ".join(f'"{k}"' for k in FEEDBACK_KINDS)
            raise t.error("feedback", f"unknown kind {kind!r}; use {choices}")
    return kinds


def parse_github(t: Table) -> GithubConfig:
    """The `[github]` table (secrets inline or as `*_file`)."""
    config = GithubConfig(
        webhook_secret=t.secret("webhook_secret"),
        token=t.secret("token"),
        api_url=t.url("api_url", GithubConfig().api_url).rstrip("/"),
        app_id=t.integer("app_id", 0, minimum=1) if t.has("app_id") else None,
        private_key_file=t.optional_string("private_key_file"),
        feedback=_feedback(t),
    )
    if (config.app_id is None) != (config.private_key_file is None):
        raise t.error("app_id", "a GitHub App needs both app_id and private_key_file")
    t.finish()
    return config


def parse_gitlab(t: Table) -> GitlabConfig:
    """The `[gitlab]` table (secrets inline or as `*_file`)."""
    config = GitlabConfig(
        webhook_token=t.secret("webhook_token"),
        token=t.secret("token"),
        url=t.url("url", GitlabConfig().url).rstrip("/"),
        feedback=_feedback(t),
    )
    t.finish()
    return config
