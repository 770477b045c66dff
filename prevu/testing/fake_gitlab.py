"""
The one fake GitLab of prevu's tests: a small Klein app (listen on 127.0.0.1)
speaking the REST calls (API v4) of merge request feedback and `/preview`
commands: MR notes, award emoji, commit statuses, environments, project
members, the current user and the project.

Responses start from the examples of GitLab's API documentation, kept in
tests/fixtures/gitlab-api/ (SOURCE.md there names each page), for example
(https://docs.gitlab.com/ee/api/members.html, "Get a member of a group or
project, including inherited and invited members"):

    {"id": 1, "username": "raymond_smith", "name": "Raymond Smith",
     "state": "active", "access_level": 30, ...}

Behaviour GitLab documents and the fake keeps: `PRIVATE-TOKEN` must name a
known token (else `401 {"message": "401 Unauthorized"}`); a project is named
by its id or its URL-encoded path; unknown objects answer
`404 {"message": "404 Not found"}`; a member who is not one answers 404; a
note is edited only by its author (else 403); a commit status set to the
state it already has answers 400 "Cannot transition status"; a stopped
environment says `state: "stopped"`. Every call is recorded (`calls`);
`fail(match, status)` answers a fault to the next calls whose
"METHOD path" contains `match` (`after=True`: after doing the work).
"""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from attrs import define, field
from klein import Klein

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gitlab-api"


