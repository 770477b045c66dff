"""Webhook verification and parsing with the real payloads in shared/fixtures."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from prevu.config import Config, GithubConfig, GitlabConfig, RepoConfig
from prevu.control.responses import STATUS
from prevu.errors import RequestRefused
from prevu.forge import github, gitlab, policy, registry
from prevu.forge.base import Credentials, Delivery
from prevu.forge.commands import find_command
from prevu.forge.events import (
    Command,
    Ignored,
    Ping,
    PullRequestEvent,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.exists():
    FIXTURES = Path("/work/shared/fixtures")
SECRET = "It's a Secret to Everybody"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def body(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


# --- GitHub signatures -----------------------------------------------------------

SIGNED = b"Hello, World!"
# The example from GitHub's documentation on validating webhook deliveries.
GITHUB_EXAMPLE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        (GITHUB_EXAMPLE, True),
        (GITHUB_EXAMPLE.upper().replace("SHA256=", "sha256="), False),
        (GITHUB_EXAMPLE[:-1] + "8", False),
        (GITHUB_EXAMPLE.replace("sha256=", "sha1="), False),
        ("", False),
        (None, False),
        ("sha256=", False),
        ("sha256=zz", False),
        ("sha256=é", False),
    ],
)
def test_github_signature(header: str | None, valid: bool) -> None:
    """Only the exact sha256 HMAC of the raw body verifies."""
    assert github.verify_signature(SECRET, SIGNED, header) is valid


def test_github_signature_is_of_the_raw_body() -> None:
    """A re-serialized body (same JSON, other bytes) does not verify."""
    raw = (FIXTURES / "github/pull_request-opened.json").read_bytes()
    header = github.sign(SECRET, raw)
    assert github.verify_signature(SECRET, raw, header)
    assert not github.verify_signature(SECRET, body(json.loads(raw)), header)
    assert not github.verify_signature("other secret", raw, header)


# --- GitHub parsing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "action"),
    [
        ("pull_request-opened.json", "open"),
        ("pull_request-opened.with-organization.json", "open"),
        ("pull_request-reopened.json", "open"),
        ("pull_request-synchronize.json", "push"),
        ("pull_request-closed.json", "close"),
        ("pull_request-labeled.json", "labels"),
    ],
)
def test_github_pull_request_fixtures(name: str, action: str) -> None:
    """Each real pull_request payload parses into its normalised action and the SPEC source."""
    event = github.parse("pull_request", "d-1", (FIXTURES / "github" / name).read_bytes())
    assert isinstance(event, PullRequestEvent)
    assert event.action == action
    pr = event.pull_request
    assert (pr.forge, pr.repo, pr.number) == ("github", "Codertocat/Hello-World", 2)
    assert pr.sha == "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
    assert pr.clone_url == "https://github.com/Codertocat/Hello-World.git"
    assert pr.ref == "refs/pull/2/head"
    assert pr.branch == "changes"
    assert pr.fork is False
    assert pr.open is (action != "close")


def test_github_fork_is_detected() -> None:
    """A head repository other than the base marks the pull request as a fork."""
    data = fixture("github/pull_request-opened.json")
    data["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World"
    event = github.parse("pull_request", "d", body(data))
    assert isinstance(event, PullRequestEvent) and event.pull_request.fork


def test_github_deleted_fork_is_still_a_fork() -> None:
    """A head repository that was deleted (null) counts as a fork."""
    data = fixture("github/pull_request-synchronize.json")
    data["pull_request"]["head"]["repo"] = None
    event = github.parse("pull_request", "d", body(data))
    assert isinstance(event, PullRequestEvent) and event.pull_request.fork


def test_github_ping() -> None:
    """The real ping payload is a Ping."""
    event = github.parse("ping", "d", (FIXTURES / "github/ping.json").read_bytes())
    assert event == Ping("d", "github")


def test_github_unused_event_and_action_are_ignored() -> None:
    """Events and actions prevu does not use are Ignored, not errors."""
    assert isinstance(github.parse("push", "d", b"{}"), Ignored)
    data = fixture("github/pull_request-opened.json")
    data["action"] = "edited"
    assert isinstance(github.parse("pull_request", "d", body(data)), Ignored)


def test_github_comment_on_an_issue_is_ignored() -> None:
    """The real issue_comment fixture is on an issue, not a pull request."""
    raw = (FIXTURES / "github/issue_comment-created.json").read_bytes()
    assert isinstance(github.parse("issue_comment", "d", raw), Ignored)


def approve_comment(association: str = "OWNER", text: str = "/preview approve") -> bytes:
    data = fixture("github/issue_comment-created.json")
    data["issue"]["pull_request"] = {"url": "https://api.github.com/repos/x/y/pulls/1"}
    data["comment"]["body"] = text
    data["comment"]["author_association"] = association
    return body(data)


def test_github_approve_comment() -> None:
    """`/preview approve` on a pull request is a Command; the association is not kept."""
    event = github.parse("issue_comment", "d", approve_comment("MEMBER"))
    assert isinstance(event, Command)
    assert (event.forge, event.repo, event.number) == ("github", "Codertocat/Hello-World", 1)
    assert (event.line, event.commenter) == ("/preview approve", "Codertocat")
    assert event.comment > 0 and event.commenter_id > 0 and event.created_at is not None


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("/preview approve", "/preview approve"),
        ("LGTM\n/preview   Approve\nthanks", "/preview   Approve"),
        ("> /preview approve", None),
        ("please /preview approve", None),
        ("/preview", "/preview"),
        ("/previews approve", None),
    ],
)
def test_parse_command(text: str, command: str | None) -> None:
    """Only a line starting with /preview carries a command."""
    assert find_command(text) == command


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"action": "opened"}', "missing field 'pull_request'"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_github_malformed_payloads_are_400(payload: bytes, reason: str) -> None:
    """Malformed payloads raise RequestRefused("malformed"), a 400, with a readable reason."""
    with pytest.raises(RequestRefused) as caught:
        github.parse("pull_request", "d", payload)
    assert STATUS[caught.value.problem] == 400
    assert reason in caught.value.reason


def test_github_bad_sha_is_400() -> None:
    """A head SHA that is not hex is a malformed payload."""
    data = fixture("github/pull_request-opened.json")
    data["pull_request"]["head"]["sha"] = "../../etc"
    with pytest.raises(RequestRefused) as caught:
        github.parse("pull_request", "d", body(data))
    assert STATUS[caught.value.problem] == 400


# --- GitLab -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "valid"),
    [("s3cret", True), ("s3cret ", False), ("S3CRET", False), ("", False), (None, False)],
)
def test_gitlab_token(header: str | None, valid: bool) -> None:
    """X-Gitlab-Token must equal the configured token exactly."""
    assert gitlab.verify_token("s3cret", header) is valid


def test_gitlab_merge_request_fixture() -> None:
    """The real Merge Request Hook parses with the SPEC clone source."""
    raw = (FIXTURES / "gitlab/merge_request-open.json").read_bytes()
    event = gitlab.parse("Merge Request Hook", "uuid-1", raw)
    assert isinstance(event, PullRequestEvent)
    assert event.action == "open"
    pr = event.pull_request
    assert (pr.forge, pr.repo, pr.number) == ("gitlab", "gitlabhq/gitlab-test", 1)
    assert pr.sha == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    assert pr.clone_url == "http://example.com/gitlabhq/gitlab-test.git"
    assert pr.ref == "refs/merge-requests/1/head"
    assert pr.branch == "ms-viewport"
    assert pr.fork is False
    assert pr.labels == ("API",)


@pytest.mark.parametrize(
    ("action", "normal"),
    [
        ("open", "open"),
        ("reopen", "open"),
        ("update", "push"),
        ("close", "close"),
        ("merge", "close"),
    ],
)
def test_gitlab_actions(action: str, normal: str) -> None:
    """GitLab's actions map onto the normalised ones."""
    data = fixture("gitlab/merge_request-open.json")
    data["object_attributes"]["action"] = action
    event = gitlab.parse("Merge Request Hook", "u", body(data))
    assert isinstance(event, PullRequestEvent) and event.action == normal


