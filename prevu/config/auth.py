"""
The `[auth]` table and `[auth.github]`: cookies, sessions, users, GitHub OAuth.

Pure core: values and their reader.
"""

from __future__ import annotations

from attrs import frozen

from prevu.config.reader import Table

GITHUB_AUTHORIZE_URL = "https://github.com/login/oauth/authorize"
GITHUB_TOKEN_URL = "https://github.com/login/oauth/access_token"
GITHUB_API_URL = "https://api.github.com"


@frozen
class GithubAuthConfig:
    """The `[auth.github]` table: GitHub OAuth login."""

    client_id: str
    client_secret: str
    allowed_orgs: tuple[str, ...] = ()
    allowed_teams: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    repo_readers: bool = False
    authorize_url: str = GITHUB_AUTHORIZE_URL
    token_url: str = GITHUB_TOKEN_URL
    api_url: str = GITHUB_API_URL


@frozen
class AuthConfig:
    """The `[auth]` table."""

    cookie_secret: str | None = None
    cookie_secret_previous: tuple[str, ...] = ()
    session_ttl: float = 12 * 3600.0
    users_file: str | None = None
    github: GithubAuthConfig | None = None
    admins: tuple[str, ...] = ()
    """
    User names (password users or GitHub logins) that may act from the dashboard
    (redeploy, destroy, keep/extend, share) on every preview; docs/dashboard.md.
    """


def parse_auth(t: Table) -> AuthConfig:
    """The `[auth]` table with its optional `[auth.github]`."""
    d = AuthConfig()
    secret = t.secret("cookie_secret")
    if secret is not None and len(secret.encode()) < 32:
        raise t.error("cookie_secret", "must be at least 32 bytes long")
    gh = t.optional_table("github")
    github = None
    if gh is not None:
        secret_value = gh.secret("client_secret")
        if not secret_value:
            raise gh.error("client_secret", "is required")
        github = GithubAuthConfig(
            client_id=gh.required("client_id"),
            client_secret=secret_value,
            allowed_orgs=gh.strings("allowed_orgs"),
            allowed_teams=gh.strings("allowed_teams"),
            allowed_users=gh.strings("allowed_users"),
            repo_readers=gh.boolean("repo_readers", False),
            authorize_url=gh.url("authorize_url", GITHUB_AUTHORIZE_URL),
            token_url=gh.url("token_url", GITHUB_TOKEN_URL),
            api_url=gh.url("api_url", GITHUB_API_URL).rstrip("/"),
        )
        for team in github.allowed_teams:
            if team.count("/") != 1:
                raise gh.error("allowed_teams", f"expected org/team-slug, got {team!r}")
        gh.finish()
    config = AuthConfig(
        cookie_secret=secret,
        cookie_secret_previous=t.secrets("cookie_secret_previous"),
        session_ttl=t.duration("session_ttl", d.session_ttl),
        users_file=t.optional_string("users_file"),
        github=github,
        admins=t.strings("admins"),
    )
    for name in config.admins:
        if not name.strip():
            raise t.error("admins", "a user name cannot be empty")
    t.finish()
    return config