@functools.cache
def _example_text(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def example(name: str) -> dict[str, Any]:
    """A response example of tests/fixtures/gitlab-api (a fresh copy)."""
    data: dict[str, Any] = json.loads(_example_text(name))
    return data


@define
class GitlabCall:
    """One API call the fake received (path as sent, still URL-encoded)."""

    method: str
    path: str
    body: Any
    token: str
    at: float = field(factory=time.perf_counter)


@define
class GitlabFault:
    """An answer given instead of (or, `after`, after) the work, `times` times."""

    match: str
    status: int
    body: dict[str, Any] = field(factory=lambda: {"message": "500 Internal Server Error"})
    after: bool = False
    times: int = 1


@define
class FakeProject:
    """A project: its id, path, visibility and members (user id → access level)."""

    id: int
    path: str
    visibility: str = "private"
    members: dict[int, int] = field(factory=dict)


@define
class FakeGitlab:
    """The fake's state; `base` is set by `listen` (http://127.0.0.1:<port>)."""

    users: dict[int, str] = field(factory=dict)  # user id -> username
    tokens: dict[str, int] = field(factory=dict)  # PRIVATE-TOKEN -> user id
    projects: dict[str, FakeProject] = field(factory=dict)  # lower-cased path -> project
    notes: dict[int, dict[str, Any]] = field(factory=dict)
    awards: list[dict[str, Any]] = field(factory=list)
    statuses: list[dict[str, Any]] = field(factory=list)
    environments: dict[int, dict[str, Any]] = field(factory=dict)
    calls: list[GitlabCall] = field(factory=list)
    faults: list[GitlabFault] = field(factory=list)
    base: str = ""
    _ids: int = 1000

    app = Klein()

    def resource(self) -> Any:
        return self.app.resource()

    # --- set-up ---------------------------------------------------------------------

    def add_user(self, user_id: int, username: str, token: str | None = None) -> None:
        """A GitLab account; `token` its personal access token."""
        self.users[user_id] = username
        if token is not None:
            self.tokens[token] = user_id

    def add_project(self, path: str, visibility: str = "private", **members: int) -> FakeProject:
        """A project; `members` maps usernames to access levels (10..50)."""
        ids = {name: uid for uid, name in self.users.items()}
        project = FakeProject(
            self.next_id(), path, visibility, {ids[name]: level for name, level in members.items()}
        )
        self.projects[path.lower()] = project
        return project

    def fail(self, match: str, status: int, *, after: bool = False, times: int = 1) -> None:
        """Answer `status` to the next `times` calls whose "METHOD path" contains `match`."""
        self.faults.append(GitlabFault(match, status, {"message": f"{status} fault"}, after, times))

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def write_note(self, path: str, iid: int, user_id: int, body: str) -> dict[str, Any]:
        """A note written on the merge request by user `user_id` (as if through GitLab's UI)."""
        project = self.projects[path.lower()]
        _, note = self.create_note(project, (str(iid),), None, {"body": body}, user_id)
        written: dict[str, Any] = note
        return written

    def notes_on(self, path: str, iid: int) -> list[dict[str, Any]]:
        """The notes of one merge request, oldest first."""
        return [
            n for n in self.notes.values() if n["_project"] == path.lower() and n["_iid"] == iid
        ]

    def statuses_of(self, sha: str) -> list[str]:
        """The states set on commit `sha`, in order."""
        return [s["status"] for s in self.statuses if s["sha"] == sha]

    # --- plumbing ---------------------------------------------------------------------

    def _fault(self, line: str, after: bool) -> GitlabFault | None:
        for fault in self.faults:
            if fault.after == after and fault.match in line and fault.times > 0:
                fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _project(self, ident: str) -> FakeProject | None:
        if ident.isdigit():
            return next((p for p in self.projects.values() if p.id == int(ident)), None)
        return self.projects.get(ident.lower())

    @app.route("/api/v4/<path:rest>", methods=["GET", "POST", "PUT", "DELETE"])
    def api(self, request: Any, rest: str) -> bytes:
        method = request.method.decode()
        raw_path = request.path.decode()
        raw = request.content.read() if request.content is not None else b""
        body = json.loads(raw) if raw else None
        token = (request.getHeader(b"private-token") or b"").decode()
        self.calls.append(GitlabCall(method, request.uri.decode(), body, token))
        line = f"{method} {raw_path}"
        fault = self._fault(line, after=False)
        if fault is not None:
            return self._json(request, fault.body, fault.status)
        actor = self.tokens.get(token)
        if actor is None:
            return self._json(request, {"message": "401 Unauthorized"}, 401)
        # Segments decoded one by one: `group%2Fname` stays one segment (the project).
        segments = [unquote(s) for s in raw_path.split("/")[3:]]
        query = {k.decode(): v[0].decode() for k, v in request.args.items()}
        status, answer = self._route(method, segments, query, body, actor)
        fault = self._fault(line, after=True)
        if fault is not None:
            return self._json(request, fault.body, fault.status)
        if status == 204:
            request.setResponseCode(204)
            return b""
        return self._json(request, answer, status)

    def _json(self, request: Any, body: Any, code: int) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    def _route(
        self, method: str, segments: list[str], query: dict[str, str], body: Any, actor: int
    ) -> tuple[int, Any]:
        if segments == ["user"] and method == "GET":
            user = example("user")
            user.update(id=actor, username=self.users[actor])
            return 200, user
        if len(segments) < 2 or segments[0] != "projects":
            return 404, {"message": "404 Not found"}
        project = self._project(segments[1])
        if project is None:
            return 404, {"message": "404 Project Not Found"}
        rest = "/".join(segments[2:])
        for pattern, verb, handler in _ROUTES:
            found = re.fullmatch(pattern, rest)
            if found is not None and verb == method:
                answer: tuple[int, Any] = handler(self, project, found.groups(), query, body, actor)
                return answer
        return 404, {"message": "404 Not found"}

    # --- handlers -------------------------------------------------------------------------

    def get_project(self, project: FakeProject, *_: Any) -> tuple[int, Any]:
        answer = example("project")
        answer.update(
            id=project.id,
            path_with_namespace=project.path,
            visibility=project.visibility,
            name=project.path.rsplit("/", 1)[-1],
        )
        return 200, answer

    def _note_json(self, note: dict[str, Any]) -> dict[str, Any]:
        answer = example("note")
        answer.update({k: v for k, v in note.items() if not k.startswith("_")})
        return answer

    def list_notes(
        self, project: FakeProject, groups: tuple[str, ...], query: dict[str, str], *_: Any
    ) -> tuple[int, Any]:
        page, per_page = int(query.get("page", 1)), int(query.get("per_page", 20))
        notes = self.notes_on(project.path, int(groups[0]))
        items = notes[(page - 1) * per_page : page * per_page]
        return 200, [self._note_json(n) for n in items]

    def create_note(
        self, project: FakeProject, groups: tuple[str, ...], _q: Any, body: Any, actor: int
    ) -> tuple[int, Any]:
        note_id = self.next_id()
        self.notes[note_id] = {
            "id": note_id,
            "body": body["body"],
            "author": {"id": actor, "username": self.users[actor]},
            "noteable_iid": int(groups[0]),
            "project_id": project.id,
            "system": False,
            "_project": project.path.lower(),
            "_iid": int(groups[0]),
            "_edits": 0,
        }
        return 201, self._note_json(self.notes[note_id])

    def edit_note(
        self, project: FakeProject, groups: tuple[str, ...], _q: Any, body: Any, actor: int
    ) -> tuple[int, Any]:
        note = self.notes.get(int(groups[1]))
        if note is None or note["_project"] != project.path.lower():
            return 404, {"message": "404 Not found"}
        if note["author"]["id"] != actor:
            return 403, {"message": "403 Forbidden"}
        note["body"] = body["body"]
        note["_edits"] += 1
        return 200, self._note_json(note)

    def award(
        self, project: FakeProject, groups: tuple[str, ...], _q: Any, body: Any, actor: int
    ) -> tuple[int, Any]:
        note_id = int(groups[1])
        note = self.notes.get(note_id)
        if note is None or note["_project"] != project.path.lower():
            return 404, {"message": "404 Not found"}
        if any(a["awardable_id"] == note_id and a["name"] == body["name"] for a in self.awards):
            return 404, {"message": "404 Award Emoji Name has already been taken"}
        award = example("award-emoji")
        award.update(
            id=self.next_id(),
            name=body["name"],
            awardable_id=note_id,
            user={"id": actor, "username": self.users[actor]},
        )
        self.awards.append(award)
        return 201, award

    def set_status(
        self, project: FakeProject, groups: tuple[str, ...], _q: Any, body: Any, actor: int
    ) -> tuple[int, Any]:
        sha, name = groups[0], body.get("name", "default")
        if body["state"] not in ("pending", "running", "success", "failed", "canceled", "skipped"):
            return 400, {"message": "state does not have a valid value"}
        same = [s for s in self.statuses if s["sha"] == sha and s["name"] == name]
        if same and same[-1]["status"] == body["state"]:
            return 400, {"message": f"Cannot transition status via :enqueue from :{body['state']}"}
        status = example("commit-status")
        status.update(
            id=self.next_id(),
            sha=sha,
            name=name,
            status=body["state"],
            description=body.get("description"),
            target_url=body.get("target_url"),
        )
        self.statuses.append(status)
        return 201, status

    def list_environments(
        self, project: FakeProject, _g: Any, query: dict[str, str], *_: Any
    ) -> tuple[int, Any]:
        found = [
            e
            for e in self.environments.values()
            if e["_project"] == project.path.lower()
            and ("name" not in query or e["name"] == query["name"])
        ]
        return 200, [{k: v for k, v in e.items() if not k.startswith("_")} for e in found]

    def create_environment(
        self, project: FakeProject, _g: Any, _q: Any, body: Any, actor: int
    ) -> tuple[int, Any]:
        name = body["name"]
        if any(
            e["name"] == name and e["_project"] == project.path.lower()
            for e in self.environments.values()
        ):
            return 400, {"message": {"name": ["has already been taken"]}}
        environment = example("environment")
        environment.update(
            id=self.next_id(),
            name=name,
            slug=name,
            external_url=body.get("external_url"),
            tier=body.get("tier", "other"),
            state="available",
        )
        environment["_project"] = project.path.lower()
        self.environments[environment["id"]] = environment
        return 201, {k: v for k, v in environment.items() if not k.startswith("_")}

    def _environment(self, project: FakeProject, ident: str) -> dict[str, Any] | None:
        found = self.environments.get(int(ident))
        return found if found is not None and found["_project"] == project.path.lower() else None

    def update_environment(
        self, project: FakeProject, groups: tuple[str, ...], _q: Any, body: Any, actor: int
    ) -> tuple[int, Any]:
        environment = self._environment(project, groups[0])
        if environment is None:
            return 404, {"message": "404 Not found"}
        if "external_url" in body:
            environment["external_url"] = body["external_url"]
        return 200, {k: v for k, v in environment.items() if not k.startswith("_")}

    def stop_environment(
        self, project: FakeProject, groups: tuple[str, ...], *_: Any
    ) -> tuple[int, Any]:
        environment = self._environment(project, groups[0])
        if environment is None:
            return 404, {"message": "404 Not found"}
        environment["state"] = "stopped"
        return 200, {k: v for k, v in environment.items() if not k.startswith("_")}

    def delete_environment(
        self, project: FakeProject, groups: tuple[str, ...], *_: Any
    ) -> tuple[int, Any]:
        environment = self._environment(project, groups[0])
        if environment is None:
            return 404, {"message": "404 Not found"}
        if environment["state"] != "stopped":
            return 403, {"message": "403 Forbidden"}  # GitLab deletes stopped environments only
        del self.environments[environment["id"]]
        return 204, None

    def member(self, project: FakeProject, groups: tuple[str, ...], *_: Any) -> tuple[int, Any]:
        user_id = int(groups[0])
        level = project.members.get(user_id)
        if level is None:
            return 404, {"message": "404 Not found"}
        answer = example("member")
        answer.update(id=user_id, username=self.users.get(user_id, ""), access_level=level)
        return 200, answer


_ROUTES: tuple[tuple[str, str, Any], ...] = (
    (r"", "GET", FakeGitlab.get_project),
    (r"merge_requests/(\d+)/notes", "GET", FakeGitlab.list_notes),
    (r"merge_requests/(\d+)/notes", "POST", FakeGitlab.create_note),
    (r"merge_requests/(\d+)/notes/(\d+)", "PUT", FakeGitlab.edit_note),
    (r"merge_requests/(\d+)/notes/(\d+)/award_emoji", "POST", FakeGitlab.award),
    (r"statuses/([0-9a-f]{40})", "POST", FakeGitlab.set_status),
    (r"environments", "GET", FakeGitlab.list_environments),
    (r"environments", "POST", FakeGitlab.create_environment),
    (r"environments/(\d+)", "PUT", FakeGitlab.update_environment),
    (r"environments/(\d+)/stop", "POST", FakeGitlab.stop_environment),
    (r"environments/(\d+)", "DELETE", FakeGitlab.delete_environment),
    (r"members/all/(\d+)", "GET", FakeGitlab.member),
)
"""Paths under `/projects/:id/` → handler (documented in SOURCE.md's pages)."""


def listen(reactor: Any, fake: FakeGitlab) -> Any:
    """Serve `fake` on 127.0.0.1 (an ephemeral port); sets `fake.base`; answers the port."""
    from twisted.web.server import Site

    port = reactor.listenTCP(0, Site(fake.resource()), interface="127.0.0.1")
    fake.base = f"http://127.0.0.1:{port.getHost().port}"
    return port
