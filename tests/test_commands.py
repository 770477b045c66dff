"""
`/preview` commands on both forges (issue 16): webhooks through the control
app (StubTreq), the orchestrator on fakes (Harness, a Clock), and the
command runner and feedback publishers talking to the fake GitHub and the
fake GitLab over real loopback HTTP. Permission comes from the forge's
answer (collaborator `role_name`, member `access_level`), never from
`author_association`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from prevu.adapters.github_api import GithubApi
from prevu.adapters.gitlab_api import GitlabApi
from prevu.config import Config, GithubConfig, GitlabConfig, RepoConfig, ServerConfig
from prevu.feedback.commands import CommandRunner
from prevu.feedback.memory import FeedbackMemory
from prevu.feedback.publisher import Publisher
from prevu.forge import commands
from prevu.forge.commands import CommandError, command_lines, parse_command
from prevu.testing import fake_github, fake_gitlab
from prevu.testing.fake_github import FakeGithub, FakeUser
from prevu.testing.fake_gitlab import FakeGitlab
from tests.support.timeouts import sleep
from tests.test_webhooks import CLONE, FIXTURES, SECRET, TOKEN, Client

EPOCH = 1_700_000_000.0
GH_TOKEN = "ghp_commandsbottoken000000"
GL_TOKEN = "glpat-commandsbottoken0000"
GL_CLONE = "http://example.com/gitlabhq/gitlab-test.git"
GL_REPO = "gitlabhq/gitlab-test"
GH_REPO = "Codertocat/Hello-World"
GH_PREVIEW, GL_PREVIEW = "pr-2-hello-world", "pr-1-gitlab-test"
SHA_A, SHA_B = "a" * 40, "b" * 40
DEV, READER, BOT = 11, 12, 13


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the pure part: where a comment holds a command, and the verbs ---------------------


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ("/preview destroy", ["/preview destroy"]),
        ("LGTM\n  /preview keep\n", ["/preview keep"]),
        ("> /preview destroy", []),
        ("   > quoted\n> /preview destroy", []),
        ("```\n/preview destroy\n```", []),
        ("~~~~ sh\n/preview destroy\n~~~\n/preview x\n~~~~", []),
        ("```\ncode\n```\n/preview help", ["/preview help"]),
        ("    /preview destroy", []),
        ("\t/preview destroy", []),
        ("`/preview destroy`", []),
        ("see `x` /preview destroy", []),
        ("/previewdestroy", []),
    ],
)
def test_command_lines_skip_quotes_and_code(body: str, found: list[str]) -> None:
    """Only lines starting with /preview outside fences, indented code and quotes count."""
    assert command_lines(body) == found


@given(st.lists(st.text(alphabet="abc /`>~\t\n-", max_size=30), max_size=6))
def test_no_command_escapes_a_fence_or_a_quote(lines: list[str]) -> None:
    """Whatever surrounds it, a /preview line inside a fence or a quote never runs."""
    text = "\n".join(line.replace("`", "").replace("~", "") for line in lines)
    fenced = f"{text}\n```\n/preview destroy\n```\n> /preview destroy\n"
    assert "/preview destroy" not in command_lines(fenced)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("/preview", "no command given"),
        ("/preview launch", "unknown command `launch`"),
        ("/preview extend", "needs one duration"),
        ("/preview extend soon", "expected a duration"),
        ("/preview extend 0", "more than 0"),
        ("/preview approve xyz", "not a commit SHA"),
        ("/preview approve abc", "not a commit SHA"),
        ("/preview destroy now", "takes no argument"),
    ],
)
def test_bad_commands_say_why(line: str, reason: str) -> None:
    """A command prevu cannot run raises CommandError with the reply's text."""
    with pytest.raises(CommandError) as caught:
        parse_command(line)
    assert reason in str(caught.value)


def test_the_registry_is_the_one_list_of_verbs() -> None:
    """`help` lists exactly the registry's verbs; only help needs no write access."""
    text = commands.help_text()
    for name, verb in commands.VERBS.items():
        assert f"`{verb.usage}`" in text and verb.name == name
    assert {n for n, v in commands.VERBS.items() if not v.write} == {"help"}
    assert parse_command("/preview EXTEND 3d") == commands.Parsed("extend", ("3d",))
    assert parse_command("/preview approve ABCDEF0") == commands.Parsed("approve", ("abcdef0",))


