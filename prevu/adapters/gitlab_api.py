"""
GitLab's REST API (v4) for merge request feedback and commands, on treq (I/O edge).

`GitlabApi` implements the `ForgeApi` Protocol of `prevu.adapters.github_api`
on GitLab at `[gitlab] url` (`<url>/api/v4`), authenticated with
`PRIVATE-TOKEN: [gitlab] token` (a personal, project or group access token
with the `api` scope). Projects are named by their URL-encoded path
(`group%2Fsub%2Fname`), which GitLab accepts wherever it takes `:id`.

What each call is (GitLab's documentation):

- the sticky note: `GET/POST /projects/:id/merge_requests/:iid/notes`,
  `PUT .../notes/:note_id` (https://docs.gitlab.com/ee/api/notes.html#merge-requests);
- commit statuses: `POST /projects/:id/statuses/:sha` with `state` pending,
  running, success, failed or canceled and `name` the context
  (https://docs.gitlab.com/ee/api/commits.html#set-the-pipeline-status-of-a-commit);
- the environment `pr-<iid>` with the preview's `external_url`:
  `GET/POST /projects/:id/environments`, `PUT .../environments/:environment_id`,
  `POST .../environments/:environment_id/stop` on close, `DELETE` of a stopped
  one when the merge request is reopened
  (https://docs.gitlab.com/ee/api/environments.html);
- who may run commands: `GET /projects/:id/members/all/:user_id`, its
  `access_level` (30 = Developer; 404 = no member)
  (https://docs.gitlab.com/ee/api/members.html);
- acknowledgements: `POST .../notes/:note_id/award_emoji`
  (https://docs.gitlab.com/ee/api/emoji_reactions.html).

The same rules as GitHub's client: retried on 5xx and 429 (waiting
`Retry-After` or until `RateLimit-Reset` when GitLab says, else the backoff
policy, on the injected clock); a note create re-sent only after `recover`
found no note the failed attempt made; errors (`ForgeApiError` with forge
"GitLab") carry no header and no token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

from attrs import define, field
from twisted.logger import Logger

from prevu.adapters.forge_http import ForgeApiError, ForgeHttp, Headers
from prevu.adapters.github_api import Comment, ForgeApi
from prevu.backoff import BackoffPolicy, exponential
from prevu.forge.commands import may_write_gitlab

STATES = {"pending": "pending", "success": "success", "failure": "failed", "error": "canceled"}
"""prevu's commit status states (GitHub's words) → GitLab's."""


def project(repo: str) -> str:
    """The `:id` of project `repo` (`group/sub/name`) in a path: URL-encoded."""
    return quote(repo, safe="")


def _reason(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "error"):
            value = body.get(key)
            if isinstance(value, str | dict | list):
                return str(value)[:200]
    return ""


