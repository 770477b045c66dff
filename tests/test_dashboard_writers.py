"""
Who may act from the dashboard besides `[auth] admins`: GitHub writers of
the repository, asked of the fake GitHub over loopback HTTP through the
real GitHub client (`prevu.service.dashboard_writers`).
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from prevu.adapters.github_api import GithubApi
from prevu.config import AuthConfig, Config, GithubConfig, ServerConfig
from prevu.config.auth import GithubAuthConfig
from prevu.service import GithubWriters, dashboard_writers
from prevu.testing import fake_github
from prevu.testing.fake_github import FakeGithub, FakeUser

REPO = "acme/shop"


def config(tmp: Path, users_file: str | None, github_login: bool) -> Config:
    oauth = GithubAuthConfig(client_id="id", client_secret="secret") if github_login else None
    return Config(
        server=ServerConfig(state_dir=str(tmp)),
        github=GithubConfig(token="t0ken"),
        auth=AuthConfig(users_file=users_file, github=oauth),
    )


def test_only_github_logins_without_a_users_file_ask_github(tmp_path: Path) -> None:
    """A users file next to the GitHub login, or no GitHub login, or no client: admins only."""
    api = GithubApi(reactor, reactor, "http://127.0.0.1:9", token="t0ken")
    assert isinstance(dashboard_writers(config(tmp_path, None, True), api), GithubWriters)
    assert dashboard_writers(config(tmp_path, "/etc/prevu/users", True), api) is None
    assert dashboard_writers(config(tmp_path, None, False), api) is None
    assert dashboard_writers(config(tmp_path, None, True), None) is None


@pytest_twisted.ensureDeferred
async def test_writers_are_asked_of_github_and_a_failure_refuses() -> None:
    """write and maintain may act, read and unknown may not; a 401 from GitHub refuses."""
    github = FakeGithub()
    for login in ("maria", "wanda", "rita"):
        github.users[login] = FakeUser(login)
    github.tokens["t0ken"] = "prevu-bot"
    github.permissions[f"{REPO}:maria"] = "maintain"
    github.permissions[f"{REPO}:wanda"] = "write"
    github.permissions[f"{REPO}:rita"] = "read"
    port = fake_github.listen(reactor, github)
    try:
        writers = GithubWriters(GithubApi(reactor, reactor, github.base, token="t0ken"))
        assert await writers.may_write(REPO, "maria") is True
        assert await writers.may_write(REPO, "wanda") is True
        assert await writers.may_write(REPO, "rita") is False
        assert await writers.may_write(REPO, "nobody") is False
        github.fail("/collaborators/maria/permission", 401)
        assert await writers.may_write(REPO, "maria") is False
        assert any("/collaborators/maria/permission" in call.path for call in github.calls)
    finally:
        await port.stopListening()
