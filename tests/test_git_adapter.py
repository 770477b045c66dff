"""The git adapter against real local bare repositories (and a local smart-HTTP server)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.protocol import Factory, Protocol

from prevu.adapters.git import GitCli, auth_header, redact_url, scrub
from prevu.errors import GitError
from prevu.ports import GitSource
from tests.support.git_http import serve_git
from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import within


class RecordingReactor:
    """The real reactor, recording the argv, env and cwd of every spawned process."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.spawned: list[tuple[list[str], dict[str, str], str | None]] = []

    def spawnProcess(self, protocol: Any, executable: Any, args: Any, env: Any = None,
                     path: Any = None, **kwargs: Any) -> Any:
        self.spawned.append(([str(a) for a in args], dict(env or {}), path))
        return self._reactor.spawnProcess(protocol, executable, args, env=env, path=path, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@pytest.fixture
def repo(tmp_path: Path) -> ForgeRepo:
    return ForgeRepo.create(tmp_path / "forge")


@pytest.fixture
def recording(reactor: Any) -> RecordingReactor:
    return RecordingReactor(reactor)


@pytest.fixture
def git(recording: RecordingReactor, tmp_path: Path, thread_pool: Any) -> GitCli:
    return GitCli(reactor=recording, root=str(tmp_path / "state" / "workspaces"), pool=thread_pool)


def all_files_contain(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if not path.is_symlink() and needle in path.read_bytes():
                hits.append(path)
    return hits


@pytest_twisted.ensureDeferred
async def test_fetches_github_pull_head_at_its_sha(git: GitCli, repo: ForgeRepo) -> None:
    """refs/pull/N/head is fetched shallowly, HEAD is the SHA, files are there."""
    sha = repo.push_pull(7, {"www/index.html": "pr seven\n"})
    checkout = await within(git.fetch(GitSource(repo.url, "refs/pull/7/head", sha), "pr-7"), 30)
    path = Path(checkout.path)
    assert checkout.sha == sha
    assert path.parent == Path(git.root)
    assert (path / "www" / "index.html").read_text() == "pr seven\n"
    assert (path / ".git" / "shallow").exists()
    assert git.workspaces() == ["pr-7"]


@pytest_twisted.ensureDeferred
async def test_fetches_gitlab_merge_request_head(git: GitCli, repo: ForgeRepo) -> None:
    """refs/merge-requests/N/head works the same way."""
    sha = repo.push_pull(3, {"a.txt": "mr\n"})
    source = GitSource(repo.url, "refs/merge-requests/3/head", sha)
    checkout = await within(git.fetch(source, "mr-3"), 30)
    assert (Path(checkout.path) / "a.txt").read_text() == "mr\n"


@pytest_twisted.ensureDeferred
async def test_refetch_replaces_workspace_and_remove_is_idempotent(
    git: GitCli, repo: ForgeRepo
) -> None:
    """A second fetch into the same workspace replaces it; removing twice is fine."""
    first = repo.push_pull(1, {"old.txt": "old\n"})
    await within(git.fetch(GitSource(repo.url, "refs/pull/1/head", first), "pr-1"), 30)
    (Path(git.root) / "pr-1" / "leftover").write_text("x")
    second = repo.push_pull(1, {"new.txt": "new\n"})
    checkout = await within(git.fetch(GitSource(repo.url, "refs/pull/1/head", second), "pr-1"), 30)
    assert not (Path(checkout.path) / "leftover").exists()
    assert (Path(checkout.path) / "new.txt").exists()
    await within(git.remove_workspace("pr-1"), 10)
    await within(git.remove_workspace("pr-1"), 10)
    assert not Path(checkout.path).exists()
    assert git.workspaces() == []


@pytest_twisted.ensureDeferred
async def test_wrong_sha_fails_and_leaves_no_workspace(git: GitCli, repo: ForgeRepo) -> None:
    """When the ref has moved on from the expected SHA, the fetch fails and cleans up."""
    stale = repo.push_pull(2, {"a": "1"})
    current = repo.push_pull(2, {"a": "2"})
    with pytest.raises(GitError) as caught:
        await within(git.fetch(GitSource(repo.url, "refs/pull/2/head", stale), "pr-2"), 30)
    assert current in caught.value.reason and stale in caught.value.reason
    assert git.workspaces() == []


@pytest_twisted.ensureDeferred
async def test_missing_ref_fails_with_gits_reason(git: GitCli, repo: ForgeRepo) -> None:
    """A ref the repository does not have is a GitError naming the fetch."""
    with pytest.raises(GitError) as caught:
        await within(git.fetch(GitSource(repo.url, "refs/pull/99/head", "a" * 40), "pr-99"), 30)
    assert caught.value.command.startswith("fetch")
    assert "refs/pull/99/head" in caught.value.reason
    assert git.workspaces() == []


@pytest_twisted.ensureDeferred
async def test_invalid_workspace_name_is_refused(git: GitCli, repo: ForgeRepo) -> None:
    """Workspace names cannot escape the workspace root."""
    with pytest.raises(GitError):
        await within(git.fetch(GitSource(repo.url, "refs/pull/1/head", "a" * 40), "../x"), 10)


class _Silent(Protocol):
    """Accepts a connection and never answers: a hung git server."""


@pytest_twisted.ensureDeferred
async def test_hung_server_times_out(git: GitCli, reactor: Any) -> None:
    """A fetch that does not finish within GitSource.timeout is killed and fails."""
    port = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/shop.git"
        started = reactor.seconds()
        with pytest.raises(GitError) as caught:
            source = GitSource(url, "refs/pull/1/head", "a" * 40, timeout=1.0)
            await within(git.fetch(source, "pr-hung"), 15)
        assert caught.value.reason == "timed out"
        assert reactor.seconds() - started < 5
        assert git.workspaces() == []
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_token_authenticates_without_touching_argv_disk_or_errors(
    git: GitCli, repo: ForgeRepo, recording: RecordingReactor, reactor: Any, tmp_path: Path
) -> None:
    """The token reaches the server as a header, never argv, .git/ files or error messages."""
    token = "ghs_s3cr3tTOKENvalue1234567890"
    sha = repo.push_pull(5, {"private.txt": "secret content\n"})
    port, gate = serve_git(repo.bare.parent, token, reactor)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/{repo.bare.name}"
        source = GitSource(url, "refs/pull/5/head", sha, token=token)
        assert token not in repr(source)

        checkout = await within(git.fetch(source, "pr-5"), 30)
        assert (Path(checkout.path) / "private.txt").read_text() == "secret content\n"
        sent = auth_header("x-access-token", token).encode().split(b": ", 1)[1]
        assert sent in gate.authorizations

        # Never in argv; only in the environment of the fetch, as a scoped header.
        assert recording.spawned
        encoded = auth_header("x-access-token", token).split(" ", 2)[2]
        for argv, env, _ in recording.spawned:
            assert not any(token in arg or encoded in arg for arg in argv), argv
            other_env = {k: v for k, v in env.items() if k != "GIT_CONFIG_VALUE_0"}
            assert not any(token in v or encoded in v for v in other_env.values())
        fetches = [env for argv, env, _ in recording.spawned if "fetch" in argv]
        assert fetches[0]["GIT_CONFIG_KEY_0"] == f"http.{url}.extraHeader"
        # Nothing on disk.
        assert all_files_contain(Path(git.root), token.encode()) == []
        assert all_files_contain(Path(git.root), encoded.encode()) == []

        # A wrong token fails, and the error does not carry it.
        wrong = "ghs_WRONGtoken000000000000"
        with pytest.raises(GitError) as caught:
            bad = GitSource(url, "refs/pull/5/head", sha, token=wrong)
            await within(git.fetch(bad, "pr-5-bad"), 30)
        assert wrong not in str(caught.value)
        assert auth_header("x-access-token", wrong).split(" ", 2)[2] not in str(caught.value)

        # Without a token git fails at once instead of prompting.
        with pytest.raises(GitError):
            await within(git.fetch(GitSource(url, "refs/pull/5/head", sha), "pr-5-anon"), 30)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_sources_username_goes_with_the_token(
    git: GitCli, repo: ForgeRepo, reactor: Any
) -> None:
    """GitLab's `oauth2` (or any forge's user name) reaches the server, not GitHub's."""
    token = "glpat-s3cr3tTOKENvalue1234567890"
    sha = repo.push_pull(6, {"x": "y"})
    port, gate = serve_git(repo.bare.parent, token, reactor)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/{repo.bare.name}"
        source = GitSource(url, "refs/merge-requests/6/head", sha, token=token, username="oauth2")
        await within(git.fetch(source, "pr-6"), 30)
        sent = auth_header("oauth2", token).encode().split(b": ", 1)[1]
        assert sent in gate.authorizations
        github_form = auth_header("x-access-token", token).encode().split(b": ", 1)[1]
        assert github_form not in gate.authorizations
    finally:
        await port.stopListening()


def test_scrub_uses_the_sources_username() -> None:
    """The Basic form scrubbed is the one with the user name that was sent."""
    encoded = auth_header("oauth2", "abc123").split(" ", 2)[2]
    assert scrub(f"header {encoded}", ["abc123"], "oauth2") == "header ***"


@pytest_twisted.ensureDeferred
async def test_token_is_not_sent_for_non_http_urls(
    git: GitCli, repo: ForgeRepo, recording: RecordingReactor
) -> None:
    """file:// and ssh clone URLs never get the HTTP header in their environment."""
    sha = repo.push_pull(4, {"x": "y"})
    await within(git.fetch(GitSource(repo.url, "refs/pull/4/head", sha, token="tok"), "pr-4"), 30)
    assert all("GIT_CONFIG_VALUE_0" not in env for _, env, _ in recording.spawned)


def test_scrub_removes_token_and_its_basic_form() -> None:
    """Error output is scrubbed of the token, raw and base64-encoded."""
    token = "abc123"
    encoded = auth_header("x-access-token", token).split(" ", 2)[2]
    text = f"fatal: token {token} header {encoded}"
    assert scrub(text, [token], "x-access-token") == "fatal: token *** header ***"


def test_redact_url_drops_credentials() -> None:
    """URLs in messages lose their user:password part."""
    assert redact_url("https://user:pw@example.com:8443/a.git") == "https://example.com:8443/a.git"
    assert redact_url("https://example.com/a.git") == "https://example.com/a.git"


@pytest_twisted.ensureDeferred
async def test_cancelled_fetch_kills_git_and_leaves_no_workspace(
    git: GitCli, reactor: Any
) -> None:
    """Cancelling a fetch (the pull request was closed) stops git and cleans up."""
    from twisted.internet.defer import CancelledError, Deferred

    from tests.support.timeouts import sleep

    port = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/shop.git"
        fetching = Deferred.fromCoroutine(
            git.fetch(GitSource(url, "refs/pull/1/head", "a" * 40, timeout=60), "pr-cancel")
        )
        await sleep(0.3)
        fetching.cancel()
        with pytest.raises(CancelledError):
            await within(fetching, 10)
        for _ in range(50):
            if not git.workspaces():
                break
            await sleep(0.1)
        assert git.workspaces() == []
    finally:
        await port.stopListening()