@pytest.mark.parametrize(
    ("role", "level", "may"),
    [
        ("admin", 50, True),
        ("maintain", 40, True),
        ("write", 30, True),
        ("triage", 20, False),
        ("read", 10, False),
        (None, None, False),
    ],
)
def test_write_access_rules(role: str | None, level: int | None, may: bool) -> None:
    """GitHub role_name admin/maintain/write; GitLab access level >= 30 (Developer)."""
    assert commands.may_write_github(role) is may
    assert commands.may_write_gitlab(level) is may


@pytest.mark.parametrize(
    ("action", "created", "updated", "runs"),
    [
        ("create", "2015-05-17 18:21:36 UTC", "2015-05-17 18:21:36 UTC", True),
        ("update", "2015-05-17 18:21:36 UTC", "2015-05-17 18:25:00 UTC", False),
        (None, "2015-05-17 18:21:36 UTC", "2015-05-17 18:21:36 UTC", True),
        (None, "2015-05-17 18:21:36 UTC", "2015-05-17 18:25:00 UTC", False),
    ],
)
def test_gitlab_edited_notes_never_run(
    action: str | None, created: str, updated: str, runs: bool
) -> None:
    """A Note Hook for an edit (`action: update`, or older GitLab's later updated_at) is ignored."""
    from prevu.forge import gitlab
    from prevu.forge.events import Command

    data = json.loads((FIXTURES / "gitlab/note-merge_request.json").read_text())
    data["object_attributes"].update(
        note="/preview destroy", created_at=created, updated_at=updated
    )
    if action is not None:
        data["object_attributes"]["action"] = action
    event = gitlab.parse("Note Hook", "u", json.dumps(data).encode())
    assert isinstance(event, Command) is runs


# --- both forges over loopback ----------------------------------------------------------


