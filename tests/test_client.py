"""`prevu ls`, `prevu destroy` and `prevu up` against the real control app, on fakes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from prevu.cli import main
from prevu.control.api import PreviewsApi
from prevu.control.app import ControlApp
from tests.support.git_repos import GIT_ENV
from tests.support.timeouts import within
from tests.test_orchestrator import Harness
from tests.test_webhooks import TOKEN, make_config


@pytest.fixture
def served(reactor: Any, tmp_path: Path) -> Any:
    h = Harness(tmp_path, make_config(tmp_path))
    api = PreviewsApi(h.config, h.orchestrator, h.store, h.docker, h.orchestrator.metrics)
    port = reactor.listenTCP(
        0, Site(ControlApp(config=h.config, previews=api).resource()), interface="127.0.0.1"
    )
    h.url = f"http://127.0.0.1:{port.getHost().port}"
    yield h
    port.stopListening()


async def cli(*argv: str) -> int:
    status: int = await within(deferToThread(main, list(argv)), 30)
    return status


def checkout(tmp: Path) -> tuple[Path, str]:
    work = tmp / "myapp"
    work.mkdir()
    env = {**GIT_ENV, "PATH": "/usr/bin:/bin:/usr/local/bin"}
    for command in (
        ["init", "-q", "-b", "feature/x"],
        ["commit", "-q", "--allow-empty", "-m", "x"],
    ):
        subprocess.run(["git", *command], cwd=work, env=env, check=True)
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=work, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    return work, sha


@pytest_twisted.ensureDeferred
async def test_up_ls_destroy(served: Any, tmp_path: Path, capsys: Any) -> None:
    """`up` deploys the checkout numbered by branch, `ls` lists it, `destroy` stops it."""
    work, sha = checkout(tmp_path)
    served.git.remote(work.as_uri(), "refs/heads/feature/x", sha, {"Dockerfile": "FROM scratch"})
    common = ["--url", served.url, "--token", TOKEN]
    assert await cli("up", *common, "-C", str(work)) == 0
    out = capsys.readouterr().out
    assert "pr-1-myapp: running at http://pr-1-myapp.localhost:8000/" in out
    assert await cli("ls", *common) == 0
    out = capsys.readouterr().out
    assert "pr-1-myapp" in out and "running" in out and sha[:12] in out
    assert await cli("destroy", *common, "pr-1-myapp") == 0
    assert "pr-1-myapp: stopped" in capsys.readouterr().out


@pytest_twisted.ensureDeferred
async def test_wrong_token_exits_1_with_the_reason(served: Any, capsys: Any) -> None:
    """A wrong token: exit status 1 and the API's reason on stderr."""
    assert await cli("ls", "--url", served.url, "--token", "wrong") == 1
    assert "401 missing or wrong bearer token" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_unreachable_server_exits_1(capsys: Any) -> None:
    """Nothing listening: exit status 1 saying prevu cannot be reached."""
    assert await cli("ls", "--url", "http://127.0.0.1:9", "--token", "x") == 1
    assert "cannot reach prevu" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_up_access_defaults_to_public_without_a_login_and_follows_the_flag(
    served: Any, tmp_path: Path
) -> None:
    """No way to log in is configured: `up` makes a public preview; --access private wins."""
    work, sha = checkout(tmp_path)
    served.git.remote(work.as_uri(), "refs/heads/feature/x", sha, {"Dockerfile": "FROM scratch"})
    common = ["--url", served.url, "--token", TOKEN, "-C", str(work)]
    assert await cli("up", *common) == 0
    assert served.routes.lookup("pr-1-myapp.localhost").access == "public"
    assert await cli("up", *common, "--repo", "other", "--access", "private") == 0
    assert served.routes.lookup("pr-1-other.localhost").access == "private"


def test_token_is_read_from_the_state_dir(tmp_path: Path, monkeypatch: Any) -> None:
    """Without --token, $PREVU_TOKEN or api_token, the CLI uses the server's stored token."""
    import argparse

    from prevu.client import connection

    state = tmp_path / "state"
    state.mkdir()
    (state / "api_token").write_text("stored-token\n")
    config = tmp_path / "prevu.toml"
    config.write_text(f'[server]\nstate_dir = "{state}"\n')
    monkeypatch.delenv("PREVU_TOKEN", raising=False)
    monkeypatch.delenv("PREVU_URL", raising=False)
    args = argparse.Namespace(url=None, token=None, config=str(config))
    assert connection(args) == ("http://127.0.0.1:8001", "stored-token")
