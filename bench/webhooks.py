#!/usr/bin/env python3
"""
Webhook answer latency, and what prevu adds to a preview's start, in one run.

1. Latency: 200 signed GitHub `pull_request` webhooks (the real `opened`
   fixture, 28 KB, one pull request number each) are POSTed one after the other
   over one keep-alive connection to the control app on 127.0.0.1. The
   pipeline behind it is the real one (Klein app, HMAC check, parsing, policy,
   SQLite store, orchestrator) with git paused, so only the request path is
   measured, not the builds it queues. Prints p50/p99/max (target p99 <= 20 ms).

2. Overhead: a real pull request (local bare git repository, busybox image
   FROM scratch) is opened by webhook against the real Docker engine and polled
   through the real proxy every 10 ms until it serves. Prints open->serving,
   the time spent inside `docker build` and `docker run` (container create +
   start), and the difference, which is what prevu adds: fetch, network,
   health check, route switch, scheduling (target <= 1 s).

3. Feedback, against the fake GitHub on 127.0.0.1 (prevu/testing/fake_github.py):
   the webhook answer latency of part 1 again with GitHub feedback on (a comment,
   a status and a deployment published for every pull request while the
   webhooks arrive; target p99 <= 20 ms), and the time from a preview's state
   change (the record written: building, then running) to the fake having
   received both the comment edit and the commit status of that state, over 40
   pull requests whose builds are held and released (target p99 <= 2 s).

Needs Docker, git and busybox-static (as the tests). Run it with the project's
venv from the repository root: `.venv/bin/python bench/webhooks.py`.
Every Docker object it creates is labelled `prevu.test=true` and removed.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import treq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater, react
from twisted.python.threadpool import ThreadPool
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from prevu.adapters.docker import DockerEngine
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.adapters.git import GitCli
from prevu.adapters.health import NetworkHealthChecker
from prevu.config import Config, DockerConfig, GithubConfig, ServerConfig
from prevu.control.app import ControlApp
from prevu.control.webhooks import Webhooks
from prevu.feedback.wiring import build_feedback
from prevu.forge.github import sign
from prevu.orchestrator import Orchestrator, OrchestratorSettings
from prevu.ports import BuildRequest, Image, LogSink, RunningContainer, RunRequest
from prevu.proxy.server import ProxyFactory, ProxySettings
from prevu.routing import RouteRegistry
from prevu.store import SqliteStore
from prevu.testing.fake_github import FakeGithub, FakeUser, listen
from prevu.testing.fakes import FakeDocker, FakeGit
from prevu.testing.health import FakeHealth

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
if not FIXTURES.exists():
    FIXTURES = Path("/work/shared/fixtures")
SECRET = "bench-secret"
FEEDBACK_TOKEN = "ghp_benchfeedback0123456789"
LABELS = {"prevu.test": "true", "prevu.bench": "webhooks"}
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY www /www
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def payload(number: int, sha: str, clone_url: str) -> bytes:
    data = json.loads((FIXTURES / "github" / "pull_request-opened.json").read_text())
    data["number"] = number
    data["pull_request"]["number"] = number
    data["pull_request"]["head"]["sha"] = sha
    data["pull_request"]["base"]["repo"]["clone_url"] = clone_url
    return json.dumps(data).encode()


def headers(body: bytes, delivery: str) -> dict[str, str]:
    return {
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(SECRET, body),
        "Content-Type": "application/json",
    }


def fake_github(reactor: Any) -> tuple[FakeGithub, Any]:
    fake = FakeGithub()
    fake.users["prevu-bot"] = FakeUser("prevu-bot")
    fake.tokens[FEEDBACK_TOKEN] = "prevu-bot"
    fake.repositories["codertocat/hello-world"] = False
    return fake, listen(reactor, fake)


def serve_fake() -> None:
    """`--fake-github`: serve the fake on 127.0.0.1 and print its port (GitHub is not in
    prevu's process, so the latency run keeps the fake's work off prevu's reactor)."""

    def run(reactor: Any) -> Deferred[None]:
        _, port = fake_github(reactor)
        print(port.getHost().port, flush=True)
        return Deferred()

    react(run)


async def latency(reactor: Any, tmp: Path, github_url: str | None = None) -> list[float]:
    """200 webhooks through the real request path; git paused so no build runs."""
    name = "latency-feedback" if github_url is not None else "latency"
    github = GithubConfig(webhook_secret=SECRET)
    if github_url is not None:
        github = GithubConfig(webhook_secret=SECRET, token=FEEDBACK_TOKEN, api_url=github_url)
    config = Config(
        server=ServerConfig(state_dir=str(tmp / name), public_url="https://prevu.example.com"),
        github=github,
        docker=DockerConfig(max_previews=1000),
    )
    store = SqliteStore.in_state_dir(config.server.state_dir, reactor)
    git = FakeGit(root=str(tmp / "latency" / "workspaces"))
    git.pause("fetch")
    settings = OrchestratorSettings.from_config(config)
    runtime = DockerRuntime.from_config(
        FakeDocker(), FakeHealth(), config.docker, settings.instance
    )
    orchestrator = Orchestrator(settings, reactor, RouteRegistry(), runtime, git, store)
    feedback = build_feedback(config, reactor, orchestrator.watch, store)
    if feedback is not None:
        feedback.startService()
    webhooks = Webhooks(config, orchestrator, store, orchestrator.metrics)
    site = Site(ControlApp(config=config, webhooks=webhooks).resource())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/webhooks/github"
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    timings: list[float] = []
    try:
        for n in range(220):  # 20 warm-up deliveries, then 200 measured
            body = payload(n + 1, f"{n + 1:040x}", "https://example.invalid/x.git")
            started = time.perf_counter()
            response = await treq.post(url, data=body, headers=headers(body, f"d{n}"), pool=pool)
            await treq.content(response)
            elapsed = time.perf_counter() - started
            assert response.code == 202, response.code
            if n >= 20:
                timings.append(elapsed)
        if feedback is not None:
            items = feedback.publisher.memory.items
            for _ in range(1200):  # let the publisher finish before the store closes
                if feedback.publisher.idle() and sum(1 for i in items.values() if i.body) == 220:
                    break
                await deferLater(reactor, 0.05, lambda: None)
            assert sum(1 for i in items.values() if i.body) == 220, "comments missing"
    finally:
        if feedback is not None:
            feedback.stopService()
        orchestrator.stop()
        await pool.closeCachedConnections()
        await port.stopListening()
        store.close()
    return timings


async def feedback_delay(reactor: Any, tmp: Path, fake: FakeGithub) -> list[float]:
    """
    Seconds from each visible state change (building, running) written to the
    store to the fake holding both that state's comment and its status.
    """
    config = Config(
        server=ServerConfig(
            state_dir=str(tmp / "feedback"), public_url="https://prevu.example.com"
        ),
        github=GithubConfig(webhook_secret=SECRET, token=FEEDBACK_TOKEN, api_url=fake.base),
        docker=DockerConfig(max_previews=1000),
    )
    store = SqliteStore.in_state_dir(config.server.state_dir, reactor)
    docker = FakeDocker()
    git = FakeGit(root=str(tmp / "feedback" / "workspaces"))
    orchestrator = Orchestrator(
        config=config,
        clock=reactor,
        routes=RouteRegistry(),
        docker=docker,
        git=git,
        store=store,
        health=FakeHealth(),
    )
    changed: dict[tuple[int, str], float] = {}

    def note(record: Any) -> None:
        changed.setdefault((record.number, record.status), time.perf_counter())

    orchestrator.watch(note)
    feedback = build_feedback(config, reactor, orchestrator.watch, store)
    assert feedback is not None
    feedback.startService()
    webhooks = Webhooks(config, orchestrator, store, orchestrator.metrics)
    port = reactor.listenTCP(
        0, Site(ControlApp(config=config, webhooks=webhooks).resource()), interface="127.0.0.1"
    )
    url = f"http://127.0.0.1:{port.getHost().port}/webhooks/github"

    async def published(number: int, status: str, title: str, state: str) -> float:
        since = changed[(number, status)]
        for _ in range(2000):
            comment = [
                call.at
                for call in fake.calls
                if "/comments" in call.path
                and call.method in ("POST", "PATCH")
                and call.body
                and title in call.body["body"]
                and f"#{number} " in call.body["body"]
            ]
            sha = f"{number:040x}"
            status_at = [
                call.at
                for call in fake.calls
                if call.path.endswith(f"/statuses/{sha}") and call.body["state"] == state
            ]
            if comment and status_at:
                return max(comment[0], status_at[0]) - since
            await deferLater(reactor, 0.002, lambda: None)
        raise RuntimeError(f"feedback for #{number} {status} never arrived")

    delays: list[float] = []
    try:
        for number in range(1, 41):
            docker.pause("build")
            clone_url, sha = "https://example.invalid/x.git", f"{number:040x}"
            git.remote(clone_url, f"refs/pull/{number}/head", sha, {"Dockerfile": "FROM scratch\n"})
            body = payload(number, sha, clone_url)
            response = await treq.post(
                url, data=body, headers=headers(body, f"f{number}"), persistent=False
            )
            await treq.content(response)
            for _ in range(2000):
                if (number, "building") in changed:
                    break
                await deferLater(reactor, 0.002, lambda: None)
            delays.append(await published(number, "building", "Building the preview", "pending"))
            docker.release("build")
            for _ in range(2000):
                if (number, "running") in changed:
                    break
                await deferLater(reactor, 0.002, lambda: None)
            delays.append(await published(number, "running", "Preview ready", "success"))
    finally:
        feedback.stopService()
        orchestrator.stop()
        await port.stopListening()
        store.close()
    return delays


class TimedDocker:
    """The real Docker adapter, timing build() and run() (create + start)."""

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self.build_seconds = 0.0
        self.run_seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    async def build(self, request: BuildRequest, on_log: LogSink) -> Image:
        started = time.perf_counter()
        try:
            return await self.engine.build(request, on_log)
        finally:
            self.build_seconds += time.perf_counter() - started

    async def run(self, request: RunRequest) -> RunningContainer:
        started = time.perf_counter()
        try:
            return await self.engine.run(request)
        finally:
            self.run_seconds += time.perf_counter() - started


def git(*args: str, cwd: Path) -> str:
    import subprocess

    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@prevu.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@prevu.invalid",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return done.stdout.strip()


def forge(tmp: Path) -> tuple[str, str]:
    """A bare repository with refs/pull/1/head: a busybox httpd site. (clone URL, sha)"""
    bare, work = tmp / "forge.git", tmp / "work"
    git("init", "-q", "--bare", str(bare), cwd=tmp)
    git("init", "-q", str(work), cwd=tmp)
    shutil.copy("/bin/busybox", work / "busybox")
    (work / "busybox").chmod(0o755)
    (work / "www").mkdir()
    (work / "www" / "index.html").write_text("benchmark preview\n")
    (work / "Dockerfile").write_text(DOCKERFILE)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "site", cwd=work)
    git("push", "-q", str(bare), "HEAD:refs/pull/1/head", cwd=work)
    return bare.as_uri(), git("rev-parse", "HEAD", cwd=work)


