"""
Feedback end to end on the real Docker engine: a signed webhook opens a pull
request; the fake GitHub receives one comment whose URL serves the app through
prevu's proxy; closing it says removed and deactivates the deployment.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from attrs import evolve

from prevu.feedback.wiring import FeedbackService, build_feedback
from prevu.testing.fake_github import FakeGithub, FakeUser, listen
from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import sleep
from tests.test_previews_e2e import REPO, Stack, push, site_files

pytestmark = pytest.mark.docker

TOKEN = "ghp_e2efeedbacktoken42"
PREVIEW = "pr-1-hello-world"


class FeedbackStack(Stack):
    """The e2e stack plus GitHub feedback pointed at the fake."""

    def __init__(self, fake: FakeGithub, *args: Any, **kwargs: Any) -> None:
        self.fake = fake
        self.feedback: FeedbackService | None = None
        super().__init__(*args, **kwargs)

    def boot(self) -> None:
        github = evolve(self.config.github, token=TOKEN, api_url=self.fake.base)
        self.config = evolve(self.config, github=github)
        super().boot()
        self.feedback = build_feedback(
            self.config, self.reactor, self.orchestrator.watch, self.store
        )
        assert self.feedback is not None
        self.feedback.startService()

    async def shutdown(self) -> None:
        if self.feedback is not None:
            self.feedback.stopService()
        await super().shutdown()


async def until(predicate: Callable[[], bool], seconds: float = 60) -> None:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        await sleep(0.05)
    raise AssertionError("condition not reached")


@pytest_twisted.async_yield_fixture
async def stack(reactor: Any, thread_pool: Any, tmp_path: Path) -> AsyncIterator[FeedbackStack]:
    fake = FakeGithub()
    fake.users["prevu-bot"] = FakeUser("prevu-bot")
    fake.tokens[TOKEN] = "prevu-bot"
    fake.repositories[REPO.lower()] = False
    port = listen(reactor, fake)
    forge = ForgeRepo.create(tmp_path / "forge", "hello-world")
    stack = FeedbackStack(fake, reactor, thread_pool, tmp_path, forge)
    await stack.start()
    yield stack
    await stack.shutdown()
    await port.stopListening()


def comments(stack: FeedbackStack) -> list[dict[str, Any]]:
    return stack.fake.comments_on(REPO, 1)


@pytest_twisted.ensureDeferred
async def test_a_pull_request_is_told_its_preview_end_to_end(stack: FeedbackStack) -> None:
    sha = push(stack.forge, 1, site_files("hello from the comment\n"))
    code, _ = await stack.pull_request("opened", 1, sha)
    assert code == 202
    await stack.until(PREVIEW, "running")
    await until(lambda: bool(comments(stack)) and "Preview ready" in comments(stack)[0]["body"])
    [comment] = comments(stack)
    assert comment["user"]["login"] == "prevu-bot"
    url = re.search(r"\| Preview \| \[([^\]]+)\]", comment["body"])
    assert url is not None
    host = urlsplit(url.group(1)).hostname
    assert host is not None
    assert await stack.get(host) == (200, b"hello from the comment\n")
    statuses = [s["state"] for s in stack.fake.statuses]
    assert statuses[0] == "pending" and statuses[-1] == "success"
    assert stack.fake.statuses[-1]["target_url"] == url.group(1)

    code, _ = await stack.pull_request("closed", 1, sha)
    assert code == 202
    await until(lambda: "removed" in comments(stack)[0]["body"].lower())
    [deployment] = stack.fake.deployments.values()
    await until(lambda: deployment["_state"] == "inactive")
    assert len(comments(stack)) == 1
    await stack.settled()
