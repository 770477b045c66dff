"""
Self-healing (issue 15) across a Docker daemon restart, never the shared engine:
a dockerd this test starts in a network namespace of its own
(`tests/support/netns_dockerd.py`), and prevu (`twistd -n prevu`) in the same
namespace, talking to that daemon's socket. Two previews: one whose container
Docker restarts itself when the daemon comes back (killed at shutdown: exit
137, `on-failure`), one that exits 0 on SIGTERM (Docker leaves it stopped,
prevu must restart it). After the restart both are served again through
prevu's proxy within two reconcile periods.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docker import BUSYBOX, HTTPD_DOCKERFILE
from tests.support.git_repos import git
from tests.support.netns_dockerd import NetnsDockerd
from tests.support.prevu_process import environment, twistd

pytestmark = pytest.mark.docker
PERIOD = 5.0
TOKEN = "heal-token"
CONTROL = "http://127.0.0.1:8001"
PROXY = "http://127.0.0.1:8000/"
CONFIG = """\
[server]
http = "tcp:8000:interface=127.0.0.1"
control = "tcp:8001:interface=127.0.0.1"
state_dir = "{state}"
api_token = "{token}"

[docker]
host = "{host}"
self_container = "none"
memory = "64m"
reconcile_interval = "5s"
"""


def exits_on_term(code: int) -> str:
    """A Dockerfile whose PID 1 serves /www and exits with `code` on SIGTERM (at once,
    not after Docker's 10 s stop timeout)."""
    return HTTPD_DOCKERFILE.replace(
        'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]',
        f'CMD ["/bin/busybox", "sh", "-c", "trap \'exit {code}\' TERM; '
        '/bin/busybox httpd -p 8080 -h /www; while true; do /bin/busybox sleep 0.2; done"]',
    )


@pytest.fixture
def engine() -> Iterator[NetnsDockerd]:
    ns = NetnsDockerd.create()
    try:
        ns.start()
        yield ns
    finally:
        ns.close()


def repository(root: Path, text: str, dockerfile: str) -> tuple[str, str]:
    """A local git checkout serving `text`: (its file:// URL, its head commit)."""
    root.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", str(root), cwd=root.parent)
    shutil.copy(BUSYBOX, root / "busybox")
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text(text)
    (root / "Dockerfile").write_text(dockerfile)
    git("add", "-A", cwd=root)
    git("commit", "--quiet", "-m", text.strip(), cwd=root)
    return root.as_uri(), git("rev-parse", "HEAD", cwd=root)


def api(ns: NetnsDockerd, method: str, path: str, body: object = None) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    status, text = ns.http(
        CONTROL + path, method, headers, json.dumps(body) if body is not None else None
    )
    assert status in (200, 202), (status, text)
    answer: dict[str, object] = json.loads(text)
    return answer


def served(ns: NetnsDockerd, host: str) -> tuple[int, str]:
    return ns.http(PROXY, headers={"Host": host}, timeout=3.0)


def wait_running(ns: NetnsDockerd, preview: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    answer: dict[str, object] = {}
    while time.monotonic() < deadline:
        answer = api(ns, "GET", f"/api/previews/{preview}")
        if answer["status"] == "running":
            return
        assert answer["status"] != "failed", answer
        time.sleep(0.5)
    raise AssertionError(f"{preview}: {answer}; {log.read_text()[-3000:]}")


def test_every_preview_is_served_again_after_a_daemon_restart(
    engine: NetnsDockerd, tmp_path: Path
) -> None:
    """dockerd restarted under prevu: both previews serve again within two reconcile periods."""
    config = tmp_path / "prevu.toml"
    state = tmp_path / "state"
    config.write_text(CONFIG.format(state=state, token=TOKEN, host=engine.host))
    log = tmp_path / "twistd.log"
    with open(log, "wb") as output:
        prevu = engine.popen(
            [twistd(), "--pidfile=", "-n", "prevu", "--config", str(config)],
            cwd=tmp_path,
            env=environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while engine.http(CONTROL + "/healthz", timeout=1.0)[0] != 200:
            assert prevu.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        sites = {
            # 143 at the daemon's shutdown: Docker's on-failure policy restarts it.
            "restarted-by-docker": exits_on_term(143),
            # 0: Docker leaves it stopped, prevu restarts it.
            "restarted-by-prevu": exits_on_term(0),
        }
        hosts: dict[str, str] = {}
        texts: dict[str, str] = {}
        for name, dockerfile in sites.items():
            url, sha = repository(tmp_path / name, f"{name}\n", dockerfile)
            body = {"repo": name, "branch": "main", "sha": sha, "clone_url": url}
            answer = api(engine, "POST", "/api/previews", body)
            preview = str(answer["id"])
            hosts[preview], texts[preview] = str(answer["host"]), f"{name}\n"
        for preview, host in hosts.items():
            wait_running(engine, preview, log)
            assert served(engine, host) == (200, texts[preview])

        engine.restart()
        back = time.monotonic()
        pending = dict(hosts)
        took: dict[str, float] = {}
        while pending and time.monotonic() - back < 3 * PERIOD:
            for preview, host in list(pending.items()):
                if served(engine, host) == (200, texts[preview]):
                    took[preview] = time.monotonic() - back
                    del pending[preview]
            time.sleep(0.2)
        assert not pending, f"not served again: {pending}; {log.read_text()[-3000:]}"
        assert max(took.values()) <= 2 * PERIOD, took
        print(f"served again after the daemon restart: {took}")
        for preview in hosts:
            answer = api(engine, "GET", f"/api/previews/{preview}")
            assert (answer["status"], answer["error"]) == ("running", None), answer
        text = log.read_text()
        graceful = next(p for p in hosts if texts[p] == "restarted-by-prevu\n")
        assert f"healing preview {graceful}" in text, "prevu restarted the one Docker left"
        failing = next(p for p in hosts if p != graceful)
        assert f"healing preview {failing}" not in text, "Docker's policy restarted this one"
    finally:
        prevu.send_signal(signal.SIGTERM)
        try:
            prevu.wait(30)
        except subprocess.TimeoutExpired:
            prevu.kill()
            prevu.wait(10)
