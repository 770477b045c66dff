#!/usr/bin/env python3
"""
Push -> updated preview: prevu against the same work done by hand, in one run.

A Dockerfile of three `RUN` steps (about 6 s of work) and a static `COPY`, in a
local bare repository that looks like GitHub (`refs/pull/N/head`):

1. **By hand**: a shallow `git fetch` of `refs/pull/1/head` into an empty
   repository, `DOCKER_BUILDKIT=1 docker build` with Debian's client,
   `docker run`, then polling the container until the first 200.
2. **prevu**: a real `twistd -n prevu` process on loopback ports; the signed
   `opened` webhook of pull request 2 (the same tree), then polling the preview
   through prevu's proxy until the first 200.
3. **A second PR**: pull request 3 changes only `www/index.html` on top of
   pull request 2: its open -> served, and whether its build log shows the
   `RUN` steps `CACHED`.

Both cold runs start from caches that cannot hit: the first `RUN` echoes a
nonce that differs between the hand run and prevu's. Prints the times, the
ratios (goal: prevu <= 1.15x by hand; second PR <= 0.35x the first), and counts
build steps made of labels in prevu's build log (goal: none).

Run from the repository root with the project's venv: `.venv/bin/python bench/builds.py`
(`--runs N` repeats the whole comparison and prints medians). Needs Docker,
git and busybox-static, as the tests. Every Docker object it creates is
labelled `prevu.test=true` and removed; traffic goes to loopback and to the
containers it made.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.git_repos import ForgeRepo, git  # noqa: E402
from tests.support.prevu_process import PrevuProcess  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures"
if not FIXTURES.exists():
    FIXTURES = Path("/work/shared/fixtures")
SECRET = "bench-builds-secret"
LABEL = "prevu.test=true"
DEBIAN_DOCKER = "/usr/bin/docker"
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "echo {nonce}; /bin/busybox sleep 2; echo one > /one"]
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox sleep 2; echo two > /two"]
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox sleep 2; echo three > /three"]
COPY www /www
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
"""
CONFIG = """\
[server]
http = "tcp:{{http}}:interface=127.0.0.1"
control = "tcp:{{control}}:interface=127.0.0.1"
state_dir = "{{state}}"

[github]
webhook_secret = "{secret}"

[docker]
network = "{network}"

[[repos]]
name = "Codertocat/Hello-World"
access = "public"
"""


def wait_for_200(
    url: str,
    host: str | None,
    timeout: float = 300,
    failed: Callable[[], str | None] = lambda: None,
) -> float:
    """Poll `url` every 10 ms until it answers 200; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        if polls % 100 == 0 and (reason := failed()) is not None:
            raise RuntimeError(f"{host} failed: {reason}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic()
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} ({host}) never answered 200")


def site(nonce: str, index: str) -> dict[str, str | bytes]:
    return {
        "Dockerfile": DOCKERFILE.format(nonce=nonce),
        "busybox": Path("/bin/busybox").read_bytes(),
        "www/index.html": index,
    }


def push(forge: ForgeRepo, number: int, files: dict[str, str | bytes]) -> str:
    """Commit `files` on the work clone and publish it as `refs/pull/<number>/head`."""
    for name, content in files.items():
        path = forge.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
            path.chmod(0o755)
        else:
            path.write_text(content)
    git("add", "-A", cwd=forge.work)
    git("commit", "--quiet", "-m", f"pull request {number}", cwd=forge.work)
    git("push", "--quiet", "--force", "origin", f"HEAD:refs/pull/{number}/head", cwd=forge.work)
    return git("rev-parse", "HEAD", cwd=forge.work)


def by_hand(forge: ForgeRepo, tmp: Path, tag: str) -> float:
    """Shallow fetch + BuildKit build + run + first 200, in seconds."""
    checkout = tmp / "by-hand"
    started = time.monotonic()
    git("init", "--quiet", str(checkout), cwd=tmp)
    git("fetch", "--quiet", "--depth", "1", str(forge.bare), "refs/pull/1/head", cwd=checkout)
    git("checkout", "--quiet", "FETCH_HEAD", cwd=checkout)
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    subprocess.run(
        [DEBIAN_DOCKER, "build", "-q", "--label", LABEL, "-t", tag, str(checkout)],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    container = subprocess.run(
        [DEBIAN_DOCKER, "run", "-d", "--label", LABEL, tag],
        check=True, env=env, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    try:
        address = subprocess.run(
            [DEBIAN_DOCKER, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", container],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        served = wait_for_200(f"http://{address}:8080/", None)
    finally:
        subprocess.run([DEBIAN_DOCKER, "rm", "-f", container], capture_output=True)
    return served - started


def deliver(prevu: PrevuProcess, action: str, number: int, sha: str, clone: str) -> None:
    data = json.loads((FIXTURES / "github" / f"pull_request-{action}.json").read_text())
    data["number"] = number
    data["pull_request"]["number"] = number
    data["pull_request"]["head"]["sha"] = sha
    data["pull_request"]["base"]["repo"]["clone_url"] = clone
    body = json.dumps(data).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{prevu.control_port}/webhooks/github",
        data=body,
        headers={
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": uuid.uuid4().hex,
            "X-Hub-Signature-256": signature,
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status not in (200, 202):
            raise RuntimeError(f"webhook answered {response.status}")


def api_text(prevu: PrevuProcess, path: str) -> str:
    token = (prevu.tmp / "state" / "api_token").read_text().strip()
    request = urllib.request.Request(
        f"http://127.0.0.1:{prevu.control_port}{path}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode("utf-8", "replace")


def failure(prevu: PrevuProcess, preview: str) -> str | None:
    """The preview's error when it failed, else None."""
    try:
        record = json.loads(api_text(prevu, f"/api/previews/{preview}"))
    except (urllib.error.URLError, OSError):
        return None
    if isinstance(record, dict) and record.get("status") == "failed":
        return str(record.get("error"))
    return None


