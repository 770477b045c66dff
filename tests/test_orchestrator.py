"""The orchestrator with fakes of git, Docker and the store, on a twisted Clock."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from prevu import labels as lb
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.config import Config, DockerConfig, GithubConfig, RepoConfig, ServerConfig
from prevu.forge import policy
from prevu.forge.events import PullRequest
from prevu.orchestrator import Orchestrator, OrchestratorSettings
from prevu.routing import Route, RouteRegistry
from prevu.testing.fakes import FakeDocker, FakeGit, FakeStore
from prevu.testing.health import FakeHealth

REPO = "acme/shop"
URL = "https://forge.example/acme/shop.git"
SHAS = [f"{n:x}" * 40 for n in range(1, 10)]
DOCKERFILE = {"Dockerfile": "FROM scratch\n"}


class Harness:
    """An orchestrator wired to fakes, plus helpers to publish and deliver pull requests."""

    def __init__(self, tmp: Path, config: Config | None = None, **kwargs: Any) -> None:
        self.tmp = tmp
        self.clock = Clock()
        self.git = FakeGit(root=str(tmp / "workspaces"))
        self.docker = FakeDocker()
        self.store = FakeStore(self.clock)
        self.health = FakeHealth()
        self.routes = RouteRegistry()
        self.config = config or Config(server=ServerConfig(state_dir=str(tmp / "state")))
        self.kwargs = kwargs
        self.orchestrator = self.make()

    def make(self) -> Orchestrator:
        settings = OrchestratorSettings.from_config(self.config, drain_delay=1.0, **self.kwargs)
        runtime = DockerRuntime.from_config(
            self.docker, self.health, self.config.docker, settings.instance
        )
        return Orchestrator(settings, self.clock, self.routes, runtime, self.git, self.store)

    def publish(self, number: int, sha: str, files: Mapping[str, str] | None = None) -> None:
        self.git.remote(URL, f"refs/pull/{number}/head", sha, {**DOCKERFILE, **(files or {})})

    def pr(self, number: int, sha: str, fork: bool = False) -> PullRequest:
        return PullRequest(
            "github",
            REPO,
            number,
            sha,
            f"feature-{number}",
            URL,
            f"refs/pull/{number}/head",
            fork=fork,
        )

    def deploy(self, number: int, sha: str, gate: str = "open", fork: bool = False) -> Any:
        settings = RepoConfig(REPO)
        decision = policy.Deploy(self.pr(number, sha, fork), settings, gate, revive=True)  # type: ignore[arg-type]
        return self.orchestrator.apply(decision)

    def close(self, number: int, sha: str) -> Any:
        return self.orchestrator.apply(policy.Destroy(self.pr(number, sha), "pull request closed"))

    def settle(self, seconds: float = 5.0) -> None:
        """Let timers (drain delays, retries, probes) run."""
        for _ in range(int(seconds * 10)):
            self.clock.advance(0.1)

    def status(self, preview: str) -> str:
        record = self.store.get(preview)
        assert record is not None
        return record.status

    def leftovers(self, preview: str) -> list[str]:
        """Everything of `preview` still in the fake engine or on disk."""
        found = [
            c.name for c in self.docker.containers.values() if c.labels.get(lb.PREVIEW) == preview
        ]
        found += [i.id for i in self.docker.images.values() if i.labels.get(lb.PREVIEW) == preview]
        found += [n.name for n in self.docker.networks.values() if preview in n.name]
        found += [w for w in self.git.workspaces() if w == preview]
        return found


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_opened_pull_request_ends_up_running_and_routed(h: Harness) -> None:
    """opened -> queued at once -> running; the route points at the container."""
    h.publish(1, SHAS[0])
    receipt = h.deploy(1, SHAS[0])
    assert receipt.status == "queued" and receipt.preview == "pr-1-shop"
    assert receipt.url == "http://pr-1-shop.localhost:8000/"
    assert h.status("pr-1-shop") == "running"
    route = h.routes.lookup("pr-1-shop.localhost:8000")
    assert route is not None and route.state == "ready" and route.upstream is not None
    serving = h.orchestrator.serving("pr-1-shop")
    assert serving is not None and route.upstream.host == serving.address
    assert route.access == "private" and route.preview == "pr-1-shop" and route.repo == REPO
    assert h.git.workspaces() == []


def test_container_gets_env_labels_and_limits(h: Harness) -> None:
    """PREVU_* env and build args, SPEC labels, memory/cpus/pids limits."""
    h.publish(2, SHAS[1], {".prevu.toml": '[run]\nport = 9000\nenv = { A = "1" }\ncpus = 0.5\n'})
    h.deploy(2, SHAS[1])
    (run,) = h.docker.runs.values()
    assert run.env == {
        "A": "1",
        "PREVU_URL": "http://pr-2-shop.localhost:8000/",
        "PREVU_HOST": "pr-2-shop.localhost",
        "PREVU_PR": "2",
        "PREVU_SHA": SHAS[1],
        "PREVU_BRANCH": "feature-2",
        "PREVU_REPO": REPO,
    }
    labels = run.labels
    assert labels["prevu.managed"] == "true"
    assert (labels["prevu.repo"], labels["prevu.number"], labels["prevu.sha"]) == (
        REPO,
        "2",
        SHAS[1],
    )
    assert (labels["prevu.host"], labels["prevu.port"]) == ("pr-2-shop.localhost", "9000")
    assert (run.memory, run.nano_cpus, run.pids, run.port) == (512 << 20, 500_000_000, 512, 9000)
    (build,) = h.docker.builds
    assert build.prevu_args["PREVU_SHA"] == SHAS[1]
    assert build.labels["prevu.managed"] == "true"


def test_push_switches_with_zero_downtime(h: Harness) -> None:
    """synchronize: the new container is healthy and routed before the old one is removed."""
    h.publish(3, SHAS[0])
    h.deploy(3, SHAS[0])
    old = h.orchestrator.serving("pr-3-shop")
    assert old is not None
    h.publish(3, SHAS[1])
    h.deploy(3, SHAS[1])
    new = h.orchestrator.serving("pr-3-shop")
    assert new is not None and new.revision.sha == SHAS[1]
    route = h.routes.lookup("pr-3-shop.localhost")
    assert route is not None and route.upstream is not None and route.upstream.host == new.address
    assert old.container in h.docker.containers, "old container kept while requests drain"
    h.settle(2)
    assert old.container not in h.docker.containers
    assert old.image not in h.docker.images


def test_three_rapid_pushes_complete_only_the_last_build(h: Harness) -> None:
    """Three rapid pushes: stale builds are cancelled, never completed; the last SHA serves."""
    h.docker.pause("build")
    for sha in SHAS[:3]:
        h.publish(4, sha)
        h.deploy(4, sha)
    # The fake cancels at once, so the second build started before the third push came.
    assert h.docker.pauses.cancelled.get("build") == 2
    h.docker.release("build")
    h.settle(1)
    built = [b.labels["prevu.sha"] for b in h.docker.builds]
    assert built == [SHAS[2]]
    serving = h.orchestrator.serving("pr-4-shop")
    assert serving is not None and serving.revision.sha == SHAS[2]
    assert h.status("pr-4-shop") == "running"


def assert_page_only(route: Route | None, state: str) -> Route:
    """The preview's host only answers prevu's page for `state` (nothing is forwarded)."""
    assert route is not None and route.upstream is None and route.state == state
    return route


@pytest.mark.parametrize("paused", ["fetch", "build", "create_network", "run"])
def test_closed_during_the_job_leaves_nothing(h: Harness, paused: str) -> None:
    """A pull request closed mid-fetch/build/start ends with nothing left and no route."""
    h.publish(5, SHAS[0])
    (h.git if paused == "fetch" else h.docker).pause(paused)
    h.deploy(5, SHAS[0])
    assert h.routes.lookup("pr-5-shop.localhost") is not None  # the "building" page
    h.close(5, SHAS[0])
    assert_page_only(h.routes.lookup("pr-5-shop.localhost"), "closed")
    (h.git if paused == "fetch" else h.docker).release(paused)
    h.settle(2)
    assert h.status("pr-5-shop") == "stopped"
    assert h.leftovers("pr-5-shop") == []
    assert_page_only(h.routes.lookup("pr-5-shop.localhost"), "closed")
    assert not [r for r in h.docker.runs.values() if h.docker._find(r.name)]


def test_closed_running_preview_is_torn_down_route_first(h: Harness) -> None:
    """closed: route removed, then containers, images, network and workspace."""
    h.publish(6, SHAS[0])
    h.deploy(6, SHAS[0])
    h.docker.pause("remove_container")
    h.close(6, SHAS[0])
    assert_page_only(h.routes.lookup("pr-6-shop.localhost"), "closed")
    h.docker.release("remove_container")
    h.settle(1)
    assert h.leftovers("pr-6-shop") == []
    assert h.status("pr-6-shop") == "stopped"


def test_teardown_is_idempotent(h: Harness) -> None:
    """Deleting twice, or closing after deleting, is harmless."""
    h.publish(7, SHAS[0])
    h.deploy(7, SHAS[0])
    assert h.orchestrator.destroy("pr-7-shop")
    assert h.orchestrator.destroy("pr-7-shop")
    h.close(7, SHAS[0])
    h.settle(1)
    assert h.leftovers("pr-7-shop") == [] and h.status("pr-7-shop") == "stopped"


def test_late_push_after_close_creates_nothing(h: Harness) -> None:
    """A synchronize delivered after the close does not bring the preview back."""
    h.publish(8, SHAS[0])
    h.deploy(8, SHAS[0])
    h.close(8, SHAS[0])
    h.publish(8, SHAS[1])
    decision = policy.Deploy(h.pr(8, SHAS[1]), RepoConfig(REPO), "open", revive=False)
    h.orchestrator.apply(decision)
    h.settle(1)
    assert h.status("pr-8-shop") == "stopped" and h.leftovers("pr-8-shop") == []


def test_bad_repo_config_fails_that_preview_only(h: Harness) -> None:
    """A bad .prevu.toml fails its preview with the reason; another preview runs."""
    h.publish(9, SHAS[0], {".prevu.toml": "[run]\nport = 0\n"})
    h.publish(10, SHAS[1])
    h.deploy(9, SHAS[0])
    h.deploy(10, SHAS[1])
    record = h.store.get("pr-9-shop")
    assert record is not None and record.status == "failed"
    assert record.error == ".prevu.toml: run.port: expected a port number 1-65535, got 0"
    assert any("run.port" in line for line in h.store.lines("pr-9-shop"))
    route = assert_page_only(h.routes.lookup("pr-9-shop.localhost"), "failed")
    assert route.detail == record.error
    assert h.status("pr-10-shop") == "running"


def test_missing_dockerfile_fails_with_reason(h: Harness) -> None:
    """No Dockerfile in the repository: failed, saying so."""
    h.git.remote(URL, "refs/pull/11/head", SHAS[0], {"README": "x"})
    h.deploy(11, SHAS[0])
    record = h.store.get("pr-11-shop")
    assert record is not None and record.status == "failed"
    assert "Dockerfile not found" in (record.error or "")


def test_build_error_keeps_the_lines_in_the_log(h: Harness) -> None:
    """A failing docker build fails the preview; its output stays in the log."""
    h.publish(12, SHAS[0])
    tag = f"prevu/{h.orchestrator.instance}/pr-12-shop:{SHAS[0][:12]}-1"
    h.docker.fail_build[tag] = "The command '/bin/sh -c make' returned a non-zero code: 2"
    h.deploy(12, SHAS[0])
    assert h.status("pr-12-shop") == "failed"
    assert "Step 1/1 : FROM scratch" in h.store.lines("pr-12-shop")


def test_unhealthy_container_fails_and_is_removed(tmp_path: Path) -> None:
    """A container that never passes its health check is removed; the preview fails."""
    h = Harness(tmp_path, start_timeout=2.0)
    h.docker.address = lambda request: ("10.66.0.1", request.port)
    h.health.unhealthy.add("10.66.0.1")
    h.publish(13, SHAS[0], {".prevu.toml": '[run]\nhealth = "/healthz"\n'})
    h.deploy(13, SHAS[0])
    assert h.status("pr-13-shop") == "starting"
    h.settle(3)
    record = h.store.get("pr-13-shop")
    assert record is not None and record.status == "failed"
    assert "GET /healthz < 500" in (record.error or "")
    assert not h.docker.containers
    assert h.health.probes[0][1:] == ("/healthz", "pr-13-shop.localhost")


def test_a_container_that_exits_before_healthy_fails_with_its_exit_code(tmp_path: Path) -> None:
    """Docker restarting it (on-failure) keeps its last ExitCode: the reason names it."""
    h = Harness(tmp_path, start_timeout=30.0)
    h.docker.address = lambda request: ("10.66.0.1", request.port)
    h.health.unhealthy.add("10.66.0.1")
    h.publish(16, SHAS[0])
    h.deploy(16, SHAS[0])
    assert h.status("pr-16-shop") == "starting"
    (info,) = h.docker.containers.values()
    h.docker.containers[info.id] = evolve(info, state="restarting", exit_code=3)
    h.settle(3)
    record = h.store.get("pr-16-shop")
    assert record is not None and record.status == "failed"
    assert record.error == "container exited with code 3 before it was healthy"


def test_max_previews_is_a_clear_status(tmp_path: Path) -> None:
    """Over max_previews, a new preview fails with a reason naming the limit."""
    config = Config(
        server=ServerConfig(state_dir=str(tmp_path)), docker=DockerConfig(max_previews=1)
    )
    h = Harness(tmp_path, config)
    h.publish(14, SHAS[0])
    h.publish(15, SHAS[1])
    h.deploy(14, SHAS[0])
    h.deploy(15, SHAS[1])
    record = h.store.get("pr-15-shop")
    assert record is not None and record.status == "failed"
    assert "max_previews (1)" in (record.error or "")
    assert h.status("pr-14-shop") == "running"


def test_build_concurrency_is_bounded(tmp_path: Path) -> None:
    """With build_concurrency = 1 the second preview waits, queued, for the first build."""
    config = Config(
        server=ServerConfig(state_dir=str(tmp_path)), docker=DockerConfig(build_concurrency=1)
    )
    h = Harness(tmp_path, config)
    h.docker.pause("build")
    h.publish(16, SHAS[0])
    h.publish(17, SHAS[1])
    h.deploy(16, SHAS[0])
    h.deploy(17, SHAS[1])
    assert (h.status("pr-16-shop"), h.status("pr-17-shop")) == ("building", "queued")
    assert h.docker.pauses.pending("build") == 1
    h.docker.release("build")
    h.settle(1)
    assert (h.status("pr-16-shop"), h.status("pr-17-shop")) == ("running", "running")


def test_docker_down_webhooks_queue_and_jobs_retry(h: Harness) -> None:
    """With Docker down the deploy is accepted, retried with backoff, and converges."""
    h.docker.up = False
    h.publish(18, SHAS[0])
    assert h.deploy(18, SHAS[0]).status == "queued"
    h.settle(3)
    assert h.status("pr-18-shop") == "building"
    assert h.orchestrator.metrics.value("prevu_docker_retries_total") >= 2
    h.docker.up = True
    h.settle(35)
    assert h.status("pr-18-shop") == "running"


def test_fork_waits_for_approval_then_runs(h: Harness) -> None:
    """forks = approve: nothing is built until a maintainer approves; then it runs."""
    h.publish(19, SHAS[0])
    h.deploy(19, SHAS[0], gate="approve", fork=True)
    record = h.store.get("pr-19-shop")
    assert record is not None and record.status == "queued"
    assert "approve" in record.data["detail"]
    assert h.docker.builds == [] and h.git.calls == []
    refused = h.orchestrator.approve_commit("pr-19-shop", SHAS[1], "maintainer")
    assert refused is not None and "does not await approval" in refused
    assert h.status("pr-19-shop") == "queued", "only the commit awaiting is approved"
    assert h.orchestrator.approve_commit("pr-19-shop", SHAS[0], "maintainer") is None
    assert h.status("pr-19-shop") == "running"
    h.publish(19, SHAS[1])
    h.deploy(19, SHAS[1], gate="approve", fork=True)
    assert len(h.docker.builds) == 1, "a later push waits for a new approval"


def test_redeploy_builds_again(h: Harness) -> None:
    """The API's redeploy builds the same SHA again and switches to it."""
    h.publish(20, SHAS[0])
    h.deploy(20, SHAS[0])
    first = h.orchestrator.serving("pr-20-shop")
    assert h.orchestrator.redeploy("pr-20-shop")
    second = h.orchestrator.serving("pr-20-shop")
    assert first is not None and second is not None and first.container != second.container
    assert len(h.docker.builds) == 2


