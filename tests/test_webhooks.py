"""The webhook and API handlers through treq.testing.StubTreq, with the orchestrator on fakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred

from prevu.config import (
    Config,
    GithubConfig,
    GitlabConfig,
    RepoConfig,
    ServerConfig,
)
from prevu.control.api import PreviewsApi
from prevu.control.app import ControlApp
from prevu.control.webhooks import Webhooks
from prevu.forge.github import sign
from tests.test_orchestrator import Harness

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.exists():
    FIXTURES = Path("/work/shared/fixtures")
SECRET = "webhook-secret"
TOKEN = "api-token"
SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
CLONE = "https://github.com/Codertocat/Hello-World.git"


def make_config(tmp: Path, **server: Any) -> Config:
    return Config(
        server=ServerConfig(state_dir=str(tmp / "state"), api_token=TOKEN, **server),
        github=GithubConfig(webhook_secret=SECRET),
        gitlab=GitlabConfig(webhook_token="gl-token"),
    )


class Client:
    """A StubTreq client of a ControlApp wired to a Harness orchestrator."""

    def __init__(self, tmp: Path, config: Config) -> None:
        self.h = Harness(tmp, config)
        self.webhooks = Webhooks(
            config, self.h.orchestrator, self.h.store, self.h.orchestrator.metrics, max_body=1 << 20
        )
        self.api = PreviewsApi(
            config, self.h.orchestrator, self.h.store, self.h.docker, self.h.orchestrator.metrics
        )
        app = ControlApp(config=config, webhooks=self.webhooks, previews=self.api)
        self.stub = StubTreq(app.resource())

    def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, dict[str, list[str]], bytes]:
        async def go() -> tuple[int, dict[str, list[str]], bytes]:
            response = await self.stub.request(method, "http://control" + path, **kwargs)
            body = await response.content()
            headers = {
                k.decode().lower(): [v.decode() for v in vs]
                for k, vs in response.headers.getAllRawHeaders()
            }
            return response.code, headers, body

        deferred: Deferred[Any] = ensureDeferred(go())
        self.stub.flush()
        assert deferred.called, "the handler answered without waiting"
        result: tuple[int, dict[str, list[str]], bytes] = deferred.result
        return result

    def github(
        self, event: str, payload: bytes, delivery: str = "d-1", signature: str | None = None
    ) -> tuple[int, Any]:
        headers = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature if signature is not None else sign(SECRET, payload),
            "Content-Type": "application/json",
        }
        code, _, body = self.request("POST", "/webhooks/github", data=payload, headers=headers)
        return code, json.loads(body)

    def api_call(self, method: str, path: str, token: str | None = TOKEN, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.request(method, path, headers=headers, **kw)


@pytest.fixture
def client(tmp_path: Path) -> Client:
    return Client(tmp_path, make_config(tmp_path))


def fixture_bytes(name: str, **changes: Any) -> bytes:
    data = json.loads((FIXTURES / name).read_text())
    for path, value in changes.items():
        target = data
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return json.dumps(data).encode()


def publish(client: Client, number: int = 2, sha: str = SHA) -> None:
    client.h.git.remote(CLONE, f"refs/pull/{number}/head", sha, {"Dockerfile": "FROM scratch\n"})


def test_opened_is_202_and_the_preview_runs(client: Client) -> None:
    """A signed `opened` fixture answers 202 with the preview, which then runs."""
    publish(client)
    raw = (FIXTURES / "github/pull_request-opened.json").read_bytes()
    code, body = client.github("pull_request", raw)
    assert code == 202
    assert body == {
        "status": "queued",
        "preview": "pr-2-hello-world",
        "url": "http://pr-2-hello-world.localhost:8000/",
        "delivery": "d-1",
    }
    assert client.h.status("pr-2-hello-world") == "running"


def test_webhook_answers_before_any_git_or_docker_work(client: Client) -> None:
    """With git paused, the webhook still answers 202 at once: nothing waits in the request."""
    publish(client)
    client.h.git.pause("fetch")
    raw = (FIXTURES / "github/pull_request-opened.json").read_bytes()
    code, body = client.github("pull_request", raw)
    assert code == 202 and body["status"] == "queued"
    assert client.h.status("pr-2-hello-world") == "building"


def test_redelivered_delivery_is_a_no_op(client: Client) -> None:
    """The same X-GitHub-Delivery twice: the second is 200 duplicate and changes nothing."""
    publish(client)
    raw = (FIXTURES / "github/pull_request-opened.json").read_bytes()
    assert client.github("pull_request", raw, delivery="same")[0] == 202
    code, body = client.github("pull_request", raw, delivery="same")
    assert (code, body["status"]) == (200, "duplicate")
    assert len(client.h.docker.builds) == 1


@pytest.mark.parametrize(
    "signature",
    ["", "sha256=" + "0" * 64, "sha1=abc", None],
)
def test_bad_signature_is_401(client: Client, signature: str | None) -> None:
    """A wrong, missing or other-algorithm signature is 401 and does nothing."""
    raw = (FIXTURES / "github/pull_request-opened.json").read_bytes()
    headers = {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "x"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    code, _, body = client.request("POST", "/webhooks/github", data=raw, headers=headers)
    assert code == 401 and "Signature" in json.loads(body)["error"]
    assert client.h.store.previews == {}


def test_malformed_payload_is_400(client: Client) -> None:
    """Signed garbage is a 400 with the reason."""
    code, body = client.github("pull_request", b'{"action": "opened"}')
    assert code == 400 and "pull_request" in body["error"]


def test_missing_event_header_is_400(client: Client) -> None:
    """Without X-GitHub-Event the delivery is a 400."""
    raw = b"{}"
    headers = {"X-GitHub-Delivery": "x", "X-Hub-Signature-256": sign(SECRET, raw)}
    code, _, _ = client.request("POST", "/webhooks/github", data=raw, headers=headers)
    assert code == 400


def test_too_large_is_413(client: Client) -> None:
    """A body over the limit is 413 (the limit is checked before the signature)."""
    raw = b"{" + b" " * (1 << 20) + b"}"
    code, body = client.github("pull_request", raw)
    assert code == 413 and "limit" in body["error"]


def test_ping_is_200(client: Client) -> None:
    """The real ping fixture answers 200 pong."""
    code, body = client.github("ping", (FIXTURES / "github/ping.json").read_bytes())
    assert (code, body["status"]) == (200, "pong")


def test_unused_event_is_200_ignored(client: Client) -> None:
    """Events prevu does not use are 200 ignored."""
    code, body = client.github("push", b"{}")
    assert (code, body["status"]) == (200, "ignored")


def test_repos_filter_ignores_other_repositories(tmp_path: Path) -> None:
    """With [[repos]], a repository not listed is 200 ignored and gets no preview."""
    config = make_config(tmp_path)
    from attrs import evolve

    client = Client(tmp_path, evolve(config, repos=(RepoConfig("acme/shop"),)))
    raw = (FIXTURES / "github/pull_request-opened.json").read_bytes()
    code, body = client.github("pull_request", raw)
    assert (code, body["status"]) == (200, "ignored")
    assert "not listed" in body["reason"]
    assert client.h.store.previews == {}


def test_github_off_without_secret_is_403(tmp_path: Path) -> None:
    """No [github] webhook_secret: GitHub webhooks are refused with 403 and why."""
    client = Client(tmp_path, Config(server=ServerConfig(state_dir=str(tmp_path))))
    code, body = client.github("ping", b"{}")
    assert code == 403 and "webhook_secret" in body["error"]


def test_closed_fixture_tears_down(client: Client) -> None:
    """opened then closed (the real fixtures): stopped, nothing left."""
    publish(client)
    client.github("pull_request", (FIXTURES / "github/pull_request-opened.json").read_bytes(), "a")
    code, body = client.github(
        "pull_request", (FIXTURES / "github/pull_request-closed.json").read_bytes(), "b"
    )
    assert code == 202 and body["status"] == "queued"
    client.h.settle(2)
    assert client.h.status("pr-2-hello-world") == "stopped"
    assert client.h.leftovers("pr-2-hello-world") == []


def test_gitlab_merge_request(client: Client) -> None:
    """The real GitLab Merge Request Hook with the right token queues a preview."""
    client.h.git.remote(
        "http://example.com/gitlabhq/gitlab-test.git",
        "refs/merge-requests/1/head",
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        {"Dockerfile": "FROM scratch"},
    )
    raw = (FIXTURES / "gitlab/merge_request-open.json").read_bytes()
    headers = {
        "X-Gitlab-Event": "Merge Request Hook",
        "X-Gitlab-Token": "gl-token",
        "X-Gitlab-Event-UUID": "u-1",
    }
    code, _, body = client.request("POST", "/webhooks/gitlab", data=raw, headers=headers)
    assert code == 202 and json.loads(body)["preview"] == "pr-1-gitlab-test"
    assert client.h.status("pr-1-gitlab-test") == "running"
    headers["X-Gitlab-Token"] = "wrong"
    code, _, _ = client.request("POST", "/webhooks/gitlab", data=raw, headers=headers)
    assert code == 401


def test_commands_without_a_runner_are_refused(client: Client) -> None:
    """Without a forge API to ask, `/preview approve` is refused (200) and nothing runs."""
    publish(client)
    raw = fixture_bytes(
        "github/pull_request-opened.json", pull_request__head__repo__full_name="mallory/Hello-World"
    )
    assert client.github("pull_request", raw, "a")[0] == 202
    assert client.h.status("pr-2-hello-world") == "queued"
    comment = json.loads((FIXTURES / "github/issue_comment-created.json").read_text())
    comment["issue"]["number"] = 2
    comment["issue"]["pull_request"] = {"url": "x"}
    comment["comment"]["body"] = "/preview approve"
    comment["comment"]["author_association"] = "OWNER"
    code, body = client.github("issue_comment", json.dumps(comment).encode(), "b")
    assert (code, body["status"]) == (200, "refused") and "[github] token" in body["reason"]
    assert client.h.status("pr-2-hello-world") == "queued"
    [entry] = [e for e in client.h.store.trail if e.delivery == "b"]
    assert (entry.event, entry.action, entry.decision) == ("comment", "approve", "refused")


# --- API ----------------------------------------------------------------------------


def test_api_needs_the_bearer_token(client: Client) -> None:
    """No or wrong token: 401 with WWW-Authenticate."""
    code, headers, _ = client.api_call("GET", "/api/previews", token=None)
    assert code == 401 and headers["www-authenticate"] == ['Bearer realm="prevu"']
    assert client.api_call("GET", "/api/previews", token="nope")[0] == 401
    assert client.api_call("GET", "/metrics", token=None)[0] == 401


def test_api_is_off_without_a_token(tmp_path: Path) -> None:
    """No api_token configured: 403 saying how to turn the API on."""
    client = Client(tmp_path, Config(server=ServerConfig(state_dir=str(tmp_path))))
    code, _, body = client.api_call("GET", "/api/previews", token="anything")
    assert code == 403 and "api_token" in json.loads(body)["error"]


def test_api_list_show_logs_redeploy_delete(client: Client) -> None:
    """The API lists, shows, logs, redeploys and deletes a preview."""
    publish(client)
    client.github("pull_request", (FIXTURES / "github/pull_request-opened.json").read_bytes())
    code, _, body = client.api_call("GET", "/api/previews")
    (item,) = json.loads(body)
    assert code == 200
    for key in (
        "id",
        "repo",
        "number",
        "branch",
        "sha",
        "status",
        "url",
        "host",
        "created_at",
        "updated_at",
        "error",
    ):
        assert key in item
    assert (item["id"], item["status"], item["sha"]) == ("pr-2-hello-world", "running", SHA)
    code, _, body = client.api_call("GET", "/api/previews/pr-2-hello-world")
    assert code == 200 and json.loads(body)["number"] == 2
    assert client.api_call("GET", "/api/previews/nope")[0] == 404
    code, headers, body = client.api_call("GET", "/api/previews/pr-2-hello-world/logs")
    assert code == 200 and headers["content-type"][0].startswith("text/plain")
    assert b"[build] Step 1/1 : FROM scratch" in body
    code, _, body = client.api_call("POST", "/api/previews/pr-2-hello-world/redeploy")
    assert code == 202 and len(client.h.docker.builds) == 2
    code, _, body = client.api_call("DELETE", "/api/previews/pr-2-hello-world")
    assert code == 202
    client.h.settle(2)
    assert client.h.status("pr-2-hello-world") == "stopped"
    assert client.h.leftovers("pr-2-hello-world") == []


def test_api_logs_as_server_sent_events(client: Client) -> None:
    """Accept: text/event-stream gets the stored lines as SSE events, then follows."""
    publish(client)
    client.h.docker.pause("build")
    client.github("pull_request", (FIXTURES / "github/pull_request-opened.json").read_bytes())

    async def go() -> Any:
        return await client.stub.get(
            "http://control/api/previews/pr-2-hello-world/logs",
            headers={"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"},
        )

    response_d = ensureDeferred(go())
    client.stub.flush()
    assert response_d.called
    response = response_d.result
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    chunks: list[bytes] = []
    from treq import collect

    collect(response, chunks.append)
    client.stub.flush()
    client.h.docker.release("build")
    client.stub.flush()
    text = b"".join(chunks).decode()
    assert "event: system" in text and "id: " in text
    assert "data: " in text and "Step 1/1 : FROM scratch" in text


def test_api_create_is_prevu_up(client: Client) -> None:
    """POST /api/previews deploys a branch numbered by branch."""
    client.h.git.remote(
        "file:///src/app", "refs/heads/feature/x", SHA, {"Dockerfile": "FROM scratch"}
    )
    payload = {"repo": "app", "branch": "feature/x", "sha": SHA, "clone_url": "file:///src/app"}
    code, _, body = client.api_call("POST", "/api/previews", data=json.dumps(payload).encode())
    assert code == 202
    item = json.loads(body)
    assert (item["id"], item["number"], item["status"]) == ("pr-1-app", 1, "running")
    code, _, body = client.api_call("POST", "/api/previews", data=json.dumps(payload).encode())
    assert json.loads(body)["number"] == 1
    bad = {**payload, "sha": "HEAD"}
    assert client.api_call("POST", "/api/previews", data=json.dumps(bad).encode())[0] == 400


def test_metrics_and_dashboard(client: Client) -> None:
    """/metrics is Prometheus text with the counters; / lists previews in HTML."""
    publish(client)
    client.github("pull_request", (FIXTURES / "github/pull_request-opened.json").read_bytes())
    code, headers, body = client.api_call("GET", "/metrics")
    text = body.decode()
    assert code == 200 and headers["content-type"][0].startswith("text/plain; version=0.0.4")
    assert 'prevu_webhooks_total{forge="github",result="queued"} 1' in text
    assert 'prevu_previews{status="running"} 1' in text
    assert 'prevu_builds_total{result="succeeded"} 1' in text
    code, headers, body = client.request("GET", "/")
    # No inline script: the one script is our own file (/static/live.js).
    assert code == 200 and b"pr-2-hello-world" in body and b"<script>" not in body


def test_a_captured_delivery_replayed_under_a_new_id_is_a_no_op(client: Client) -> None:
    """The delivery id is not signed: the same signed body under another id changes nothing."""
    publish(client)
    raw = (FIXTURES / "github/pull_request-opened.json").read_bytes()
    assert client.github("pull_request", raw, delivery="first")[0] == 202
    code, body = client.github("pull_request", raw, delivery="attacker-chosen")
    assert (code, body["status"]) == (200, "duplicate")
    assert len(client.h.docker.builds) == 1


@pytest.mark.parametrize("forge", ["local", "bitbucket", "GitHub"])
def test_webhooks_of_forges_without_webhooks_are_404(client: Client, forge: str) -> None:
    """`/webhooks/<name>` exists only for the registry's forges that have webhooks."""
    code, _, body = client.request("POST", f"/webhooks/{forge}", data=b"{}")
    assert code == 404 and forge in json.loads(body)["error"]
    assert client.h.store.previews == {}


def test_refusals_are_counted_by_status_code(client: Client) -> None:
    """The webhook metric keeps the status code as its label (docs/api.md)."""
    client.github("ping", b"{}", signature="sha256=00")
    code, _, text = client.api_call("GET", "/metrics")
    assert code == 200
    assert b'prevu_webhooks_total{forge="github",result="401"} 1' in text


def test_a_github_app_delivery_names_its_installation(client: Client) -> None:
    """A delivery from a GitHub App hands (repo, installation.id) on; others hand nothing."""
    told: list[tuple[str, int]] = []
    client.webhooks.installations = lambda repo, installation: told.append((repo, installation))
    publish(client)
    plain = fixture_bytes("github/pull_request-opened.json", installation=None)
    assert client.github("pull_request", plain, delivery="d-plain")[0] == 202
    assert told == []
    from_app = fixture_bytes("github/pull_request-opened.json", installation={"id": 4242})
    assert client.github("pull_request", from_app, delivery="d-app")[0] in (200, 202)
    assert told == [("Codertocat/Hello-World", 4242)]
