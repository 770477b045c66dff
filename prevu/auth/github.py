"""
GitHub OAuth login (`[auth.github]`): the web application flow, then who
may pass.

`decide` is the pure rule; `GithubOAuth` is the adapter that talks to GitHub
(any server speaking its documented shapes: `authorize_url`, `token_url`,
`api_url` are configurable) through a treq HTTPClient it is given:

- ``POST token_url`` (form `client_id`, `client_secret`, `code`,
  `redirect_uri`; ``Accept: application/json``) -> ``{"access_token": ...}``
  or ``{"error": ...}``
- ``GET /user`` -> ``{"login": ...}``
- ``GET /user/orgs`` -> ``[{"login": ...}, ...]`` (only with `allowed_orgs`)
- ``GET /orgs/{org}/teams/{slug}/memberships/{login}`` -> ``{"state": "active"}``
  or 404 (only with `allowed_teams`)
- ``GET /repos/{owner}/{name}`` -> ``{"permissions": {"pull": true}}`` or 404
  (only with `repo_readers`)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlencode

from attrs import define, frozen

from prevu.config import GithubAuthConfig
from prevu.errors import AuthError

TIMEOUT = 15.0


@frozen
class GithubIdentity:
    """What GitHub told about a user, as far as the config asked."""

    login: str
    orgs: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    readable_repos: tuple[str, ...] = ()


@frozen
class Verdict:
    """Whether a GitHub user may log in, and to which repositories."""

    allowed: bool
    repos: tuple[str, ...] | None = None
    reason: str = ""


def _folded(names: Iterable[str]) -> set[str]:
    return {name.casefold() for name in names}


def decide(config: GithubAuthConfig, identity: GithubIdentity) -> Verdict:
    """
    Everyone in `allowed_users`, `allowed_orgs` or `allowed_teams` gets every
    private route; with `repo_readers`, anyone else who can read some
    repositories gets the previews of those only.
    """
    if identity.login.casefold() in _folded(config.allowed_users):
        return Verdict(True, reason="allowed user")
    if _folded(identity.orgs) & _folded(config.allowed_orgs):
        return Verdict(True, reason="member of an allowed organization")
    if _folded(identity.teams) & _folded(config.allowed_teams):
        return Verdict(True, reason="member of an allowed team")
    if config.repo_readers and identity.readable_repos:
        return Verdict(True, repos=identity.readable_repos, reason="reader of the repository")
    return Verdict(False, reason="not in the allowed users, organizations or teams")


def scopes(config: GithubAuthConfig) -> str:
    """The OAuth scopes to ask for: org and team membership, private repos if needed."""
    return "read:org repo" if config.repo_readers else "read:org"


@define
class GithubOAuth:
    """Talks to GitHub's OAuth and REST endpoints for one login."""

    config: GithubAuthConfig
    http: Any  # a treq HTTPClient
    redirect_uri: str

    def authorize_url(self, state: str) -> str:
        """Where to send the browser to ask GitHub for a code."""
        query = urlencode(
            {
                "client_id": self.config.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": scopes(self.config),
                "state": state,
                "allow_signup": "false",
            }
        )
        return f"{self.config.authorize_url}?{query}"

    async def exchange(self, code: str) -> str:
        """The access token for an authorization `code`."""
        response = await self.http.post(
            self.config.token_url,
            data={
                "client_id": self.config.client_id,
                "client_secret": self.config.client_secret,
                "code": code,
                "redirect_uri": self.redirect_uri,
            },
            headers={"Accept": ["application/json"]},
            timeout=TIMEOUT,
        )
        body = await self._json(response, "token exchange")
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            error = body.get("error", "no access_token") if isinstance(body, dict) else body
            raise AuthError(f"GitHub token exchange failed: {error}")
        return token

    async def identity(self, token: str, candidate_repos: Iterable[str] = ()) -> GithubIdentity:
        """Who the token belongs to, with the memberships the config asks about."""
        user = await self._get(token, "/user")
        login = user.get("login") if isinstance(user, dict) else None
        if not isinstance(login, str) or not login:
            raise AuthError("GitHub /user answered without a login")
        identity = GithubIdentity(login=login)
        if login.casefold() in _folded(self.config.allowed_users):
            return identity
        orgs: tuple[str, ...] = ()
        if self.config.allowed_orgs:
            listing = await self._get(token, "/user/orgs?per_page=100")
            if isinstance(listing, list):
                orgs = tuple(o["login"] for o in listing if isinstance(o, dict) and "login" in o)
        teams = []
        for team in self.config.allowed_teams:
            org, slug = team.split("/", 1)
            path = f"/orgs/{quote(org)}/teams/{quote(slug)}/memberships/{quote(login)}"
            membership = await self._get(token, path, missing_ok=True)
            if isinstance(membership, dict) and membership.get("state") == "active":
                teams.append(team)
        identity = GithubIdentity(login=login, orgs=orgs, teams=tuple(teams))
        if decide(self.config, identity).allowed or not self.config.repo_readers:
            return identity
        readable = []
        for repo in dict.fromkeys(candidate_repos):
            owner, _, name = repo.partition("/")
            info = await self._get(token, f"/repos/{quote(owner)}/{quote(name)}", missing_ok=True)
            permissions = info.get("permissions") if isinstance(info, dict) else None
            if isinstance(permissions, dict) and permissions.get("pull"):
                readable.append(repo)
        return GithubIdentity(
            login=login, orgs=orgs, teams=tuple(teams), readable_repos=tuple(readable)
        )

    async def _get(self, token: str, path: str, missing_ok: bool = False) -> Any:
        response = await self.http.get(
            self.config.api_url + path,
            headers={
                "Authorization": [f"Bearer {token}"],
                "Accept": ["application/vnd.github+json"],
                "X-GitHub-Api-Version": ["2022-11-28"],
                "User-Agent": ["prevu"],
            },
            timeout=TIMEOUT,
        )
        if missing_ok and response.code in (403, 404):
            await response.content()
            return None
        return await self._json(response, f"GET {path}")

    async def _json(self, response: Any, what: str) -> Any:
        raw = await response.content()
        if response.code != 200:
            raise AuthError(f"GitHub {what} answered {response.code}")
        try:
            return json.loads(raw)
        except ValueError:
            raise AuthError(f"GitHub {what} answered with invalid JSON") from None