def test_restart_serves_running_previews_without_rebuilding(h: Harness) -> None:
    """A new orchestrator on the same store and engine routes the running container at once."""
    h.publish(21, SHAS[0])
    h.deploy(21, SHAS[0])
    serving = h.orchestrator.serving("pr-21-shop")
    h.orchestrator.stop()
    h.routes = RouteRegistry()
    h.orchestrator = h.make()
    done = ensureDeferred(h.orchestrator.start())
    assert done.called
    route = h.routes.lookup("pr-21-shop.localhost")
    assert route is not None and route.state == "ready" and serving is not None
    assert route.upstream is not None and route.upstream.host == serving.address
    assert len(h.docker.builds) == 1
    assert h.status("pr-21-shop") == "running"


def test_reconcile_removes_orphans_and_recreates_the_vanished(h: Harness) -> None:
    """Reconcile: unknown previews' objects go, a vanished container is created again."""
    h.publish(22, SHAS[0])
    h.deploy(22, SHAS[0])
    instance = h.orchestrator.instance
    orphan_labels = {lb.INSTANCE: instance, lb.PREVIEW: "pr-99-gone", "prevu.managed": "true"}
    foreign_labels = {lb.INSTANCE: "someone-else", lb.PREVIEW: "pr-99-gone"}
    from prevu.ports import ContainerInfo, NetworkInfo

    h.docker.containers["orphan"] = ContainerInfo("orphan", "o", "img", "running", orphan_labels)
    h.docker.containers["foreign"] = ContainerInfo("foreign", "f", "img", "running", foreign_labels)
    h.docker.networks["prevu-pr-99-gone"] = NetworkInfo("n", "prevu-pr-99-gone", orphan_labels)
    serving = h.orchestrator.serving("pr-22-shop")
    assert serving is not None
    h.docker.vanish(serving.container)
    done = ensureDeferred(h.orchestrator.reconcile())
    assert done.called
    assert "orphan" not in h.docker.containers and "prevu-pr-99-gone" not in h.docker.networks
    assert "foreign" in h.docker.containers, "another prevu's objects are left alone"
    record = h.store.get("pr-22-shop")
    # Self-healing (issue 15, tests/test_heal_*.py): a new container of what served.
    assert record is not None and record.status == "running"
    assert record.container not in (None, serving.container)
    assert h.routes.lookup("pr-22-shop.localhost") is not None


