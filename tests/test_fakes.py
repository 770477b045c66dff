"""The fakes behave like the real adapters where the orchestrator can tell."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from prevu.errors import DockerError, DockerUnavailable, GitError
from prevu.ports import BuildRequest, GitSource, RunRequest
from prevu.testing.fakes import FakeDocker, FakeGit, FakeStore

SHA = "a" * 40


@pytest_twisted.ensureDeferred
async def test_fake_git_fetches_published_files_and_checks_sha(tmp_path: Path) -> None:
    """FakeGit writes the published files; a moved ref is a GitError like the real one."""
    git = FakeGit(str(tmp_path))
    git.remote("u", "refs/pull/1/head", SHA, {".prevu.toml": "[run]\nport = 80\n"})
    checkout = await git.fetch(GitSource("u", "refs/pull/1/head", SHA), "w1")
    assert (Path(checkout.path) / ".prevu.toml").read_text().startswith("[run]")
    with pytest.raises(GitError):
        await git.fetch(GitSource("u", "refs/pull/1/head", "b" * 40), "w2")
    await git.remove_workspace("w1")
    assert git.workspaces() == []


@pytest_twisted.ensureDeferred
async def test_fake_docker_lifecycle_and_down_engine() -> None:
    """Build, network, run, list, remove; with `up = False` everything is DockerUnavailable."""
    docker = FakeDocker()
    lines: list[str] = []
    image = await docker.build(BuildRequest(context=".", tag="t:1"), lines.append)
    assert lines == list(docker.build_lines)
    await docker.create_network("prevu-x", {})
    running = await docker.run(RunRequest(image=image.id, name="c", network="prevu-x", port=8080))
    assert running.port == 8080 and running.address.startswith("10.99.")
    managed = await docker.list_managed()
    assert [c.name for c in managed.containers] == ["c"]
    assert managed.containers[0].labels["prevu.managed"] == "true"
    with pytest.raises(DockerError):
        await docker.run(RunRequest(image=image.id, name="c", network="prevu-x", port=8080))
    await docker.remove_container("c")
    await docker.remove_container("c")
    await docker.remove_image(image.id)
    await docker.remove_network("prevu-x")
    assert await docker.list_managed() == type(managed)()
    docker.up = False
    assert await docker.ping() is False
    with pytest.raises(DockerUnavailable):
        await docker.list_managed()


@pytest_twisted.ensureDeferred
async def test_paused_operation_can_be_released_or_cancelled() -> None:
    """pause/release hold an operation in flight; cancelling it raises CancelledError."""
    docker = FakeDocker()
    docker.pause("build")
    first = Deferred.fromCoroutine(docker.build(BuildRequest(context=".", tag="a"), print))
    second = Deferred.fromCoroutine(docker.build(BuildRequest(context=".", tag="b"), print))
    assert docker.pauses.pending("build") == 2 and not first.called
    first.cancel()
    with pytest.raises(CancelledError):
        await first
    docker.release("build")
    assert (await second).tag == "b"
    assert docker.pauses.cancelled == {"build": 1}


def test_fake_store_follows_the_store_contract() -> None:
    """FakeStore keeps logs in order with `after`, watchers, and redelivery detection."""
    store = FakeStore(Clock())
    seen: list[str] = []
    stop = store.watch_logs(lambda line: seen.append(line.line))
    one = store.append_log("p", "build", "a")
    store.append_log("p", "build", "b")
    stop()
    assert [x.line for x in store.read_logs("p", after=one.seq)] == ["b"]
    assert seen == ["a", "b"]
    assert store.remember_delivery("d") and not store.remember_delivery("d")