def test_gitlab_fork_is_detected() -> None:
    """A source project other than the target project is a fork."""
    data = fixture("gitlab/merge_request-open.json")
    data["object_attributes"]["source_project_id"] = 99
    event = gitlab.parse("Merge Request Hook", "u", body(data))
    assert isinstance(event, PullRequestEvent) and event.pull_request.fork


def test_gitlab_note_without_command_is_ignored() -> None:
    """The real Note Hook fixture has no /preview command."""
    raw = (FIXTURES / "gitlab/note-merge_request.json").read_bytes()
    assert isinstance(gitlab.parse("Note Hook", "u", raw), Ignored)


def test_gitlab_approve_note_is_a_command() -> None:
    """A GitLab note with `/preview approve` is a Command carrying the author's user id."""
    data = fixture("gitlab/note-merge_request.json")
    data["object_attributes"]["note"] = "/preview approve"
    event = gitlab.parse("Note Hook", "u", body(data))
    assert isinstance(event, Command) and event.commenter == "root"
    assert event.commenter_id == data["object_attributes"]["author_id"]


def test_gitlab_malformed_is_400() -> None:
    """A Merge Request Hook without object_attributes is a 400."""
    with pytest.raises(RequestRefused) as caught:
        gitlab.parse("Merge Request Hook", "u", b'{"project": {}}')
    assert STATUS[caught.value.problem] == 400