@define
class GitlabApi:
    """
    `ForgeApi` for GitLab at `url` (the instance, such as
    `https://gitlab.com`). `reactor` makes connections and bounds each request
    (`timeout` seconds); `clock` times retries (a `Clock` in tests).
    """

    reactor: Any
    clock: Any
    url: str
    token: str = field(repr=False)
    backoff: BackoffPolicy = field(factory=lambda: exponential(1.0, 2.0, 60.0))
    attempts: int = 5
    timeout: float = 30.0
    log: Logger = field(factory=Logger)
    _http: ForgeHttp = field(init=False)
    _identity: str | None = field(default=None, init=False)
    _private: dict[str, bool] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self._http = ForgeHttp(
            self.reactor, self.clock, "GitLab", f"{self.url}/api/v4", _reason,
            self.backoff, self.attempts, self.timeout, self.log,
        )  # fmt: skip

    # --- the request loop -----------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ok: tuple[int, ...] = (200,),
        absent: tuple[int, ...] = (),
        recover: Callable[[], Awaitable[Any]] | None = None,
    ) -> tuple[int, Any]:
        """
        One call with retries (`ForgeHttp.call`); (status, decoded JSON or None).
        `absent` statuses are answers.
        """
        return await self._http.call(
            method, path, body, self._headers, ok=ok, absent=absent, recover=recover
        )

    async def _headers(self) -> Headers:
        return {
            b"accept": [b"application/json"],
            b"user-agent": [b"prevu"],
            b"private-token": [self.token.encode()],
        }

    def _notes(self, repo: str, number: int) -> str:
        return f"/projects/{project(repo)}/merge_requests/{number}/notes"

    # --- ForgeApi -----------------------------------------------------------------------

    async def identity(self) -> str:
        if self._identity is None:
            _, body = await self._call("GET", "/user")
            self._identity = str(body["username"])
        return self._identity

    async def repository_private(self, repo: str) -> bool:
        known = self._private.get(repo.lower())
        if known is None:
            _, body = await self._call("GET", f"/projects/{project(repo)}")
            known = self._private[repo.lower()] = body.get("visibility") != "public"
        return known

    async def comments(self, repo: str, number: int) -> list[Comment]:
        found: list[Comment] = []
        for page in range(1, 31):
            query = urlencode(
                {"per_page": 100, "page": page, "sort": "asc", "order_by": "created_at"}
            )
            _, body = await self._call("GET", f"{self._notes(repo, number)}?{query}")
            items = body if isinstance(body, list) else []
            found += [
                Comment(
                    int(n["id"]),
                    str((n.get("author") or {}).get("username", "")),
                    str(n.get("body") or ""),
                )
                for n in items
                if not n.get("system")
            ]
            if len(items) < 100:
                break
        return found

    async def create_comment(
        self, repo: str, number: int, body: str, recover: Callable[[], Awaitable[int | None]]
    ) -> int:
        _, made = await self._call(
            "POST", self._notes(repo, number), {"body": body}, ok=(201,), recover=recover
        )
        return int(made) if isinstance(made, int) else int(made["id"])

    async def edit_comment(self, repo: str, number: int, comment: int, body: str) -> bool:
        status, _ = await self._call(
            "PUT", f"{self._notes(repo, number)}/{comment}", {"body": body}, absent=(404,)
        )
        return status != 404

    async def set_status(
        self, repo: str, sha: str, state: str, description: str, target_url: str, context: str
    ) -> None:
        payload = {"state": STATES.get(state, state), "name": context, "description": description}
        if target_url:
            payload["target_url"] = target_url
        status, body = await self._call(
            "POST", f"/projects/{project(repo)}/statuses/{sha}", payload, ok=(200, 201),
            absent=(400,),
        )  # fmt: skip
        # GitLab refuses to set a status to the state it has ("Cannot transition
        # status via :enqueue from :pending"): that is the state wanted already.
        if status == 400 and "transition" not in _reason(body).lower():
            raise ForgeApiError("POST", f"/projects/{project(repo)}/statuses/{sha}", 400,
                                _reason(body), "GitLab")  # fmt: skip

    async def _environment(self, repo: str, name: str) -> tuple[int, str] | None:
        """The id and state (`available`, `stopping`, `stopped`) of environment `name`."""
        query = urlencode({"name": name})
        _, body = await self._call("GET", f"/projects/{project(repo)}/environments?{query}")
        for environment in body if isinstance(body, list) else []:
            if environment.get("name") == name:
                return int(environment["id"]), str(environment.get("state") or "")
        return None

    async def find_deployment(self, repo: str, sha: str, environment: str) -> int | None:
        # GitLab has one environment per merge request, whatever the commit. One
        # stopped when the merge request closed is deleted (GitLab deletes only
        # stopped ones) so that a reopened merge request gets an available one.
        found = await self._environment(repo, environment)
        if found is None:
            return None
        ident, state = found
        if state != "stopped":
            return ident
        await self._call(
            "DELETE", f"/projects/{project(repo)}/environments/{ident}", ok=(204,), absent=(404,)
        )
        return None

    async def create_deployment(self, repo: str, sha: str, environment: str) -> int:
        async def recover() -> int | None:
            found = await self._environment(repo, environment)
            return found[0] if found is not None else None

        payload = {"name": environment, "tier": "development"}
        _, made = await self._call(
            "POST", f"/projects/{project(repo)}/environments", payload, ok=(201,), recover=recover
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
        # The environment carries the preview's URL; its state is GitLab's own.
        if state == "success" and environment_url:
            await self._call(
                "PUT",
                f"/projects/{project(repo)}/environments/{deployment}",
                {"external_url": environment_url},
            )

    async def delete_environment(self, repo: str, environment: str) -> bool:
        """Stop the merge request's environment (GitLab keeps stopped ones listed)."""
        found = await self._environment(repo, environment)
        if found is None or found[1] == "stopped":
            return True
        status, _ = await self._call(
            "POST",
            f"/projects/{project(repo)}/environments/{found[0]}/stop",
            ok=(200, 201),
            absent=(403,),
        )
        return status != 403

    async def access_level(self, repo: str, user_id: int) -> int | None:
        """
        The access level of user `user_id` on `repo`, inherited ones included
        (10 Guest, 20 Reporter, 30 Developer, 40 Maintainer, 50 Owner); None
        when not a member.
        """
        status, body = await self._call(
            "GET", f"/projects/{project(repo)}/members/all/{int(user_id)}", absent=(404,)
        )
        if status == 404 or not isinstance(body, dict):
            return None
        level = body.get("access_level")
        return int(level) if isinstance(level, int) else None

    async def may_write(self, repo: str, user: str, user_id: int) -> bool:
        """True when GitLab says user `user_id` is a Developer or above of `repo`."""
        if not user_id:
            return False
        return may_write_gitlab(await self.access_level(repo, user_id))

    async def acknowledge(self, repo: str, number: int, comment: int, ok: bool) -> None:
        await self._call(
            "POST",
            f"{self._notes(repo, number)}/{comment}/award_emoji",
            {"name": "thumbsup" if ok else "confused"},
            ok=(200, 201),
            absent=(404,),  # already awarded: GitLab answers 404 "has already been taken"
        )


def _conforms(api: GitlabApi) -> ForgeApi:
    """mypy checks here that GitlabApi satisfies ForgeApi."""
    return api
