"""
A small fake of GitHub's OAuth web flow and the REST calls prevu's login
makes, as a Klein app for tests (listen on 127.0.0.1).

Shapes follow GitHub's documentation: the authorize page redirects to
`redirect_uri?code=…&state=…` (here at once, as if the user approved);
`POST /login/oauth/access_token` answers JSON with `access_token` or
`error` (status 200, like GitHub); `/user`, `/user/orgs`,
`/orgs/{org}/teams/{slug}/memberships/{user}` and `/repos/{owner}/{repo}`
answer `401 Bad credentials` without a valid bearer token and `404 Not Found`
for what the user cannot see.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import urlencode

from attrs import define, field
from klein import Klein


@define
class FakeUser:
    """A GitHub account and what it belongs to."""

    login: str
    orgs: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()  # "org/slug"
    repos: tuple[str, ...] = ()  # "owner/name" with read access


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