# --- policy -----------------------------------------------------------------------


def pr_event(action: str = "opened", fork: bool = False, labels: tuple[str, ...] = ()) -> Any:
    data = fixture("github/pull_request-opened.json")
    data["action"] = action
    if fork:
        data["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World"
    data["pull_request"]["labels"] = [{"name": name} for name in labels]
    if action == "closed":
        data["pull_request"]["state"] = "closed"
    return github.parse("pull_request", "d", body(data))


REPO = "Codertocat/Hello-World"


def config(**settings: Any) -> Config:
    return Config(repos=(RepoConfig(name=REPO, **settings),))


@pytest.mark.parametrize(
    ("cfg", "event", "expected"),
    [
        (Config(), pr_event(), policy.Deploy),
        (Config(repos=(RepoConfig(name="acme/other"),)), pr_event(), policy.Skip),
        (config(), pr_event("closed"), policy.Destroy),
        (config(), pr_event("synchronize"), policy.Deploy),
        (config(), pr_event("labeled", labels=("preview",)), policy.Skip),
        (config(trigger="label"), pr_event(), policy.Skip),
        (config(trigger="label"), pr_event(labels=("Preview",)), policy.Deploy),
        (config(trigger="label"), pr_event("labeled", labels=("preview",)), policy.Deploy),
        (config(trigger="label"), pr_event("unlabeled"), policy.Destroy),
        (config(forks="deny"), pr_event(fork=True), policy.Deny),
        (config(forks="allow"), pr_event(fork=True), policy.Deploy),
        (config(forks="approve"), pr_event(fork=True), policy.Deploy),
    ],
)
def test_policy(cfg: Config, event: Any, expected: type) -> None:
    """[[repos]] filter, trigger and forks settings decide what an event does."""
    assert isinstance(policy.decide(cfg, event), expected)


def test_policy_fork_under_approve_is_gated() -> None:
    """forks = approve deploys behind the approval gate."""
    decision = policy.decide(config(), pr_event(fork=True))
    assert isinstance(decision, policy.Deploy) and decision.gate == "approve"


def test_policy_gitlab_fork_under_approve_is_gated() -> None:
    """GitLab under forks = approve waits for an approval (membership asked of GitLab)."""
    data = fixture("gitlab/merge_request-open.json")
    data["object_attributes"]["source_project_id"] = 99
    event = gitlab.parse("Merge Request Hook", "u", body(data))
    assert isinstance(event, PullRequestEvent)
    decision = policy.decide(Config(), event)
    assert isinstance(decision, policy.Deploy) and decision.gate == "approve"


@pytest.mark.parametrize("association", ["OWNER", "CONTRIBUTOR", "NONE", "FIRST_TIMER"])
def test_policy_commands_act_whatever_the_association(association: str) -> None:
    """author_association decides nothing: every command of a listed repo is an Act."""
    event = github.parse("issue_comment", "d", approve_comment(association))
    assert isinstance(event, Command)
    decision = policy.decide(config(), event)
    assert isinstance(decision, policy.Act) and decision.command == event


def test_policy_late_push_to_a_closed_pr_is_skipped() -> None:
    """An open/push payload whose pull request is already closed does nothing."""
    data = copy.deepcopy(fixture("github/pull_request-synchronize.json"))
    data["pull_request"]["state"] = "closed"
    event = github.parse("pull_request", "d", body(data))
    assert isinstance(policy.decide(Config(), event), policy.Skip)


# --- the Forge Protocol and the registry --------------------------------------------


def test_registry_names_each_forge_by_its_own_name() -> None:
    """Every registry entry's forge answers to the name it is registered under."""
    assert set(registry.FORGES) == {"github", "gitlab", "local"}
    for name, entry in registry.FORGES.items():
        assert entry.forge.name == name
        assert registry.forge_named(name) is entry.forge
    assert registry.forge_named("bitbucket") is None


def test_only_forges_with_webhooks_receive_them() -> None:
    """`local` (prevu up) has no webhooks; GitHub and GitLab do."""
    assert registry.webhook_forge("github") is not None
    assert registry.webhook_forge("gitlab") is not None
    assert registry.webhook_forge("local") is None
    assert registry.webhook_forge("bitbucket") is None


@pytest.mark.parametrize(
    ("forge", "username"), [("github", "x-access-token"), ("gitlab", "oauth2")]
)
def test_clone_credentials_carry_the_forges_username(forge: str, username: str) -> None:
    """GitHub clones as x-access-token, GitLab as oauth2 (GitLab's documented token user)."""
    config = Config(github=GithubConfig(token="gh-tok"), gitlab=GitlabConfig(token="gl-tok"))
    credentials = registry.clone_credentials(config, forge, "acme/shop")
    assert credentials == Credentials(username, "gh-tok" if forge == "github" else "gl-tok")
    assert "gh-tok" not in repr(credentials) and "gl-tok" not in repr(credentials)


@pytest.mark.parametrize("forge", ["github", "gitlab", "local", "bitbucket"])
def test_no_token_means_no_credentials(forge: str) -> None:
    """Without a configured token (or for local and unknown forges) git fetches anonymously."""
    assert registry.clone_credentials(Config(), forge, "acme/shop") is None


def test_gitlab_webhook_verification_and_parse_through_the_protocol() -> None:
    """The GitLab forge checks X-Gitlab-Token and needs its event and UUID headers."""
    forge = registry.FORGES["gitlab"].forge
    config = Config(gitlab=GitlabConfig(webhook_token="tok"))
    secret = forge.webhook_secret(config)
    assert secret == "tok"
    body = json.dumps(fixture("gitlab/merge_request-open.json")).encode()
    headers = {"x-gitlab-token": "tok", "x-gitlab-event": "Merge Request Hook"}
    assert forge.verify(secret, Delivery({**headers, "x-gitlab-token": "no"}, body)) is not None
    with pytest.raises(RequestRefused) as caught:
        forge.parse(Delivery(headers, body))
    assert caught.value.problem == "malformed" and "UUID" in caught.value.reason
    delivery = Delivery({**headers, "x-gitlab-webhook-uuid": "u-1"}, body)
    assert forge.verify(secret, delivery) is None
    event = forge.parse(delivery)
    assert isinstance(event, PullRequestEvent) and event.delivery == "u-1"


def test_forks_approval_is_the_forges_rule() -> None:
    """GitHub and GitLab check approvers with their API; local has no forks."""
    assert registry.FORGES["github"].forge.fork_approval() is None
    assert registry.FORGES["gitlab"].forge.fork_approval() is None
    assert registry.FORGES["local"].forge.fork_approval() is None


def test_every_outcome_has_one_status() -> None:
    """The funnel's table covers every outcome; refusals are 4xx/5xx, successes below 400."""
    from typing import get_args

    from prevu.control.responses import Success
    from prevu.errors import Problem

    assert set(STATUS) == set(get_args(Success)) | set(get_args(Problem))
    assert all(STATUS[outcome] < 400 for outcome in get_args(Success))
    assert all(STATUS[problem] >= 400 for problem in get_args(Problem))



@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/preview approve", "/preview approve"),
        ("LGTM\n/Preview APPROVE please", "/Preview APPROVE please"),
        ("/preview launch", "/preview launch"),
        ("> /preview approve", "comment has no /preview command"),
        ("```\n/preview destroy\n```", "comment has no /preview command"),
        ("<!-- prevu:preview github:a/b#1 -->\n/preview help", "comment written by prevu"),
    ],
)
def test_command_event_is_the_one_place_comments_become_commands(body: str, expected: str) -> None:
    """Both forges hand a comment to `command_event`; verbs are checked when it runs."""
    from prevu.forge.events import Command, Ignored, command_event

    for forge in ("github", "gitlab"):
        event = command_event("d1", forge, "acme/shop", 7, "maria", body)
        if isinstance(event, Command):
            assert event.line == expected and (event.forge, event.number) == (forge, 7)
        else:
            assert isinstance(event, Ignored) and event.reason == expected
