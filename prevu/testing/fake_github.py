"""
The one fake GitHub of prevu's tests: a small Klein app (listen on 127.0.0.1)
speaking GitHub's OAuth web flow, the REST calls prevu's login makes, and
the REST calls of pull request feedback (comments, statuses, deployments,
environments, GitHub App installation tokens).

Feedback responses start from the examples of GitHub's published OpenAPI
description, kept in tests/fixtures/github-api/ (SOURCE.md there says where
each comes from). The fake records every API call (`calls`), answers faults
on demand (`fail`: 5xx, 403 with `Retry-After`, secondary rate limits, and
502 *after* doing the work), answers 409 to a deployment create without
`required_contexts: []` as GitHub does while checks are pending, and refuses
App JWTs whose `exp` is more than 10 minutes ahead.

Shapes follow GitHub's documentation: the authorize page redirects to
`redirect_uri?code=…&state=…` (here at once, as if the user approved);
`POST /login/oauth/access_token` answers JSON with `access_token` or
`error` (status 200, like GitHub); `/user`, `/user/orgs`,
`/orgs/{org}/teams/{slug}/memberships/{user}` and `/repos/{owner}/{repo}`
answer `401 Bad credentials` without a valid bearer token and `404 Not Found`
for what the user cannot see.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
from attrs import define, field
from klein import Klein

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "github-api"


@functools.cache
def _example_text(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def example(name: str) -> dict[str, Any]:
    """A response example of tests/fixtures/github-api (a fresh copy)."""
    data: dict[str, Any] = json.loads(_example_text(name))
    return data


@define
class FakeUser:
    """A GitHub account and what it belongs to."""

    login: str
    orgs: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()  # "org/slug"
    repos: tuple[str, ...] = ()  # "owner/name" with read access


@define
class Call:
    """One API call the fake received."""

    method: str
    path: str
    body: Any
    authorization: str
    at: float = field(factory=time.perf_counter)
    """When it arrived (`time.perf_counter()`; the bench measures with it)."""


@define
class Fault:
    """
    An answer the fake gives instead of (or, `after`, after) doing the work, to
    the next `times` calls whose "METHOD path" contains `match`.
    """

    match: str
    status: int
    headers: dict[str, str] = field(factory=dict)
    body: dict[str, Any] = field(factory=lambda: {"message": "Server Error"})
    after: bool = False
    times: int = 1


@define
class FakeGithub:
    """The fake: who approves the next authorization, and the tokens handed out."""

    client_id: str = "fake-client-id"
    client_secret: str = "fake-client-secret"
    users: dict[str, FakeUser] = field(factory=dict)
    approving: str | None = None  # the login that "clicks Authorize"
    codes: dict[str, tuple[str, str]] = field(factory=dict)  # code -> (login, redirect_uri)
    tokens: dict[str, str] = field(factory=dict)  # token -> login
    requests: list[str] = field(factory=list)
    base: str = ""  # set by whoever listens: http://127.0.0.1:<port>
    # --- feedback ---------------------------------------------------------------
    now: Callable[[], float] = time.time
    repositories: dict[str, bool] = field(factory=dict)  # "owner/name" -> private
    apps: dict[int, tuple[str, str]] = field(factory=dict)  # app id -> (slug, public PEM)
    installations: dict[str, tuple[int, int]] = field(factory=dict)  # repo -> (install, app)
    installation_tokens: dict[str, tuple[int, float]] = field(factory=dict)  # -> (install, exp)
    token_lifetime: float = 3600.0
    calls: list[Call] = field(factory=list)
    faults: list[Fault] = field(factory=list)
    down: bool = False  # every feedback call answers 503
    comments: dict[int, dict[str, Any]] = field(factory=dict)
    statuses: list[dict[str, Any]] = field(factory=list)
    deployments: dict[int, dict[str, Any]] = field(factory=dict)
    deployment_statuses: list[dict[str, Any]] = field(factory=list)
    environments: set[str] = field(factory=set)  # "owner/name:env"
    admin: bool = True  # the credential may delete environments
    permissions: dict[str, str] = field(factory=dict)  # "owner/name:login" -> role_name
    reactions: list[dict[str, Any]] = field(factory=list)
    _ids: int = 100

    app = Klein()

    def resource(self) -> Any:
        return self.app.resource()

    def _json(self, request: Any, body: Any, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return json.dumps(body).encode()

    def _arg(self, request: Any, name: str) -> str:
        values = request.args.get(name.encode()) or [b""]
        return str(values[0].decode())

    def _user(self, request: Any) -> FakeUser | None:
        auth = (request.getHeader(b"authorization") or b"").decode()
        token = auth.split(" ", 1)[1] if " " in auth else ""
        login = self.tokens.get(token)
        return self.users.get(login) if login else None

    @app.route("/login/oauth/authorize", methods=["GET"])
    def authorize(self, request: Any) -> bytes:
        self.requests.append("authorize")
        if self._arg(request, "client_id") != self.client_id or self.approving is None:
            return self._json(request, {"error": "unknown client or no user"}, 400)
        code = secrets.token_hex(10)
        redirect_uri = self._arg(request, "redirect_uri")
        self.codes[code] = (self.approving, redirect_uri)
        query = urlencode({"code": code, "state": self._arg(request, "state")})
        request.setResponseCode(302)
        request.setHeader(b"location", f"{redirect_uri}?{query}".encode())
        return b""

    @app.route("/login/oauth/access_token", methods=["POST"])
    def access_token(self, request: Any) -> bytes:
        self.requests.append("access_token")
        if (
            self._arg(request, "client_id") != self.client_id
            or self._arg(request, "client_secret") != self.client_secret
        ):
            return self._json(request, {"error": "incorrect_client_credentials"})
        entry = self.codes.pop(self._arg(request, "code"), None)
        if entry is None or entry[1] != self._arg(request, "redirect_uri"):
            return self._json(
                request,
                {"error": "bad_verification_code", "error_description": "The code is incorrect."},
            )
        token = "gho_" + secrets.token_hex(16)
        self.tokens[token] = entry[0]
        return self._json(
            request, {"access_token": token, "token_type": "bearer", "scope": "read:org"}
        )

    @app.route("/user", methods=["GET"])
    def user(self, request: Any) -> bytes:
        self.requests.append("user")
        user = self._user(request)
        if user is None:
            return self._json(request, {"message": "Bad credentials"}, 401)
        return self._json(request, {"login": user.login, "id": abs(hash(user.login)) % 10**6})

    @app.route("/user/orgs", methods=["GET"])
    def user_orgs(self, request: Any) -> bytes:
        self.requests.append("user/orgs")
        user = self._user(request)
        if user is None:
            return self._json(request, {"message": "Bad credentials"}, 401)
        return self._json(request, [{"login": org} for org in user.orgs])

    @app.route("/orgs/<org>/teams/<slug>/memberships/<login>", methods=["GET"])
    def membership(self, request: Any, org: str, slug: str, login: str) -> bytes:
        self.requests.append(f"membership {org}/{slug}")
        user = self._user(request)
        if user is None:
            return self._json(request, {"message": "Bad credentials"}, 401)
        member = self.users.get(login)
        if member is None or f"{org}/{slug}" not in member.teams:
            return self._json(request, {"message": "Not Found"}, 404)
        return self._json(request, {"state": "active", "role": "member"})

    @app.route("/repos/<owner>/<name>", methods=["GET"])
    def repo(self, request: Any, owner: str, name: str) -> bytes:
        self.requests.append(f"repo {owner}/{name}")
        user = self._user(request)
        full = f"{owner}/{name}"
        if full.lower() in self.repositories:
            _actor, _, early = self._begin(request)
            if early is not None:
                return early
            return self._done(
                request, {"full_name": full, "private": self.repositories[full.lower()]}, 200
            )
        if user is None:
            return self._json(request, {"message": "Bad credentials"}, 401)
        if f"{owner}/{name}" not in user.repos:
            return self._json(request, {"message": "Not Found"}, 404)
        return self._json(
            request,
            {
                "full_name": f"{owner}/{name}",
                "private": True,
                "permissions": {"admin": False, "push": False, "pull": True},
            },
        )

    # --- feedback: plumbing ---------------------------------------------------------

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def add_app(self, app_id: int, slug: str, public_pem: str) -> None:
        """Register a GitHub App and its public key (JWTs are checked against it)."""
        self.apps[app_id] = (slug, public_pem)

    def install(self, repo: str, installation: int, app_id: int) -> None:
        """Install App `app_id` on `repo` as `installation`."""
        self.installations[repo.lower()] = (installation, app_id)

    def fail(
        self,
        match: str,
        status: int,
        *,
        after: bool = False,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer `status` to the next `times` calls matching `match` (see `Fault`)."""
        self.faults.append(
            Fault(match, status, headers or {}, body or {"message": "Server Error"}, after, times)
        )

    def rate_limit(self, match: str, retry_after: float) -> None:
        """A secondary rate limit: 403, `Retry-After`, GitHub's message."""
        self.fail(
            match,
            403,
            headers={"retry-after": str(int(retry_after))},
            body=example("secondary-rate-limit"),
        )

    def comments_on(self, repo: str, number: int) -> list[dict[str, Any]]:
        """The comments of one pull request, oldest first."""
        return [
            c
            for c in self.comments.values()
            if c["_repo"] == repo.lower() and c["_number"] == number
        ]

    def _fault(self, request: Any, after: bool) -> Fault | None:
        if self.down:
            return Fault("", 503, body={"message": "Service Unavailable"})
        line = f"{request.method.decode()} {request.path.decode()}"
        for fault in self.faults:
            if fault.after == after and fault.match in line and fault.times > 0:
                fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _answer(self, request: Any, fault: Fault) -> bytes:
        for name, value in fault.headers.items():
            request.setHeader(name.encode(), value.encode())
        return self._json(request, fault.body, fault.status)

    def _begin(self, request: Any) -> tuple[str | None, Any, bytes | None]:
        """Record the call; (actor, body, early answer)."""
        raw = request.content.read() if request.content is not None else b""
        body = json.loads(raw) if raw else None
        authorization = (request.getHeader(b"authorization") or b"").decode()
        self.calls.append(Call(request.method.decode(), request.uri.decode(), body, authorization))
        fault = self._fault(request, after=False)
        if fault is not None:
            return None, body, self._answer(request, fault)
        actor = self._actor(authorization)
        if actor is None:
            return None, body, self._json(request, {"message": "Bad credentials"}, 401)
        return actor, body, None

    def _done(self, request: Any, body: Any, code: int) -> bytes:
        fault = self._fault(request, after=True)
        if fault is not None:
            return self._answer(request, fault)
        return self._json(request, body, code)

    def _actor(self, authorization: str) -> str | None:
        token = authorization.split(" ", 1)[1] if " " in authorization else ""
        if token in self.tokens:
            return self.tokens[token]
        entry = self.installation_tokens.get(token)
        if entry is not None and self.now() < entry[1]:
            for installation, app_id in self.installations.values():
                if installation == entry[0]:
                    return f"{self.apps[app_id][0]}[bot]"
        return None

    def _app(self, request: Any) -> tuple[int | None, bytes | None]:
        """The App a JWT authenticates; refuses `exp` more than 10 minutes ahead."""
        raw = request.content.read() if request.content is not None else b""
        authorization = (request.getHeader(b"authorization") or b"").decode()
        self.calls.append(
            Call(
                request.method.decode(),
                request.uri.decode(),
                json.loads(raw) if raw else None,
                authorization,
            )
        )
        fault = self._fault(request, after=False)
        if fault is not None:
            return None, self._answer(request, fault)
        token = authorization.split(" ", 1)[1] if " " in authorization else ""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
            app_id = int(claims["iss"])
            jwt.decode(
                token,
                self.apps[app_id][1],
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False},
            )
        except (jwt.PyJWTError, KeyError, ValueError):
            return None, self._json(
                request, {"message": "A JSON web token could not be decoded"}, 401
            )
        now = self.now()
        if claims.get("exp", 0) - now > 600:
            return None, self._json(
                request,
                {"message": "'Expiration time' claim ('exp') is too far in the future"},
                401,
            )
        if claims.get("exp", 0) <= now or claims.get("iat", now + 1) > now:
            return None, self._json(
                request, {"message": "'Issued at' or 'Expiration time' claim is invalid"}, 401
            )
        return app_id, None

    # --- feedback: GitHub Apps --------------------------------------------------------

    @app.route("/app", methods=["GET"])
    def get_app(self, request: Any) -> bytes:
        app_id, refused = self._app(request)
        if refused is not None:
            return refused
        assert app_id is not None
        body = example("integration")
        body.update(id=app_id, slug=self.apps[app_id][0])
        return self._json(request, body)

    @app.route("/repos/<owner>/<name>/installation", methods=["GET"])
    def repo_installation(self, request: Any, owner: str, name: str) -> bytes:
        app_id, refused = self._app(request)
        if refused is not None:
            return refused
        found = self.installations.get(f"{owner}/{name}".lower())
        if found is None or found[1] != app_id:
            return self._json(request, {"message": "Not Found"}, 404)
        body = example("installation")
        body.update(id=found[0], app_id=app_id)
        return self._json(request, body)

    @app.route("/app/installations/<int:installation>/access_tokens", methods=["POST"])
    def access_tokens(self, request: Any, installation: int) -> bytes:
        app_id, refused = self._app(request)
        if refused is not None:
            return refused
        if not any(i == installation and a == app_id for i, a in self.installations.values()):
            return self._json(request, {"message": "Not Found"}, 404)
        token = "ghs_" + secrets.token_hex(18)
        expires = self.now() + self.token_lifetime
        self.installation_tokens[token] = (installation, expires)
        body = example("installation-token")
        stamp = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body.update(token=token, expires_at=stamp)
        return self._json(request, body, 201)

    # --- feedback: comments -----------------------------------------------------------

    def _comment_body(self, comment: dict[str, Any]) -> dict[str, Any]:
        body = example("issue-comment")
        body.update({k: v for k, v in comment.items() if not k.startswith("_")})
        return body

    @app.route("/repos/<owner>/<name>/issues/<int:number>/comments", methods=["GET"])
    def list_comments(self, request: Any, owner: str, name: str, number: int) -> bytes:
        _actor, _, early = self._begin(request)
        if early is not None:
            return early
        page = int(self._arg(request, "page") or 1)
        per_page = int(self._arg(request, "per_page") or 30)
        found = self.comments_on(f"{owner}/{name}", number)
        items = found[(page - 1) * per_page : page * per_page]
        return self._done(request, [self._comment_body(c) for c in items], 200)

    @app.route("/repos/<owner>/<name>/issues/<int:number>/comments", methods=["POST"])
    def create_comment(self, request: Any, owner: str, name: str, number: int) -> bytes:
        actor, body, early = self._begin(request)
        if early is not None:
            return early
        comment_id = self.next_id()
        self.comments[comment_id] = {
            "id": comment_id,
            "body": body["body"],
            "user": {"login": actor, "id": 1},
            "_repo": f"{owner}/{name}".lower(),
            "_number": number,
            "_edits": 0,
        }
        return self._done(request, self._comment_body(self.comments[comment_id]), 201)

    @app.route("/repos/<owner>/<name>/issues/comments/<int:comment>", methods=["PATCH"])
    def edit_comment(self, request: Any, owner: str, name: str, comment: int) -> bytes:
        actor, body, early = self._begin(request)
        if early is not None:
            return early
        found = self.comments.get(comment)
        if found is None:
            return self._json(request, {"message": "Not Found"}, 404)
        if found["user"]["login"] != actor:
            return self._json(request, {"message": "Must have admin rights"}, 403)
        found["body"] = body["body"]
        found["_edits"] += 1
        return self._done(request, self._comment_body(found), 200)

    # --- feedback: statuses, deployments, environments -------------------------------------

    @app.route("/repos/<owner>/<name>/statuses/<sha>", methods=["POST"])
    def create_status(self, request: Any, owner: str, name: str, sha: str) -> bytes:
        _actor, body, early = self._begin(request)
        if early is not None:
            return early
        status = example("status")
        status.update(
            body, id=self.next_id(), url=f"{self.base}/repos/{owner}/{name}/statuses/{sha}"
        )
        status["_sha"] = sha
        self.statuses.append(status)
        return self._done(request, {k: v for k, v in status.items() if k != "_sha"}, 201)

    @app.route("/repos/<owner>/<name>/deployments", methods=["GET"])
    def list_deployments(self, request: Any, owner: str, name: str) -> bytes:
        _actor, _, early = self._begin(request)
        if early is not None:
            return early
        sha, environment = self._arg(request, "sha"), self._arg(request, "environment")
        found = [
            d
            for d in self.deployments.values()
            if d["_repo"] == f"{owner}/{name}".lower()
            and (not sha or d["sha"] == sha)
            and (not environment or d["environment"] == environment)
        ]
        return self._done(
            request,
            [{k: v for k, v in d.items() if not k.startswith("_")} for d in reversed(found)],
            200,
        )

    @app.route("/repos/<owner>/<name>/deployments", methods=["POST"])
    def create_deployment(self, request: Any, owner: str, name: str) -> bytes:
        actor, body, early = self._begin(request)
        if early is not None:
            return early
        if body.get("required_contexts") != []:
            # GitHub checks the commit's statuses; prevu's own is pending then.
            return self._json(
                request,
                {"message": "Conflict: Commit status checks failed for " + str(body.get("ref"))},
                409,
            )
        deployment = example("deployment")
        deployment_id = self.next_id()
        deployment.update(
            id=deployment_id,
            sha=body["ref"],
            ref=body["ref"],
            environment=body["environment"],
            original_environment=body["environment"],
            description=body.get("description"),
            transient_environment=body.get("transient_environment", False),
            production_environment=body.get("production_environment", False),
            url=f"{self.base}/repos/{owner}/{name}/deployments/{deployment_id}",
        )
        deployment["creator"] = {"login": actor, "id": 1}
        deployment["_repo"] = f"{owner}/{name}".lower()
        deployment["_state"] = "created"
        self.deployments[deployment_id] = deployment
        self.environments.add(f"{owner}/{name}:{body['environment']}".lower())
        return self._done(
            request, {k: v for k, v in deployment.items() if not k.startswith("_")}, 201
        )

    @app.route("/repos/<owner>/<name>/deployments/<int:deployment>/statuses", methods=["POST"])
    def create_deployment_status(
        self, request: Any, owner: str, name: str, deployment: int
    ) -> bytes:
        _actor, body, early = self._begin(request)
        if early is not None:
            return early
        found = self.deployments.get(deployment)
        if found is None:
            return self._json(request, {"message": "Not Found"}, 404)
        status = example("deployment-status")
        status.update(body, id=self.next_id(), environment=found["environment"])
        status["_deployment"] = deployment
        found["_state"] = body["state"]
        self.deployment_statuses.append(status)
        return self._done(request, {k: v for k, v in status.items() if not k.startswith("_")}, 201)

    @app.route("/repos/<owner>/<name>/environments/<environment>", methods=["DELETE"])
    def delete_environment(self, request: Any, owner: str, name: str, environment: str) -> bytes:
        _actor, _, early = self._begin(request)
        if early is not None:
            return early
        if not self.admin:
            return self._json(request, {"message": "Resource not accessible by integration"}, 403)
        key = f"{owner}/{name}:{environment}".lower()
        if key not in self.environments:
            return self._json(request, {"message": "Not Found"}, 404)
        self.environments.discard(key)
        request.setResponseCode(204)
        return b""


    # --- commands: permissions, reactions -------------------------------------------------

    @app.route("/repos/<owner>/<name>/collaborators/<login>/permission", methods=["GET"])
    def collaborator_permission(self, request: Any, owner: str, name: str, login: str) -> bytes:
        """
        `role_name` of `login`: from `permissions`, `read` for other known
        users (GitHub answers read for anyone on a public repository), 404
        for an unknown login.
        """
        _actor, _, early = self._begin(request)
        if early is not None:
            return early
        role = self.permissions.get(f"{owner}/{name}:{login}".lower())
        if role is None and login not in self.users:
            return self._json(request, {"message": "Not Found"}, 404)
        role = role or "read"
        body = example("repository-collaborator-permission")
        base = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read"}
        body.update(permission=base.get(role, role), role_name=role)
        body["user"].update(login=login)
        return self._done(request, body, 200)

    @app.route("/repos/<owner>/<name>/issues/comments/<int:comment>/reactions", methods=["POST"])
    def create_reaction(self, request: Any, owner: str, name: str, comment: int) -> bytes:
        actor, body, early = self._begin(request)
        if early is not None:
            return early
        if body.get("content") not in ("+1", "-1", "laugh", "confused", "heart", "hooray",
                                       "rocket", "eyes"):  # fmt: skip
            return self._json(request, {"message": "Validation Failed"}, 422)
        reaction = example("reaction")
        reaction.update(id=self.next_id(), content=body["content"])
        reaction["user"].update(login=actor)
        reaction["_comment"] = comment
        self.reactions.append(reaction)
        return self._done(request, {k: v for k, v in reaction.items() if k != "_comment"}, 201)


def listen(reactor: Any, fake: FakeGithub) -> Any:
    """Serve `fake` on 127.0.0.1 (an ephemeral port); sets `fake.base`; answers the port."""
    from twisted.web.server import Site

    port = reactor.listenTCP(0, Site(fake.resource()), interface="127.0.0.1")
    fake.base = f"http://127.0.0.1:{port.getHost().port}"
    return port
