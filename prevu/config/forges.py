"""
The `[github]` and `[gitlab]` tables: webhook secrets, API tokens and URLs.

Pure core: values and their readers.
"""

from __future__ import annotations

from attrs import frozen

from prevu.config.reader import Table


@frozen
class GithubConfig:
    """The `[github]` table."""

    webhook_secret: str | None = None
    token: str | None = None
    api_url: str = "https://api.github.com"


@frozen
class GitlabConfig:
    """The `[gitlab]` table."""

    webhook_token: str | None = None
    token: str | None = None
    url: str = "https://gitlab.com"


def parse_github(t: Table) -> GithubConfig:
    """The `[github]` table (secrets inline or as `*_file`)."""
    config = GithubConfig(
        webhook_secret=t.secret("webhook_secret"),
        token=t.secret("token"),
        api_url=t.url("api_url", GithubConfig().api_url).rstrip("/"),
    )
    t.finish()
    return config


def parse_gitlab(t: Table) -> GitlabConfig:
    """The `[gitlab]` table (secrets inline or as `*_file`)."""
    config = GitlabConfig(
        webhook_token=t.secret("webhook_token"),
        token=t.secret("token"),
        url=t.url("url", GitlabConfig().url).rstrip("/"),
    )
    t.finish()
    return config