async def overhead(reactor: Any, tmp: Path) -> tuple[float, float, float]:
    """(open->serving, docker build + run, difference) in seconds, real engine."""
    clone_url, sha = forge(tmp)
    state = tmp / "overhead"
    config = Config(
        server=ServerConfig(state_dir=str(state)),
        github=GithubConfig(webhook_secret=SECRET),
        docker=DockerConfig(network=f"prevubench{os.getpid()}"),
    )
    threads = ThreadPool(minthreads=1, maxthreads=8, name="prevu-bench")
    threads.start()
    store = SqliteStore.in_state_dir(str(state), reactor)
    docker = TimedDocker(DockerEngine(reactor, threads, labels=LABELS, self_container="none"))
    routes = RouteRegistry()
    settings = OrchestratorSettings.from_config(config)
    runtime = DockerRuntime.from_config(
        docker,  # type: ignore[arg-type]
        NetworkHealthChecker(reactor),
        config.docker,
        settings.instance,
    )
    git_cli = GitCli(reactor, str(state / "workspaces"), threads)
    orchestrator = Orchestrator(settings, reactor, routes, runtime, git_cli, store)
    webhooks = Webhooks(config, orchestrator, store, orchestrator.metrics)
    control = reactor.listenTCP(
        0, Site(ControlApp(config=config, webhooks=webhooks).resource()), interface="127.0.0.1"
    )
    proxy = reactor.listenTCP(
        0, ProxyFactory(reactor, routes, ProxySettings()), interface="127.0.0.1"
    )
    try:
        body = payload(1, sha, clone_url)
        url = f"http://127.0.0.1:{control.getHost().port}/webhooks/github"
        preview_url = f"http://127.0.0.1:{proxy.getHost().port}/"
        started = time.perf_counter()
        response = await treq.post(url, data=body, headers=headers(body, "open"), persistent=False)
        assert response.code == 202, response.code
        while True:
            response = await treq.get(
                preview_url, headers={"Host": "pr-1-hello-world.localhost"}, persistent=False
            )
            content = await treq.content(response)
            if response.code == 200 and content == b"benchmark preview\n":
                break
            record = store.get("pr-1-hello-world")
            if record is not None and record.status == "failed":
                raise RuntimeError(f"preview failed: {record.error}")
            if time.perf_counter() - started > 300:
                raise RuntimeError("preview never served")
            await deferLater(reactor, 0.01, lambda: None)
        serving = time.perf_counter() - started
        inside = docker.build_seconds + docker.run_seconds
        return serving, inside, serving - inside
    finally:
        orchestrator.destroy("pr-1-hello-world")
        for _ in range(300):
            if orchestrator.idle() and store.get("pr-1-hello-world").status == "stopped":  # type: ignore[union-attr]
                break
            await deferLater(reactor, 0.1, lambda: None)
        orchestrator.stop()
        await control.stopListening()
        await proxy.stopListening()
        store.close()
        threads.stop()


