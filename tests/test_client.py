"""
`prevu ls`, `prevu destroy` and `prevu up` against the real control app, on
fakes; the CLI's own pieces (checkout checks, the `ls` table, the SSE reader).
The same commands on the real engine: tests/test_cli_e2e.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from prevu.cli import main, options_after_command, parser
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
    (work / "Dockerfile").write_text("FROM scratch\n")
    for command in (
        ["init", "-q", "-b", "feature/x"],
        ["add", "Dockerfile"],
        ["commit", "-q", "-m", "x"],
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


def git_in(work: Path, *command: str) -> None:
    env = {**GIT_ENV, "PATH": "/usr/bin:/bin:/usr/local/bin"}
    subprocess.run(["git", *command], cwd=work, env=env, check=True, capture_output=True)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("none", "is not in a git checkout: run prevu up in the repository"),
        ("empty", "has no commit yet: prevu deploys committed code"),
        ("no-dockerfile", "no Dockerfile in"),
        ("untracked", "it is not committed yet: git add Dockerfile && git commit"),
        ("detached", "detached HEAD: check out a branch first"),
    ],
)
def test_up_says_what_to_do_when_the_checkout_cannot_be_deployed(
    tmp_path: Path, capsys: Any, setup: str, expected: str
) -> None:
    """Outside a checkout, before the first commit, without a committed Dockerfile, on a
    detached HEAD: exit 1 with what to do, and no request is made."""
    work = tmp_path / "app"
    work.mkdir()
    if setup != "none":
        git_in(work, "init", "-q", "-b", "main")
    if setup in ("no-dockerfile", "untracked", "detached"):
        (work / "README").write_text("x\n")
        git_in(work, "add", "README")
        git_in(work, "commit", "-q", "-m", "x")
    if setup == "untracked":
        (work / "Dockerfile").write_text("FROM scratch\n")
    if setup == "detached":
        (work / "Dockerfile").write_text("FROM scratch\n")
        git_in(work, "add", "Dockerfile")
        git_in(work, "commit", "-q", "-m", "y")
        git_in(work, "checkout", "-q", "--detach")
    assert main(["up", "--url", "http://127.0.0.1:9", "--token", "x", "-C", str(work)]) == 1
    err = capsys.readouterr().err
    assert expected in err and "cannot reach" not in err


def test_ls_table_has_a_header_age_and_one_line_notes() -> None:
    """`ls`: header, aligned columns, age in the largest unit, a multi-line reason on one line."""
    from datetime import UTC, datetime

    from prevu.client import table

    now = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)
    previews = [
        {
            "id": "pr-1-a",
            "status": "running",
            "created_at": "2026-01-02T11:59:18.5Z",
            "sha": "a" * 40,
            "url": "http://pr-1-a.localhost:8000/",
        },
        {
            "id": "pr-22-shop",
            "status": "failed",
            "created_at": "2025-12-30T11:00:00Z",
            "sha": None,
            "url": "http://pr-22-shop.localhost:8000/",
            "error": "exited\nno DB",
        },
    ]
    lines = table(previews, now)
    assert lines[0].split() == ["PREVIEW", "STATUS", "AGE", "SHA", "URL"]
    assert lines[1].split() == ["pr-1-a", "running", "41s", "a" * 12, previews[0]["url"]]
    assert lines[2].endswith("http://pr-22-shop.localhost:8000/  exited / no DB")
    assert lines[2].split()[:3] == ["pr-22-shop", "failed", "3d"]
    assert lines[1].index("running") == lines[2].index("failed") == lines[0].index("STATUS")


def test_the_event_stream_reader_yields_one_line_per_event() -> None:
    """SSE: `id` and `data` make a LogEvent; comments and id-less events are skipped."""
    from prevu.watch import LogEvent, brief, noise, parse_events

    stream = [
        b": following\n",
        b"\n",
        b"id: 7\n",
        b"event: build\n",
        b"data: 2026-01-02T03:04:05Z [build] #1 DONE\n",
        b"\n",
        b"data: no id\n",
        b"\n",
        b"id: 9\r\n",
        b"data: a\n",
        b"data: b\n",
        b"\n",
    ]
    events = list(parse_events(iter(stream)))
    assert events == [LogEvent(7, "2026-01-02T03:04:05Z [build] #1 DONE"), LogEvent(9, "a\nb")]
    assert brief(events[0].text) == "[build] #1 DONE"
    assert noise("2026-01-02T03:04:05Z [build] #4 sha256:" + "0f" * 32)
    assert noise("2026-01-02T03:04:05Z [build] ")
    assert not noise(events[0].text)


@pytest.mark.parametrize(
    ("files", "error"),
    [
        (
            {"README": "x"},
            "docker build: Dockerfile not found at the top of the repository: commit one, "
            "or name yours with build.dockerfile in .prevu.toml",
        ),
        (
            {".prevu.toml": '[build]\ndockerfile = "web/Dockerfile"\n'},
            ".prevu.toml: build.dockerfile: web/Dockerfile not found in the repository",
        ),
    ],
)
def test_a_missing_dockerfile_is_a_prevu_toml_error_only_when_it_names_one(
    tmp_path: Path, files: dict[str, str], error: str
) -> None:
    """No Dockerfile and no .prevu.toml naming one: not reported as a .prevu.toml error."""
    from tests.test_orchestrator import SHAS, URL

    h = Harness(tmp_path)
    h.git.remote(URL, "refs/pull/11/head", SHAS[0], files)
    h.deploy(11, SHAS[0])
    record = h.store.get("pr-11-shop")
    assert record is not None and record.status == "failed"
    assert record.error == error


WATCHED_LOG = (
    "2026-01-02T03:04:00Z [system] status failed: old\n"
    "2026-01-02T03:05:00Z [build] #1 sha256:" + "ab" * 32 + "\n"
    "2026-01-02T03:05:01Z [build] #1 DONE 0.1s\n"
    "2026-01-02T03:05:02Z [run] no DATABASE_URL\n"
)


@pytest.mark.parametrize(
    ("final", "status", "printed"),
    [
        ("running", 0, ["pr-1-a: running at http://a/"]),
        (
            "failed",
            1,
            [
                "pr-1-a: failed: exited",
                "  x",
                "last 3 log lines:",
                "  [system] status failed: old",
                "  [build] #1 DONE 0.1s",
                "  [run] no DATABASE_URL",
                "all of it: prevu logs pr-1-a; the same commit again: prevu redeploy pr-1-a;"
                " a fix: commit it, then prevu up (or push)",
            ],
        ),
    ],
)
def test_watch_shows_this_deployments_lines_once_then_the_outcome(
    final: str, status: int, printed: list[str]
) -> None:
    """No stream (nothing listens): the stored lines of this deployment (from `since`), then
    the outcome; a failure adds the reason and the last lines without digest noise."""
    import io
    from datetime import UTC, datetime

    from prevu.watch import Follower, watch

    statuses = iter(["building", final])
    preview = {"id": "pr-1-a", "status": "queued", "url": "http://a/", "error": "exited\nx"}

    def call(method: str, path: str) -> dict[str, str]:
        assert (method, path) == ("GET", "/api/previews/pr-1-a")
        return {**preview, "status": next(statuses)}

    shown: list[str] = []
    since = datetime(2026, 1, 2, 3, 5, tzinfo=UTC)
    follower = Follower("http://127.0.0.1:9", None, "pr-1-a", lambda e: shown.append(e.text))
    follower.since = since
    out = io.StringIO()
    assert watch(preview, call, lambda path: WATCHED_LOG, follower, out, interval=0) == status
    assert shown == WATCHED_LOG.splitlines()[1:]
    assert out.getvalue().splitlines() == printed


def test_watch_gives_up_after_the_timeout() -> None:
    """Still building after --timeout seconds: exit status 1 saying so."""
    import io

    from prevu.watch import Follower, watch

    stuck = Follower("http://127.0.0.1:9", None, "pr-1-a", lambda e: None)
    out = io.StringIO()
    building = {"id": "pr-1-a", "status": "building", "url": "u"}
    result = watch(
        building, lambda m, p: building, lambda p: "", stuck, out, timeout=0.05, interval=0.01
    )
    assert result == 1 and out.getvalue() == "pr-1-a: still building after 0.05s\n"


# --- options before the command ----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--config", "p.toml", "up"], ["up", "--config", "p.toml"]),
        (["-c", "p.toml", "--url=http://127.0.0.1:1", "ls", "--all"],
         ["ls", "-c", "p.toml", "--url=http://127.0.0.1:1", "--all"]),
        (["up", "--config", "p.toml"], ["up", "--config", "p.toml"]),
        (["--config"], ["--config"]),
        (["-h"], ["-h"]),
    ],
)
def test_api_options_may_come_before_the_command(argv: list[str], expected: list[str]) -> None:
    assert options_after_command(argv) == expected


@given(st.text(min_size=1).filter(lambda v: not v.startswith("-")))
def test_leading_config_parses_as_after_the_command(value: str) -> None:
    """Any config path: `prevu --config P ls` is parsed as `prevu ls --config P`."""
    before = parser().parse_args(options_after_command(["--config", value, "ls"]))
    after = parser().parse_args(["ls", "--config", value])
    assert before.config == after.config == value and before.command == "ls"


def test_a_command_without_the_options_still_refuses_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(options_after_command(["--config", "p.toml", "check-config", "x"]))
    assert "unrecognized arguments: --config" in capsys.readouterr().err
