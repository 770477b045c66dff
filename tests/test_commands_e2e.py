"""
GitLab end to end on the real Docker engine and git: a Merge Request Hook
opens a preview that prevu's proxy serves; the fake GitLab receives one MR
note carrying its URL; a Developer's `/preview destroy` note (membership
asked of GitLab) removes it and nothing is left.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import treq
from attrs import evolve
from twisted.web.server import Site

from prevu.adapters.docker_runtime import DockerRuntime
from prevu.adapters.health import NetworkHealthChecker
from prevu.config import GitlabConfig, RepoConfig
from prevu.control.api import PreviewsApi
from prevu.control.app import ControlApp
from prevu.control.webhooks import Webhooks
from prevu.feedback.wiring import FeedbackService, build_forges
from prevu.orchestrator import Orchestrator, OrchestratorSettings
from prevu.proxy.server import ProxyFactory, ProxySettings
from prevu.routing import RouteRegistry
from prevu.store import SqliteStore
from prevu.testing.fake_gitlab import FakeGitlab, listen
from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import sleep, within
from tests.test_previews_e2e import FIXTURES, Stack, push, site_files

pytestmark = pytest.mark.docker

HOOK_TOKEN = "e2e-gitlab-hook"
TOKEN = "glpat-e2ecommands000000"
GL_REPO = "acme/hello-world"
PREVIEW = "pr-1-hello-world"
BOT, DEV = 1, 2


class GitlabStack(Stack):
    """The e2e stack as GitLab sees it: Merge Request and Note Hooks, feedback and commands."""

    def __init__(self, fake: FakeGitlab, *args: Any, **kwargs: Any) -> None:
        self.fake = fake
        self.feedback: list[FeedbackService] = []
        super().__init__(*args, **kwargs)

    def boot(self) -> None:
        gitlab = GitlabConfig(webhook_token=HOOK_TOKEN, token=TOKEN, url=self.fake.base)
        self.config = evolve(
            self.config, gitlab=gitlab, repos=(RepoConfig(GL_REPO, access="public"),)
        )
        self.store = SqliteStore.in_state_dir(self.config.server.state_dir, self.reactor)
        self.routes = RouteRegistry()
        settings = OrchestratorSettings.from_config(
            self.config, drain_delay=0.5, start_timeout=20.0
        )
        runtime = DockerRuntime.from_config(
            self.docker, NetworkHealthChecker(self.reactor), self.config.docker, settings.instance
        )
        self.orchestrator = Orchestrator(
            settings, self.reactor, self.routes, runtime, self.git, self.store
        )
        self.feedback, runner = build_forges(
            self.config, self.reactor, self.orchestrator, self.orchestrator.watch, self.store
        )
        for service in self.feedback:
            service.startService()
        webhooks = Webhooks(
            self.config,
            self.orchestrator,
            self.store,
            self.orchestrator.metrics,
            commands=runner.submit,
        )
        api = PreviewsApi(self.config, self.orchestrator, self.store, self.docker)
        app = ControlApp(config=self.config, webhooks=webhooks, previews=api)
        control = self.reactor.listenTCP(0, Site(app.resource()), interface="127.0.0.1")
        proxy = self.reactor.listenTCP(
            0,
            ProxyFactory(self.reactor, self.routes, ProxySettings(), waker=self.orchestrator),
            interface="127.0.0.1",
        )
        self.listening = [control, proxy]
        self.control_port = control.getHost().port
        self.proxy_port = proxy.getHost().port

    async def shutdown(self) -> None:
        for service in self.feedback:
            service.stopService()
        await super().shutdown()

    async def hook(self, event: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.deliveries += 1
        headers = {
            "X-Gitlab-Event": event,
            "X-Gitlab-Token": HOOK_TOKEN,
            "X-Gitlab-Event-UUID": f"e2e-{self.deliveries}",
            "Content-Type": "application/json",
        }
        url = f"http://127.0.0.1:{self.control_port}/webhooks/gitlab"
        body = json.dumps(data).encode()
        response = await within(treq.post(url, data=body, headers=headers, persistent=False), 10)
        return response.code, json.loads(await within(treq.content(response), 10))

    async def merge_request(self, sha: str) -> tuple[int, dict[str, Any]]:
        data = json.loads((FIXTURES / "gitlab/merge_request-open.json").read_text())
        data["project"].update(path_with_namespace=GL_REPO, git_http_url=self.forge.url)
        data["object_attributes"]["last_commit"]["id"] = sha
        return await self.hook("Merge Request Hook", data)

    async def note(self, user: int, text: str) -> tuple[int, dict[str, Any]]:
        note = self.fake.write_note(GL_REPO, 1, user, text)
        data = json.loads((FIXTURES / "gitlab/note-merge_request.json").read_text())
        data["project"]["path_with_namespace"] = GL_REPO
        data["user"].update(id=user, username=self.fake.users[user])
        data["object_attributes"].update(id=note["id"], note=text, author_id=user)
        return await self.hook("Note Hook", data)

    def sticky(self) -> str:
        notes = [n for n in self.fake.notes_on(GL_REPO, 1) if n["author"]["id"] == BOT]
        return str(notes[0]["body"]) if len(notes) == 1 else ""


async def until(predicate: Callable[[], bool], seconds: float = 60) -> None:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        await sleep(0.05)
    raise AssertionError("condition not reached")


@pytest_twisted.async_yield_fixture
async def stack(reactor: Any, thread_pool: Any, tmp_path: Path) -> AsyncIterator[GitlabStack]:
    fake = FakeGitlab()
    fake.add_user(BOT, "prevu-bot", TOKEN)
    fake.add_user(DEV, "maria")
    fake.add_project(GL_REPO, "public", maria=30)
    port = listen(reactor, fake)
    forge = ForgeRepo.create(tmp_path / "forge", "hello-world")
    stack = GitlabStack(fake, reactor, thread_pool, tmp_path, forge)
    await stack.start()
    yield stack
    await stack.shutdown()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_gitlab_merge_request_served_then_destroyed_by_command(
    stack: GitlabStack, docker_client: Any
) -> None:
    """MR opened by webhook: served, its note carries the URL; a Developer's destroy removes it."""
    sha = push(stack.forge, 1, site_files("hello from gitlab\n"))
    code, body = await stack.merge_request(sha)
    assert (code, body["preview"]) == (202, PREVIEW)
    await stack.until(PREVIEW, "running")
    await until(lambda: "Preview ready" in stack.sticky())
    url = re.search(r"\| Preview \| \[([^\]]+)\]", stack.sticky())
    assert url is not None
    host = urlsplit(url.group(1)).hostname
    assert host is not None
    assert await stack.get(host) == (200, b"hello from gitlab\n")
    assert stack.fake.statuses_of(sha)[-1] == "success"

    code, body = await stack.note(DEV, "/preview destroy")
    assert (code, body["status"]) == (202, "queued")
    await stack.until(PREVIEW, "stopped")
    await until(lambda: "Preview removed" in stack.sticky())
    assert "maria `/preview destroy`: removing the preview" in stack.sticky()
    assert [a["name"] for a in stack.fake.awards] == ["thumbsup"]
    assert (await stack.get(host))[0] == 410, "removed: the closed preview's page"
    await stack.settled()
    assert stack.leftovers(docker_client, PREVIEW) == []
    await until(lambda: all(e["state"] == "stopped" for e in stack.fake.environments.values()))