def test_periodic_reconcile_runs_on_the_clock(h: Harness) -> None:
    """After start, reconcile runs every reconcile_interval."""
    done = ensureDeferred(h.orchestrator.start())
    assert done.called
    before = h.orchestrator.metrics.value("prevu_reconciles_total", result="ok")
    h.clock.advance(60)
    h.clock.advance(60)
    assert h.orchestrator.metrics.value("prevu_reconciles_total", result="ok") == before + 2
    h.orchestrator.stop()


def test_restart_resumes_an_interrupted_build(h: Harness) -> None:
    """A preview that was building when prevu stopped is built after the restart."""
    h.publish(23, SHAS[0])
    h.docker.pause("build")
    h.deploy(23, SHAS[0])
    h.orchestrator.stop()
    h.docker.release("build")
    h.settle(1)
    h.routes = RouteRegistry()
    h.orchestrator = h.make()
    done = ensureDeferred(h.orchestrator.start())
    assert done.called
    h.settle(1)
    assert h.status("pr-23-shop") == "running"


def test_label_collision_between_repos_gets_a_distinct_id(h: Harness) -> None:
    """acme/shop#1 and other/shop#1 fold to the same label; the second is salted."""
    h.publish(1, SHAS[0])
    h.deploy(1, SHAS[0])
    other = PullRequest("github", "other/shop", 1, SHAS[1], "b", URL, "refs/pull/1/head")
    receipt = h.orchestrator.apply(policy.Deploy(other, RepoConfig("other/shop")))
    assert receipt.preview != "pr-1-shop" and (receipt.preview or "").startswith("pr-1-shop-")