class Forges:
    """The control app and orchestrator (fakes), both fake forges, runner and publishers."""

    def __init__(self, reactor: Any, tmp: Path) -> None:
        self.github = FakeGithub()
        self.gitlab = FakeGitlab()
        self.ports = [
            fake_github.listen(reactor, self.github),
            fake_gitlab.listen(reactor, self.gitlab),
        ]
        config = Config(
            server=ServerConfig(state_dir=str(tmp / "state"), api_token=TOKEN),
            github=GithubConfig(webhook_secret=SECRET, token=GH_TOKEN),
            gitlab=GitlabConfig(webhook_token="gl-token", token=GL_TOKEN),
            repos=(
                RepoConfig(GH_REPO, access="public", forks="approve"),
                RepoConfig(GL_REPO, access="public", forks="approve"),
            ),
        )
        self.client = Client(tmp, config)
        self.h = self.client.h
        self.h.clock.advance(EPOCH)
        clock = self.h.clock
        self.gh_api = GithubApi(reactor, clock, self.github.base, token=GH_TOKEN)
        self.gl_api = GitlabApi(reactor, clock, self.gitlab.base, GL_TOKEN)
        memory = FeedbackMemory(str(tmp / "state"))
        self.publishers = {
            "github": Publisher(self.gh_api, clock, memory, "https://prevu.example"),
            "gitlab": Publisher(
                self.gl_api, clock, memory, "https://prevu.example", forge="gitlab"
            ),
        }
        for publisher in self.publishers.values():
            self.h.orchestrator.watch(publisher.on_record)
        self.runner = CommandRunner(
            self.h.orchestrator,
            {"github": self.gh_api, "gitlab": self.gl_api},
            self.publishers,
            self.h.store.fill_outcome,
        )
        self.client.webhooks.commands = self.runner.submit
        self._forge_users()
        self.deliveries = 0

    def _forge_users(self) -> None:
        gh = self.github
        gh.users["prevu-bot"] = FakeUser("prevu-bot")
        gh.tokens[GH_TOKEN] = "prevu-bot"
        gh.repositories[GH_REPO.lower()] = False
        for login in ("maria", "rita"):
            gh.users[login] = FakeUser(login)
        gh.permissions[f"{GH_REPO}:maria".lower()] = "maintain"
        gh.permissions[f"{GH_REPO}:rita".lower()] = "read"
        gl = self.gitlab
        gl.add_user(BOT, "prevu-bot", GL_TOKEN)
        gl.add_user(DEV, "maria")
        gl.add_user(READER, "rita")
        gl.add_project(GL_REPO, "public", maria=30, rita=20)

    async def stop(self) -> None:
        for port in self.ports:
            await port.stopListening()

    async def until(self, predicate: Callable[[], bool], seconds: float = 10.0) -> None:
        """Let the reactor (HTTP) and the orchestrator's clock run until `predicate()` holds."""
        for _ in range(int(seconds / 0.005)):
            if predicate():
                return
            self.h.clock.advance(0.05)
            await sleep(0.005)
        raise AssertionError("condition not reached")

    async def settled(self) -> None:
        """Every command, job and publication finished."""
        await self.until(
            lambda: (
                self.h.orchestrator.idle()
                and all(p.idle() for p in self.publishers.values())
                and not any(p._dirty for p in self.publishers.values())
            )
        )

    def outcome(self, delivery: str) -> str:
        [entry] = [e for e in self.h.store.trail if e.delivery == delivery]
        return entry.outcome

    # --- GitHub ---------------------------------------------------------------------------

    def gh_pull_request(self, action: str, sha: str, at: float, fork: bool = False) -> int:
        data = json.loads((FIXTURES / "github/pull_request-opened.json").read_text())
        data["action"] = action
        data["pull_request"]["head"]["sha"] = sha
        data["pull_request"]["updated_at"] = stamp(at)
        if fork:
            data["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World"
        self.h.git.remote(CLONE, "refs/pull/2/head", sha, {"Dockerfile": "FROM scratch\n"})
        self.deliveries += 1
        code, _ = self.client.github("pull_request", json.dumps(data).encode(), f"pr-{at}")
        return code

    def gh_comment(
        self,
        login: str,
        text: str,
        at: float | None = None,
        action: str = "created",
        on_issue: bool = False,
    ) -> tuple[int, dict[str, Any], str]:
        """Deliver an issue_comment; answers (code, body, delivery id)."""
        data = json.loads((FIXTURES / "github/issue_comment-created.json").read_text())
        data["action"] = action
        data["issue"]["number"] = 2
        if not on_issue:
            data["issue"]["pull_request"] = {"url": "x"}
        self.deliveries += 1
        comment_id = 5000 + self.deliveries
        data["comment"].update(
            id=comment_id,
            body=text,
            created_at=stamp(at if at is not None else self.h.clock.seconds()),
            author_association="OWNER",  # never trusted: permission is asked of GitHub
        )
        data["comment"]["user"].update(login=login, id=100 + self.deliveries)
        delivery = f"c-{self.deliveries}"
        code, body = self.client.github("issue_comment", json.dumps(data).encode(), delivery)
        return code, body, delivery

    def gh_sticky(self) -> str:
        [comment] = self.github.comments_on(GH_REPO, 2)
        body: str = comment["body"]
        return body

    def github_sticky_or_empty(self) -> str:
        found = self.github.comments_on(GH_REPO, 2)
        return str(found[0]["body"]) if found else ""

    def gh_reactions(self) -> list[str]:
        return [r["content"] for r in self.github.reactions]

    # --- GitLab ---------------------------------------------------------------------------

    def gl_hook(self, event: str, data: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        self.deliveries += 1
        delivery = f"gl-{self.deliveries}"
        headers = {
            "X-Gitlab-Event": event,
            "X-Gitlab-Token": "gl-token",
            "X-Gitlab-Event-UUID": delivery,
        }
        code, _, body = self.client.request(
            "POST", "/webhooks/gitlab", data=json.dumps(data).encode(), headers=headers
        )
        return code, json.loads(body), delivery

    def gl_merge_request(self, action: str, sha: str, at: float, fork: bool = False) -> int:
        data = json.loads((FIXTURES / "gitlab/merge_request-open.json").read_text())
        attributes = data["object_attributes"]
        attributes.update(action=action, updated_at=stamp(at))
        attributes["state"] = "closed" if action == "close" else "opened"
        attributes["last_commit"]["id"] = sha
        if fork:
            attributes["source_project_id"] = 999
        ref = "refs/merge-requests/1/head"
        self.h.git.remote(GL_CLONE, ref, sha, {"Dockerfile": "FROM scratch\n"})
        return self.gl_hook("Merge Request Hook", data)[0]

    def gl_note(
        self, user_id: int, text: str, at: float | None = None, action: str = "create"
    ) -> tuple[int, dict[str, Any], str]:
        note = self.gitlab.write_note(GL_REPO, 1, user_id, text)
        data = json.loads((FIXTURES / "gitlab/note-merge_request.json").read_text())
        data["user"].update(id=user_id, username=self.gitlab.users[user_id])
        data["project"]["path_with_namespace"] = GL_REPO
        data["merge_request"]["iid"] = 1
        data["object_attributes"].update(
            id=note["id"],
            note=text,
            author_id=user_id,
            action=action,
            created_at=stamp(at if at is not None else self.h.clock.seconds()),
        )
        return self.gl_hook("Note Hook", data)

    def gl_sticky(self) -> str:
        [note] = [
            n for n in self.gitlab.notes_on(GL_REPO, 1) if n["author"]["username"] == "prevu-bot"
        ]
        body: str = note["body"]
        return body

    def gitlab_sticky_or_empty(self) -> str:
        found = [n for n in self.gitlab.notes_on(GL_REPO, 1) if n["author"]["id"] == BOT]
        return str(found[0]["body"]) if found else ""

    def gl_awards(self) -> list[str]:
        return [a["name"] for a in self.gitlab.awards]


@pytest_twisted.async_yield_fixture
async def forges(reactor: Any, tmp_path: Path) -> AsyncIterator[Forges]:
    setup = Forges(reactor, tmp_path)
    yield setup
    await setup.settled()
    await setup.stop()


def status(forges: Forges, preview: str) -> str:
    return forges.h.status(preview)


@pytest_twisted.ensureDeferred
async def test_github_destroy_needs_write_access(forges: Forges) -> None:
    """A reader's `/preview destroy` is refused with a reply; a maintainer's works."""
    assert forges.gh_pull_request("opened", SHA_A, EPOCH) == 202
    await forges.until(lambda: status(forges, GH_PREVIEW) == "running")
    code, body, delivery = forges.gh_comment("rita", "please\n/preview destroy")
    assert (code, body["status"]) == (202, "queued")
    await forges.settled()
    assert status(forges, GH_PREVIEW) == "running"
    assert "refused" in forges.outcome(delivery) and "write access" in forges.outcome(delivery)
    await forges.until(lambda: "rita `/preview destroy`: rita may not" in forges.gh_sticky())
    assert forges.gh_reactions() == ["confused"]
    permission_calls = [c for c in forges.github.calls if "/collaborators/rita/" in c.path]
    assert len(permission_calls) == 1

    code, _, delivery = forges.gh_comment("maria", "/preview destroy")
    assert code == 202
    await forges.until(lambda: status(forges, GH_PREVIEW) == "stopped")
    await forges.settled()
    assert forges.outcome(delivery).startswith("done: removing the preview")
    assert forges.gh_reactions() == ["confused", "+1"]
    await forges.until(lambda: "Preview removed" in forges.gh_sticky())
    assert "maria `/preview destroy`: removing" in forges.gh_sticky()


@pytest_twisted.ensureDeferred
async def test_gitlab_destroy_needs_developer_access(forges: Forges) -> None:
    """A Reporter's `/preview destroy` is refused with a reply; a Developer's removes it."""
    assert forges.gl_merge_request("open", SHA_A, EPOCH) == 202
    await forges.until(lambda: status(forges, GL_PREVIEW) == "running")
    code, body, delivery = forges.gl_note(READER, "/preview destroy")
    assert (code, body["status"]) == (202, "queued")
    await forges.settled()
    assert status(forges, GL_PREVIEW) == "running"
    assert "write access" in forges.outcome(delivery)
    await forges.until(lambda: "rita may not run `/preview destroy`" in forges.gl_sticky())
    assert forges.gl_awards() == ["confused"]
    member_calls = [c for c in forges.gitlab.calls if f"/members/all/{READER}" in c.path]
    assert len(member_calls) == 1

    code, _, delivery = forges.gl_note(DEV, "/preview destroy")
    assert code == 202
    await forges.until(lambda: status(forges, GL_PREVIEW) == "stopped")
    await forges.settled()
    assert forges.outcome(delivery).startswith("done:")
    assert forges.gl_awards() == ["confused", "thumbsup"]


@pytest.mark.parametrize("forge", ["github", "gitlab"])
@pytest_twisted.ensureDeferred
async def test_redeploy_keep_extend_help(forges: Forges, forge: str) -> None:
    """redeploy builds again, reset starts the same commit on wiped data, keep and
    extend 3d set keep_until, help lists the verbs."""
    if forge == "github":
        forges.gh_pull_request("opened", SHA_A, EPOCH)
        preview = GH_PREVIEW

        def say(text: str) -> str:
            return forges.gh_comment("maria", text)[2]

        def sticky() -> str:
            return forges.gh_sticky()
    else:
        forges.gl_merge_request("open", SHA_A, EPOCH)
        preview = GL_PREVIEW

        def say(text: str) -> str:
            return forges.gl_note(DEV, text)[2]

        def sticky() -> str:
            return forges.gl_sticky()

    await forges.until(lambda: status(forges, preview) == "running")
    builds = len(forges.h.docker.builds)
    delivery = say("/preview redeploy")
    await forges.settled()
    await forges.until(lambda: status(forges, preview) == "running")
    assert len(forges.h.docker.builds) == builds + 1
    assert forges.outcome(delivery) == "done: redeploying the current commit"

    before = forges.h.orchestrator.serving(preview)
    assert before is not None
    delivery = say("/preview reset")
    await forges.settled()
    await forges.until(lambda: status(forges, preview) == "running")
    assert forges.outcome(delivery).startswith("done: resetting")
    assert len(forges.h.docker.builds) == builds + 2, "the same commit started again"
    after = forges.h.orchestrator.serving(preview)
    assert after is not None and after.container != before.container
    assert before.container not in forges.h.docker.containers, "wiped with its preview's data"

    now = forges.h.clock.seconds()
    say("/preview extend 3d")
    await forges.settled()
    record = forges.h.store.get(preview)
    assert record is not None
    kept = float(record.data["keep_until"])
    assert now + 3 * 86400 <= kept <= forges.h.clock.seconds() + 3 * 86400

    say("/preview keep")
    await forges.settled()
    record = forges.h.store.get(preview)
    assert record is not None and record.data["keep_until"] == "inf"

    delivery = say("/preview help")
    await forges.settled()
    assert "`/preview extend <duration>`" in forges.outcome(delivery)
    await forges.until(lambda: "`/preview approve [&lt;sha>]`" in sticky())
    assert status(forges, preview) == "running"


@pytest_twisted.ensureDeferred
async def test_comments_that_never_run(forges: Forges) -> None:
    """Quoted or fenced commands, edits, prevu's own comments and plain issues do nothing."""
    forges.gh_pull_request("opened", SHA_A, EPOCH)
    await forges.until(lambda: status(forges, GH_PREVIEW) == "running")
    await forges.settled()
    ignored = [
        forges.gh_comment("maria", "> /preview destroy"),
        forges.gh_comment("maria", "```\n/preview destroy\n```"),
        forges.gh_comment("maria", "    /preview destroy"),
        forges.gh_comment("maria", "run `/preview destroy` later"),
        forges.gh_comment("maria", "/preview destroy", action="edited"),
        forges.gh_comment("maria", "/preview destroy", on_issue=True),
        forges.gh_comment("maria", forges.gh_sticky() + "\n/preview destroy"),
    ]
    assert [(code, body["status"]) for code, body, _ in ignored] == [(200, "ignored")] * 7
    # prevu's own identity never runs a command, even one without the marker.
    code, _, delivery = forges.gh_comment("prevu-bot", "/preview destroy")
    assert code == 202
    await forges.settled()
    assert forges.outcome(delivery) == "refused: written by prevu itself"

    forges.gl_merge_request("open", SHA_A, EPOCH)
    await forges.until(lambda: status(forges, GL_PREVIEW) == "running")
    code, body, _ = forges.gl_note(DEV, "/preview destroy", action="update")
    assert (code, body["status"]) == (200, "ignored")
    code, body, _ = forges.gl_note(DEV, "> /preview destroy")
    assert (code, body["status"]) == (200, "ignored")
    await forges.settled()
    assert status(forges, GH_PREVIEW) == status(forges, GL_PREVIEW) == "running"
    assert forges.gh_reactions() == [] and forges.gl_awards() == []


@pytest_twisted.ensureDeferred
async def test_approve_is_pinned_to_what_the_maintainer_saw(forges: Forges) -> None:
    """After a newer push `/preview approve` asks for the SHA; with one, only that commit runs."""
    forges.gh_pull_request("opened", SHA_A, EPOCH, fork=True)
    await forges.until(lambda: "awaits approval" in forges.github_sticky_or_empty())
    written = forges.h.clock.seconds() + 1  # the maintainer reads A and writes...
    forges.h.clock.advance(60)
    forges.gh_pull_request("synchronize", SHA_B, EPOCH + 100, fork=True)  # ...as B is pushed
    await forges.until(lambda: f"`{SHA_B[:7]}`" in forges.gh_sticky())
    await forges.settled()
    _, _, delivery = forges.gh_comment("maria", "/preview approve", at=written)
    await forges.settled()
    assert "review bbbbbbb" in forges.outcome(delivery)
    assert status(forges, GH_PREVIEW) == "queued" and forges.h.docker.builds == []

    _, _, delivery = forges.gh_comment("maria", f"/preview approve {SHA_A[:7]}")
    await forges.settled()
    assert "does not await approval" in forges.outcome(delivery)
    assert forges.h.docker.builds == []

    _, _, delivery = forges.gh_comment("rita", f"/preview approve {SHA_B[:9]}")
    await forges.settled()
    assert "write access" in forges.outcome(delivery) and forges.h.docker.builds == []

    _, _, delivery = forges.gh_comment("maria", f"/preview approve {SHA_B[:9]}")
    await forges.until(lambda: status(forges, GH_PREVIEW) == "running")
    await forges.settled()
    assert forges.outcome(delivery) == "done: approved bbbbbbb: building its preview"
    record = forges.h.store.get(GH_PREVIEW)
    assert record is not None and record.sha == SHA_B


@pytest_twisted.ensureDeferred
async def test_gitlab_fork_approval_through_membership(forges: Forges) -> None:
    """forks = "approve" on GitLab: a Reporter cannot approve, a Developer's plain approve works."""
    forges.gl_merge_request("open", SHA_A, EPOCH, fork=True)
    await forges.until(lambda: "awaits approval" in forges.gitlab_sticky_or_empty())
    assert status(forges, GL_PREVIEW) == "queued"
    _, _, delivery = forges.gl_note(READER, "/preview approve")
    await forges.settled()
    assert "write access" in forges.outcome(delivery)
    assert status(forges, GL_PREVIEW) == "queued"
    forges.h.clock.advance(5)
    _, _, delivery = forges.gl_note(DEV, "/preview approve")
    await forges.until(lambda: status(forges, GL_PREVIEW) == "running")
    await forges.settled()
    assert forges.outcome(delivery) == "done: approved aaaaaaa: building its preview"


@pytest_twisted.ensureDeferred
async def test_gitlab_merge_request_feedback(forges: Forges) -> None:
    """One note edited through its states, statuses, an environment stopped on close (and back)."""
    forges.gl_merge_request("open", SHA_A, EPOCH)
    await forges.until(lambda: status(forges, GL_PREVIEW) == "running")
    await forges.settled()
    assert "Preview ready" in forges.gl_sticky()
    assert "http://pr-1-gitlab-test.localhost:8000/" in forges.gl_sticky()
    assert forges.gitlab.statuses_of(SHA_A)[-1] == "success"
    [environment] = forges.gitlab.environments.values()
    assert environment["name"] == "pr-1" and environment["state"] == "available"
    assert environment["external_url"] == "http://pr-1-gitlab-test.localhost:8000/"

    forges.h.clock.advance(10)
    forges.gl_merge_request("update", SHA_B, EPOCH + 50)
    await forges.until(lambda: status(forges, GL_PREVIEW) == "running")
    await forges.settled()
    assert f"`{SHA_B[:7]}`" in forges.gl_sticky()
    assert forges.gitlab.statuses_of(SHA_B)[-1] == "success"

    forges.gl_merge_request("close", SHA_B, EPOCH + 90)
    await forges.until(lambda: status(forges, GL_PREVIEW) == "stopped")
    await forges.settled()
    assert "Preview removed" in forges.gl_sticky()
    assert environment["state"] == "stopped"
    [note] = [n for n in forges.gitlab.notes.values() if n["author"]["id"] == BOT]
    assert note["_edits"] >= 2, "one note, edited in place"
    assert len(forges.gitlab.environments) == 1

    forges.gl_merge_request("reopen", SHA_B, EPOCH + 120)
    await forges.until(lambda: status(forges, GL_PREVIEW) == "running")
    await forges.settled()
    [reopened] = forges.gitlab.environments.values()
    assert reopened["state"] == "available" and reopened["name"] == "pr-1"
    assert reopened["external_url"] == "http://pr-1-gitlab-test.localhost:8000/"
    assert "Preview ready" in forges.gl_sticky() and note["_edits"] >= 3


@pytest_twisted.ensureDeferred
async def test_gitlab_client_retries_and_finds_its_note_again(reactor: Any) -> None:
    """5xx is retried; a note made by a create that answered 502 is found, not duplicated."""
    fake = FakeGitlab()
    port = fake_gitlab.listen(reactor, fake)
    try:
        fake.add_user(BOT, "prevu-bot", GL_TOKEN)
        fake.add_project(GL_REPO)
        api = GitlabApi(reactor, reactor, fake.base, GL_TOKEN, backoff=lambda n: 0.01)
        fake.fail("GET /api/v4/user", 503)
        assert await api.identity() == "prevu-bot"
        fake.fail("/notes", 502, after=True)

        async def recover() -> int | None:
            for note in await api.comments(GL_REPO, 1):
                if note.body == "hello":
                    return note.id
            return None

        made = await api.create_comment(GL_REPO, 1, "hello", recover)
        assert [n["id"] for n in fake.notes_on(GL_REPO, 1)] == [made]
        assert await api.edit_comment(GL_REPO, 1, made, "bye")
        assert not await api.edit_comment(GL_REPO, 1, 999999, "bye")
        await api.set_status(GL_REPO, SHA_A, "pending", "Preview queued", "", "prevu")
        await api.set_status(GL_REPO, SHA_A, "pending", "Preview queued", "", "prevu")
        assert fake.statuses_of(SHA_A) == ["pending"]
        assert await api.access_level(GL_REPO, 4242) is None
        assert all(call.token == GL_TOKEN for call in fake.calls)
    finally:
        await port.stopListening()


# --- keep / extend: the record, the idle rules, the API ---------------------------------


@pytest.mark.parametrize(
    ("keep_until", "expected"),
    [
        (None, ["destroy"]),
        ("inf", []),
        ("1500.0", []),
        ("900.0", ["destroy"]),
        ("junk", ["destroy"]),
    ],
)
def test_idle_rules_honour_keep_until(keep_until: str | None, expected: list[str]) -> None:
    """A preview kept until later than now is never destroyed by ttl (it may still sleep)."""
    from prevu.idle import idle_actions
    from prevu.ports import PreviewRecord

    data = {"keep_until": keep_until} if keep_until is not None else {}
    record = PreviewRecord(
        id="p", repo="a/b", number=1, status="sleeping", updated_at=0.0, data=data
    )
    actions = idle_actions([record], {"p": 0.0}, 1000.0, sleep_after=10.0, ttl=100.0)
    assert [a.kind for a in actions] == expected
    running = PreviewRecord(
        id="p", repo="a/b", number=1, status="running", updated_at=0.0, data=data
    )
    kinds = [a.kind for a in idle_actions([running], {"p": 0.0}, 1000.0, 10.0, 0.0)]
    assert kinds == ["sleep"], "kept previews still sleep"


def test_keep_until_survives_a_restart_and_old_records_load(tmp_path: Path) -> None:
    """keep_until is kept in the record's data; records without it load with None."""
    from prevu.orchestrator import records
    from tests.test_webhooks import make_config

    client = Client(tmp_path, make_config(tmp_path))
    h = client.h
    h.clock.advance(EPOCH)
    h.git.remote(CLONE, "refs/pull/2/head", SHA_A, {"Dockerfile": "FROM scratch\n"})
    client.github("pull_request", (FIXTURES / "github/pull_request-opened.json").read_bytes())
    old = h.store.get(GH_PREVIEW)
    assert old is not None and "keep_until" not in old.data
    assert records.restore(old, h.orchestrator.settings).keep_until is None
    assert h.orchestrator.extend(GH_PREVIEW, 3600.0) == EPOCH + 3600.0
    assert h.orchestrator.extend(GH_PREVIEW, 60.0) == EPOCH + 3660.0, "extensions add up"
    stored = h.store.get(GH_PREVIEW)
    assert stored is not None
    assert records.restore(stored, h.orchestrator.settings).keep_until == EPOCH + 3660.0
    assert h.orchestrator.keep("nope") is None and h.orchestrator.extend("nope", 1.0) is None
    with pytest.raises(ValueError):
        h.orchestrator.extend(GH_PREVIEW, 0.0)


def test_api_keep_and_extend(tmp_path: Path) -> None:
    """POST /api/previews/{id}/keep and /extend {"by": "3d"} reach the same facade."""
    from tests.test_webhooks import make_config

    client = Client(tmp_path, make_config(tmp_path))
    client.h.clock.advance(EPOCH)
    client.h.git.remote(CLONE, "refs/pull/2/head", SHA_A, {"Dockerfile": "FROM scratch\n"})
    client.github("pull_request", (FIXTURES / "github/pull_request-opened.json").read_bytes())
    path = f"/api/previews/{GH_PREVIEW}"
    code, _, body = client.api_call("POST", f"{path}/extend", data=b'{"by": "3d"}')
    assert code == 200 and json.loads(body)["keep_until"] == stamp(EPOCH + 3 * 86400)
    code, _, body = client.api_call("POST", f"{path}/keep")
    assert code == 200 and json.loads(body)["keep_until"] == "forever"
    record = client.h.store.get(GH_PREVIEW)
    assert record is not None and record.data["keep_until"] == "inf"
    for data in (b'{"by": "soon"}', b"{}", b"[1]", b'{"by": "0"}'):
        code, _, body = client.api_call("POST", f"{path}/extend", data=data)
        assert code == 400 and "by" in json.loads(body)["error"]
    assert client.api_call("POST", "/api/previews/nope/keep")[0] == 404
    assert client.api_call("POST", f"{path}/keep", token=None)[0] == 401


@pytest_twisted.ensureDeferred
async def test_commands_on_a_pull_request_without_a_preview(forges: Forges) -> None:
    """`destroy` says there is no preview, `help` answers; the comment later shows the preview."""
    _, _, delivery = forges.gh_comment("maria", "/preview destroy")
    await forges.settled()
    assert forges.outcome(delivery) == "refused: this pull request has no preview"
    _, _, delivery = forges.gh_comment("rita", "/preview help")
    await forges.settled()
    assert forges.outcome(delivery).startswith("done: Commands:")
    sticky = forges.gh_sticky()
    assert "### prevu" in sticky and "rita `/preview help`" in sticky
    forges.gh_pull_request("opened", SHA_A, EPOCH)
    await forges.until(lambda: status(forges, GH_PREVIEW) == "running")
    await forges.settled()
    sticky = forges.gh_sticky()
    assert "Preview ready" in sticky and f"/previews/{GH_PREVIEW}/logs" in sticky
    assert "maria `/preview destroy`: this pull request has no preview" in sticky