def preview_log(prevu: PrevuProcess, preview: str) -> list[str]:
    """The preview's build, run and system log lines (plain text from the API)."""
    return api_text(prevu, f"/api/previews/{preview}/logs").splitlines()


def open_and_serve(prevu: PrevuProcess, number: int, sha: str, clone: str) -> float:
    """Seconds from the `opened` webhook to the first 200 through prevu's proxy."""
    started = time.monotonic()
    deliver(prevu, "opened", number, sha, clone)
    preview = f"pr-{number}-hello-world"
    served = wait_for_200(
        f"http://127.0.0.1:{prevu.http_port}/",
        f"{preview}.localhost",
        failed=lambda: failure(prevu, preview),
    )
    return served - started


def instance_of(state: Path) -> str:
    """The `prevu.instance` label value of the prevu that used `state`."""
    return (state / "instance").read_text().strip()


def cleanup_docker(instance: str) -> None:
    """Remove whatever the bench's prevu left: containers, networks, images of its instance."""
    label = f"label=prevu.instance={instance}"
    for listing, remove in (
        (["ps", "-aq", "--filter", label], ["rm", "-f"]),
        (["network", "ls", "-q", "--filter", label], ["network", "rm"]),
        (["images", "-q", "--filter", label], ["rmi", "-f"]),
    ):
        ids = subprocess.run([DEBIAN_DOCKER, *listing], capture_output=True, text=True).stdout
        if ids.split():
            subprocess.run([DEBIAN_DOCKER, *remove, *set(ids.split())], capture_output=True)


def one_run() -> dict[str, float | int]:
    tmp = Path(tempfile.mkdtemp(prefix="prevu-bench-builds-"))
    tag = f"prevu-bench-hand-{uuid.uuid4().hex[:8]}"
    network = f"prevubb{uuid.uuid4().hex[:6]}"
    prevu = PrevuProcess(tmp, CONFIG.format(secret=SECRET, network=network))
    forge = ForgeRepo.create(tmp / "forge", "Hello-World")
    clone = forge.bare.as_uri()
    try:
        push(forge, 1, site(uuid.uuid4().hex, "benchmark preview\n"))
        hand = by_hand(forge, tmp, tag)
        sha2 = push(forge, 2, site(uuid.uuid4().hex, "benchmark preview\n"))
        prevu.start()
        first = open_and_serve(prevu, 2, sha2, clone)
        sha3 = push(forge, 3, {"www/index.html": "second pull request\n"})
        second = open_and_serve(prevu, 3, sha3, clone)
        log = preview_log(prevu, "pr-3-hello-world")
        cached = sum(1 for line in log if line.strip().endswith("CACHED"))
        label_steps = sum(1 for line in log if " LABEL " in f" {line} ")
        for number in (2, 3):
            deliver(prevu, "closed", number, sha2 if number == 2 else sha3, clone)
        time.sleep(3)
        return {
            "hand": hand,
            "prevu": first,
            "second": second,
            "cached_steps": cached,
            "label_steps": label_steps,
        }
    finally:
        log_text = prevu.stop()
        if os.environ.get("PREVU_BENCH_VERBOSE"):
            print(log_text[-5000:])
        subprocess.run([DEBIAN_DOCKER, "rmi", "-f", tag], capture_output=True)
        cleanup_docker(instance_of(tmp / "state"))
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="whole comparisons to run (1-5)")
    runs = max(1, min(5, parser.parse_args().runs))
    results = [one_run() for _ in range(runs)]

    def median(key: str) -> float:
        return statistics.median(float(r[key]) for r in results)

    hand, first, second = median("hand"), median("prevu"), median("second")
    print(f"push -> first 200, {runs} run(s), medians:")
    print(f"  by hand (shallow fetch, BuildKit build, run, first 200): {hand:6.2f} s")
    print(
        f"  prevu, opened webhook -> first 200 through its proxy:   {first:6.2f} s"
        f"   {first / hand:.2f}x by hand (goal <= 1.15x)"
    )
    print(
        f"  a second PR changing only www/:                          {second:6.2f} s"
        f"   {second / first:.2f}x the first PR (goal <= 0.35x)"
    )
    print(
        f"  second PR's build log: {int(median('cached_steps'))} steps CACHED, "
        f"{int(median('label_steps'))} LABEL steps (goal: 0)"
    )


if __name__ == "__main__":
    main()
