"""
GitHub's REST API for pull request feedback, on treq (I/O edge).

`GithubApi` implements the `ForgeApi` Protocol: issue comments, commit
statuses, deployments and their statuses, environments, a commenter's
permission (`may_write`, for `/preview` commands and the dashboard) and
reactions that acknowledge commands. It authenticates with
a token, or as a GitHub App (`AppKey`): an RS256 JWT made with PyJWT (`iat` 60 s
in the past, `exp` 9 minutes ahead: GitHub refuses more than 10 minutes) is
exchanged for an installation token per repository, cached until 5 minutes
before it expires. The installation of a repository is remembered when a
webhook names it (`remember_installation`), else looked up with
`GET /repos/{owner}/{repo}/installation`.

Retries (docs/forge.md; the loop, shared with GitLab's client, is
`prevu.adapters.forge_http.ForgeHttp`): every call is retried on 5xx, 429, GitHub's
secondary rate limits (403 with `Retry-After` or a "secondary rate limit"
message) and exhausted primary limits (`X-RateLimit-Remaining: 0`), waiting
what the forge says (`Retry-After` seconds, else until `X-RateLimit-Reset`)
or, when it says nothing, what the shared backoff policy answers, on the
injected clock. Creates are idempotent: before re-sending a comment or a
deployment create, the caller's `recover` looks for the one the failed
attempt may have made anyway (a 502 after creating).

Errors: `ForgeApiError(method, path, status, reason)` for an answer that
retrying will not change (401, 404, 409, 422…), `ForgeUnavailable` (a
subclass) when the retries ran out. Neither carries a header, a token or a
JWT: tokens never reach logs, errors or prevu's API.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import jwt
from attrs import define, field, frozen
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.logger import Logger

from prevu.adapters.forge_http import ForgeApiError as ForgeApiError  # re-exported: feedback's
from prevu.adapters.forge_http import ForgeHttp, Headers
from prevu.adapters.forge_http import ForgeUnavailable as ForgeUnavailable  # errors are here
from prevu.backoff import BackoffPolicy, exponential
from prevu.errors import ConfigError
from prevu.forge.commands import may_write_github

API_VERSION = "2022-11-28"
JWT_BACKDATE = 60.0
"""Seconds `iat` is set in the past, for clock drift (GitHub's advice)."""
JWT_LIFETIME = 540.0
"""Seconds from now to `exp`; GitHub refuses more than 600."""
TOKEN_MARGIN = 300.0
"""An installation token is renewed this many seconds before it expires."""


@frozen
class Comment:
    """An issue comment: its id, its author's login and its Markdown."""

    id: int
    author: str
    body: str


class ForgeApi(Protocol):
    """What feedback needs of a forge's API (reactor thread; methods raise ForgeApiError)."""

    async def identity(self) -> str:
        """The login prevu writes as (`GET /user`, or `<slug>[bot]` for an App)."""
        ...

    async def repository_private(self, repo: str) -> bool:
        """True when the repository is private on the forge."""
        ...

    async def comments(self, repo: str, number: int) -> list[Comment]:
        """The comments of an issue or pull request, oldest first."""
        ...

    async def create_comment(
        self, repo: str, number: int, body: str, recover: Callable[[], Awaitable[int | None]]
    ) -> int:
        """Post a comment; `recover` finds it when a failed attempt made it anyway."""
        ...

    async def edit_comment(self, repo: str, number: int, comment: int, body: str) -> bool:
        """Replace the body of comment `comment` on `number`; False when it no longer exists."""
        ...

    async def may_write(self, repo: str, user: str, user_id: int) -> bool:
        """
        True when the forge says `user` (login; `user_id` its numeric id) may
        write to `repo`: GitHub collaborator `role_name` admin, maintain or
        write; GitLab access level Developer (30) or above. Never from a
        webhook's `author_association`.
        """
        ...

    async def acknowledge(self, repo: str, number: int, comment: int, ok: bool) -> None:
        """React to comment `comment` on `number`: 👍 when its command ran, 😕 when refused."""
        ...

    async def set_status(
        self, repo: str, sha: str, state: str, description: str, target_url: str, context: str
    ) -> None:
        """Set the commit status `context` of `sha`."""
        ...

    async def find_deployment(self, repo: str, sha: str, environment: str) -> int | None:
        """The id of the deployment of `sha` to `environment`, if one exists."""
        ...

    async def create_deployment(self, repo: str, sha: str, environment: str) -> int:
        """Create a transient deployment of `sha` (idempotent: finds it before re-sending)."""
        ...

    async def set_deployment_status(
        self,
        repo: str,
        deployment: int,
        state: str,
        environment_url: str,
        log_url: str,
        description: str,
    ) -> None:
        """Add a status to a deployment."""
        ...

    async def delete_environment(self, repo: str, environment: str) -> bool:
        """Delete an environment; False when the credential may not (Administration: write)."""
        ...


def load_private_key(path: str) -> str:
    """
    The PEM text of a GitHub App's private key.

    :raises ConfigError: when the file cannot be read, is readable by group
        or others (start-up refuses it), or is not an RSA private key.
    """
    key = "github.private_key_file"
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                path, key, f"readable by group or others (mode {mode & 0o777:o}); chmod 600 it"
            )
        with open(path, encoding="ascii") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(path, key, f"cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, key, "not a PEM file") from None
    try:
        loaded = load_pem_private_key(text.encode(), password=None)
    except ValueError:
        raise ConfigError(path, key, "not a PEM private key") from None
    if not isinstance(loaded, RSAPrivateKey):
        raise ConfigError(path, key, "GitHub Apps use RSA keys")
    return text


@define(repr=False)
class AppKey:
    """A GitHub App: its id and private key; makes the JWTs that ask for installation tokens."""

    app_id: int
    pem: str
    _key: Any = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._key = load_pem_private_key(self.pem.encode(), password=None)

    def __repr__(self) -> str:
        return f"AppKey(app_id={self.app_id})"

    def token(self, now: float) -> str:
        """An RS256 JWT valid from `now - 60` to `now + 540` (seconds since the epoch)."""
        claims = {
            "iat": int(now - JWT_BACKDATE),
            "exp": int(now + JWT_LIFETIME),
            "iss": str(self.app_id),
        }
        return jwt.encode(claims, self._key, algorithm="RS256")


@frozen
class _Installation:
    token: str = field(repr=False)
    renew_at: float


def _reason(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:200]
    return ""


def _expiry(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@define
class GithubApi:
    """
    `ForgeApi` for GitHub at `api_url`. `reactor` makes connections and
    bounds each request (`timeout` seconds); `clock` times retries and token
    expiry (a `Clock` in tests). Exactly one of `token` and `app` is set.
    """

    reactor: Any
    clock: Any
    api_url: str
    token: str | None = field(default=None, repr=False)
    app: AppKey | None = None
    backoff: BackoffPolicy = field(factory=lambda: exponential(1.0, 2.0, 60.0))
    attempts: int = 5
    timeout: float = 30.0
    log: Logger = field(factory=Logger)
    _http: ForgeHttp = field(init=False)
    _installations: dict[str, int] = field(factory=dict, init=False)
    _tokens: dict[int, _Installation] = field(factory=dict, init=False, repr=False)
    _identity: str | None = field(default=None, init=False)
    _private: dict[str, bool] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        if (self.token is None) == (self.app is None):
            raise ValueError("GithubApi needs exactly one of a token and an App")
        self.api_url = self.api_url.rstrip("/")
        self._http = ForgeHttp(
            self.reactor, self.clock, "GitHub", self.api_url, _reason,
            self.backoff, self.attempts, self.timeout, self.log,
        )  # fmt: skip

    # --- authentication ---------------------------------------------------------

    def remember_installation(self, repo: str, installation: int) -> None:
        """The App installation a webhook named for `repo` (saves a look-up)."""
        self._installations[repo.lower()] = installation

    async def _authorization(self, repo: str | None, as_app: bool) -> str:
        if self.token is not None:
            return f"Bearer {self.token}"
        assert self.app is not None
        if as_app or repo is None:
            return f"Bearer {self.app.token(self.clock.seconds())}"
        installation = await self._installation(repo)
        cached = self._tokens.get(installation)
        if cached is not None and self.clock.seconds() < cached.renew_at:
            return f"Bearer {cached.token}"
        _, body = await self._call(
            "POST", f"/app/installations/{installation}/access_tokens", as_app=True, ok=(201,)
        )
        token = _Installation(str(body["token"]), _expiry(str(body["expires_at"])) - TOKEN_MARGIN)
        self._tokens[installation] = token
        self.log.info("GitHub App installation token renewed for {repo}", repo=repo)
        return f"Bearer {token.token}"

    async def _installation(self, repo: str) -> int:
        known = self._installations.get(repo.lower())
        if known is not None:
            return known
        _, body = await self._call("GET", f"/repos/{_path(repo)}/installation", as_app=True)
        installation = int(body["id"])
        self._installations[repo.lower()] = installation
        return installation

    async def clone_token(self, repo: str) -> str:
        """
        The credential for an HTTPS clone of `repo` (user `x-access-token`): the
        token, or a cached installation token of the App. Never logged.
        """
        authorization = await self._authorization(repo, as_app=False)
        return authorization.split(" ", 1)[1]

    # --- the request loop -----------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        repo: str | None = None,
        as_app: bool = False,
        ok: tuple[int, ...] = (200,),
        absent: tuple[int, ...] = (),
        recover: Callable[[], Awaitable[Any]] | None = None,
    ) -> tuple[int, Any]:
        """
        One API call with retries (`ForgeHttp.call`) as the App for `as_app`,
        else with the token for `repo`; answers (status, decoded JSON or None).
        A status in `absent` is returned rather than raised (404 on a lookup).
        """

        async def headers() -> Headers:
            authorization = await self._authorization(repo, as_app)
            return {
                b"accept": [b"application/vnd.github+json"],
                b"x-github-api-version": [API_VERSION.encode()],
                b"user-agent": [b"prevu"],
                b"authorization": [authorization.encode()],
            }

        def renew(status: int) -> bool:
            if status != 401 or self.app is None or as_app:
                return False
            self._tokens.clear()  # revoked or expired early: one fresh token
            return True

        return await self._http.call(
            method, path, body, headers, ok=ok, absent=absent, recover=recover, renew=renew
        )

    # --- ForgeApi -----------------------------------------------------------------------

    async def identity(self) -> str:
        if self._identity is None:
            if self.app is not None:
                _, body = await self._call("GET", "/app", as_app=True)
                self._identity = f"{body['slug']}[bot]"
            else:
                _, body = await self._call("GET", "/user")
                self._identity = str(body["login"])
        return self._identity

    async def repository_private(self, repo: str) -> bool:
        known = self._private.get(repo.lower())
        if known is None:
            _, body = await self._call("GET", f"/repos/{_path(repo)}", repo=repo)
            known = self._private[repo.lower()] = bool(body.get("private"))
        return known

    async def comments(self, repo: str, number: int) -> list[Comment]:
        found: list[Comment] = []
        for page in range(1, 31):
            query = urlencode({"per_page": 100, "page": page})
            _, body = await self._call(
                "GET", f"/repos/{_path(repo)}/issues/{number}/comments?{query}", repo=repo
            )
            items = body if isinstance(body, list) else []
            found += [
                Comment(
                    int(c["id"]),
                    str((c.get("user") or {}).get("login", "")),
                    str(c.get("body") or ""),
                )
                for c in items
            ]
            if len(items) < 100:
                break
        return found

    async def create_comment(
        self, repo: str, number: int, body: str, recover: Callable[[], Awaitable[int | None]]
    ) -> int:
        _, made = await self._call(
            "POST",
            f"/repos/{_path(repo)}/issues/{number}/comments",
            {"body": body},
            repo=repo,
            ok=(201,),
            recover=recover,
        )
        return int(made) if isinstance(made, int) else int(made["id"])

    async def edit_comment(self, repo: str, number: int, comment: int, body: str) -> bool:
        status, _ = await self._call(
            "PATCH",
            f"/repos/{_path(repo)}/issues/comments/{comment}",
            {"body": body},
            repo=repo,
            absent=(404,),
        )
        return status != 404

    async def permission(self, repo: str, login: str) -> str | None:
        """
        The `role_name` of `login` on `repo` (`admin`, `maintain`, `write`,
        `triage`, `read` or a custom role), None when GitHub knows no such
        user: `GET /repos/{owner}/{repo}/collaborators/{username}/permission`
        (https://docs.github.com/en/rest/collaborators/collaborators#get-repository-permissions-for-a-user).
        """
        status, body = await self._call(
            "GET",
            f"/repos/{_path(repo)}/collaborators/{quote(login, safe='')}/permission",
            repo=repo,
            absent=(404,),
        )
        if status == 404 or not isinstance(body, dict):
            return None
        role = body.get("role_name") or body.get("permission")
        return str(role) if role else None

    async def may_write(self, repo: str, user: str, user_id: int = 0) -> bool:
        """True when `user` (a GitHub login) has write access to `repo` (see `permission`)."""
        return may_write_github(await self.permission(repo, user))

    async def acknowledge(self, repo: str, number: int, comment: int, ok: bool) -> None:
        # https://docs.github.com/en/rest/reactions/reactions#create-reaction-for-an-issue-comment
        await self._call(
            "POST",
            f"/repos/{_path(repo)}/issues/comments/{comment}/reactions",
            {"content": "+1" if ok else "confused"},
            repo=repo,
            ok=(200, 201),
        )

    async def set_status(
        self, repo: str, sha: str, state: str, description: str, target_url: str, context: str
    ) -> None:
        payload = {
            "state": state,
            "description": description,
            "target_url": target_url or None,
            "context": context,
        }
        await self._call(
            "POST", f"/repos/{_path(repo)}/statuses/{sha}", payload, repo=repo, ok=(201,)
        )

    async def find_deployment(self, repo: str, sha: str, environment: str) -> int | None:
        query = urlencode({"sha": sha, "environment": environment, "per_page": 100})
        _, body = await self._call("GET", f"/repos/{_path(repo)}/deployments?{query}", repo=repo)
        for deployment in body if isinstance(body, list) else []:
            if deployment.get("sha") == sha and deployment.get("environment") == environment:
                return int(deployment["id"])
        return None

    async def create_deployment(self, repo: str, sha: str, environment: str) -> int:
        payload = {
            "ref": sha,
            "environment": environment,
            "description": f"prevu preview of {sha[:7]}",
            "auto_merge": False,
            "required_contexts": [],  # without it GitHub answers 409 while checks are pending
            "transient_environment": True,
            "production_environment": False,
        }

        async def recover() -> int | None:
            return await self.find_deployment(repo, sha, environment)

        _, made = await self._call(
            "POST",
            f"/repos/{_path(repo)}/deployments",
            payload,
            repo=repo,
            ok=(201,),
            recover=recover,
        )
        return int(made) if isinstance(made, int) else int(made["id"])

    async def set_deployment_status(
        self,
        repo: str,
        deployment: int,
        state: str,
        environment_url: str,
        log_url: str,
        description: str,
    ) -> None:
        payload: dict[str, Any] = {"state": state, "description": description[:140]}
        if environment_url:
            payload["environment_url"] = environment_url
        if log_url:
            payload["log_url"] = log_url
        await self._call(
            "POST",
            f"/repos/{_path(repo)}/deployments/{deployment}/statuses",
            payload,
            repo=repo,
            ok=(201,),
        )

    async def delete_environment(self, repo: str, environment: str) -> bool:
        status, _ = await self._call(
            "DELETE",
            f"/repos/{_path(repo)}/environments/{quote(environment, safe='')}",
            repo=repo,
            ok=(204,),
            absent=(403, 404),
        )
        return status == 204


def _path(repo: str) -> str:
    owner, _, name = repo.partition("/")
    return f"{quote(owner, safe='')}/{quote(name, safe='')}"


def _conforms(api: GithubApi) -> ForgeApi:
    """mypy checks here that GithubApi satisfies ForgeApi."""
    return api
