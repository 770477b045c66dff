"""
The CLI on the real engine: `prevu up`, `logs -f`, `redeploy`, `ls` against
prevu's real pipeline (real Docker, real git, the control app on 127.0.0.1),
the CLI run as `prevu.cli.main` on a thread, as a user's shell would run it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from prevu.cli import main
from tests.support.docker import BUSYBOX, HTTPD_DOCKERFILE
from tests.support.git_repos import ForgeRepo, git
from tests.support.timeouts import within
from tests.test_previews_e2e import Stack

pytestmark = pytest.mark.docker

SLOW_DOCKERFILE = HTTPD_DOCKERFILE.replace(
    "COPY www /www\n", 'COPY www /www\nRUN ["/bin/busybox", "sleep", "2"]\n'
)
EXITS_AT_ONCE = """\
FROM scratch
COPY busybox /bin/busybox
CMD ["/bin/busybox", "sh", "-c", "echo reading settings; echo no DATABASE_URL set >&2; exit 3"]
"""


@pytest_twisted.async_yield_fixture
async def stack(reactor: Any, thread_pool: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    stack = Stack(reactor, thread_pool, tmp_path, ForgeRepo.create(tmp_path / "forge"))
    await stack.start()
    yield stack
    for record in stack.store.list_previews():
        if not record.closed:
            stack.orchestrator.destroy(record.id, "test over")
    await stack.settled()
    await stack.shutdown()


def checkout(root: Path, dockerfile: str = HTTPD_DOCKERFILE, branch: str = "main") -> Path:
    """A git checkout `root/myapp` whose committed HEAD is a busybox app."""
    work = root / "myapp"
    git("init", "--quiet", f"--initial-branch={branch}", str(work), cwd=root)
    shutil.copy(BUSYBOX, work / "busybox")
    (work / "www").mkdir()
    (work / "www" / "index.html").write_text("hello from the CLI\n")
    (work / "Dockerfile").write_text(dockerfile)
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "app", cwd=work)
    return work


async def cli(stack: Stack, *argv: str) -> int:
    """`prevu ARGV --url ... --token ...` on a thread; its exit status."""
    url = f"http://127.0.0.1:{stack.control_port}"
    command, *rest = argv
    status: int = await within(
        deferToThread(main, [command, "--url", url, "--token", "t", *rest]), 60
    )
    return status


@pytest_twisted.ensureDeferred
async def test_up_prints_the_build_and_ls_hides_destroyed_previews(
    stack: Stack, tmp_path: Path, capsys: Any
) -> None:
    """`up` prints build steps then the URL; `ls --json` parses; destroyed: only `ls --all`."""
    work = checkout(tmp_path)
    assert await cli(stack, "up", "-C", str(work)) == 0
    out = capsys.readouterr().out
    assert "[build] #" in out and "COPY www /www" in out, out
    assert "sha256:" not in out.replace("writing image sha256:", "")  # step digests are noise
    assert "pr-1-myapp: running at http://pr-1-myapp.localhost:8000/" in out
    assert await stack.get("pr-1-myapp.localhost") == (200, b"hello from the CLI\n")

    assert await cli(stack, "ls", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(p["id"], p["status"], p["closed"]) for p in listed] == [
        ("pr-1-myapp", "running", False)
    ]
    assert await cli(stack, "ls") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["PREVIEW", "STATUS", "AGE", "SHA", "URL"]
    assert row.split()[:2] == ["pr-1-myapp", "running"] and row.split()[2].endswith("s")

    assert await cli(stack, "destroy", "pr-1-myapp") == 0
    await stack.settled()
    capsys.readouterr()
    assert await cli(stack, "ls") == 0
    assert capsys.readouterr().out == "no previews (destroyed ones: prevu ls --all)\n"
    assert await cli(stack, "ls", "--all") == 0
    assert "pr-1-myapp  stopped" in capsys.readouterr().out
    assert await cli(stack, "ls", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest_twisted.ensureDeferred
async def test_up_of_a_container_that_exits_at_once_exits_1_with_reason_and_last_lines(
    stack: Stack, tmp_path: Path, capsys: Any
) -> None:
    """The container exits at once: exit 1, the reason, then its output among the last lines."""
    work = checkout(tmp_path, EXITS_AT_ONCE, branch="broken")
    assert await cli(stack, "up", "-C", str(work)) == 1
    out = capsys.readouterr().out
    assert "[build] #" in out, out
    failed = out[out.index("pr-1-myapp: failed: ") :]
    reason, last = failed.split("last ", 1)
    assert "exited" in reason, failed
    assert "no DATABASE_URL set" in last, failed
    assert "prevu redeploy pr-1-myapp" in failed


@pytest_twisted.ensureDeferred
async def test_logs_follow_a_build_and_redeploy_recovers_a_failed_preview(
    stack: Stack, tmp_path: Path, capsys: Any
) -> None:
    """The repository was unreachable: failed; once it is back, `redeploy` runs it, and
    `logs -f` follows that build until it runs."""
    work = checkout(tmp_path, SLOW_DOCKERFILE)
    sha = git("rev-parse", "HEAD", cwd=work)
    origin = tmp_path / "origin.git"  # where the server fetches from: not there yet
    body = {"repo": "myapp", "branch": "main", "sha": sha, "clone_url": origin.as_uri()}
    await within(deferToThread(_post, stack, "/api/previews", body), 10)
    await stack.until("pr-1-myapp", "failed")
    assert await cli(stack, "ls") == 0
    assert "pr-1-myapp  failed" in capsys.readouterr().out

    subprocess.run(["git", "clone", "--quiet", "--bare", str(work), str(origin)], check=True)
    assert await cli(stack, "redeploy", "pr-1-myapp", "--no-wait") == 0
    assert "pr-1-myapp: " in capsys.readouterr().out
    record = stack.store.get("pr-1-myapp")
    assert record is not None and record.status in ("queued", "building")  # still to follow
    assert await cli(stack, "logs", "pr-1-myapp", "-f") == 0
    followed = capsys.readouterr().out
    assert "[build] #" in followed and "COPY www /www" in followed, followed
    assert followed.index("[system] status building") < followed.index("[system] status running")
    assert followed.rstrip().endswith("pr-1-myapp: running at http://pr-1-myapp.localhost:8000/")
    assert await stack.get("pr-1-myapp.localhost") == (200, b"hello from the CLI\n")

    assert await cli(stack, "logs", "pr-1-myapp") == 0
    stored = capsys.readouterr().out
    assert "status failed" in stored and stored.count("status running") == 1


def _post(stack: Stack, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.control_port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