async def main(reactor: Any) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="prevu-bench-"))
    try:
        timings = await latency(reactor, tmp)
        ms = [t * 1000 for t in timings]
        p99 = percentile(ms, 0.99)
        print(f"webhook answer latency over {len(ms)} signed webhooks (28 KB payload):")
        print(
            f"  p50 {statistics.median(ms):.2f} ms   p99 {p99:.2f} ms   max {max(ms):.2f} ms"
            f"   (target p99 <= 20 ms: {'ok' if p99 <= 20 else 'MISSED'})"
        )
        server = subprocess.Popen(
            [sys.executable, __file__, "--fake-github"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            github_url = f"http://127.0.0.1:{int(server.stdout.readline())}"
            with_feedback = [t * 1000 for t in await latency(reactor, tmp, github_url)]
        finally:
            server.terminate()
            server.wait(10)
        fake, github_port = fake_github(reactor)
        try:
            p99 = percentile(with_feedback, 0.99)
            print("webhook answer latency with GitHub feedback on (fake GitHub on 127.0.0.1):")
            print(
                f"  p50 {statistics.median(with_feedback):.2f} ms   p99 {p99:.2f} ms"
                f"   max {max(with_feedback):.2f} ms"
                f"   (target p99 <= 20 ms: {'ok' if p99 <= 20 else 'MISSED'})"
            )
            delays = [t * 1000 for t in await feedback_delay(reactor, tmp, fake)]
            p99 = percentile(delays, 0.99)
            print(f"state change -> comment edit and status, {len(delays)} changes:")
            print(
                f"  p50 {statistics.median(delays):.1f} ms   p99 {p99:.1f} ms"
                f"   max {max(delays):.1f} ms"
                f"   (target p99 <= 2000 ms: {'ok' if p99 <= 2000 else 'MISSED'})"
            )
        finally:
            await github_port.stopListening()
        serving, inside, added = await overhead(reactor, tmp)
        print("open -> serving through the proxy, real Docker engine:")
        print(
            f"  total {serving:.3f} s   docker build + run {inside:.3f} s   "
            f"prevu's own {added:.3f} s   (target <= 1 s: {'ok' if added <= 1 else 'MISSED'})"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--fake-github"]:
        serve_fake()
    else:
        react(lambda reactor: ensureDeferred(main(reactor)))