def test_watchers_see_every_stored_record_and_a_failing_one_breaks_nothing(h: Harness) -> None:
    """watch(): called after each store write with the new record; errors are only logged."""
    seen: list[tuple[str, str]] = []

    def broken(record: Any) -> None:
        raise RuntimeError("watcher bug")

    h.orchestrator.watch(broken)
    stop = h.orchestrator.watch(lambda record: seen.append((record.id, record.status)))
    h.publish(24, SHAS[0])
    h.deploy(24, SHAS[0])
    assert seen[0] == ("pr-24-shop", "queued") and seen[-1] == ("pr-24-shop", "running")
    assert h.store.get("pr-24-shop") is not None and h.status("pr-24-shop") == "running"
    stop()
    h.close(24, SHAS[0])
    assert seen[-1] == ("pr-24-shop", "running"), "no calls after unsubscribing"


def test_a_github_app_clone_token_is_asked_for_each_fetch(tmp_path: Path) -> None:
    """With a clone token source (a GitHub App), each fetch gets a fresh token for its repo."""
    asked: list[tuple[str, str]] = []

    async def app_token(forge: str, repo: str) -> str | None:
        asked.append((forge, repo))
        return f"ghs_installation_{len(asked)}"

    config = Config(
        server=ServerConfig(state_dir=str(tmp_path / "state")), github=GithubConfig(token="ghp_x")
    )
    h = Harness(tmp_path, config, clone_token_source=app_token)
    h.publish(1, SHAS[0])
    h.deploy(1, SHAS[0])
    assert h.status("pr-1-shop") == "running"
    assert asked == [("github", REPO)]
    source = h.git.sources[-1]
    assert (source.username, source.token) == ("x-access-token", "ghs_installation_1")
