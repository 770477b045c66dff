"""Data per preview (issue 18): `[data]` and `[run] volumes` parsing, the lifecycle's
`held`, and the orchestrator's on_push / seed / reset flow on fakes (Clock, FakeDocker).

The same flow on the real engine is tests/test_data_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from attrs import evolve
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import ensureDeferred

from prevu import labels as lb
from prevu import lifecycle as lc
from prevu.adapters.docker_runtime import DockerRuntime
from prevu.appmodel import single_dockerfile
from prevu.errors import RepoConfigError
from prevu.orchestrator import records
from prevu.ports import ExecResult, VolumeInfo
from prevu.repoconfig import parse_repo_config
from tests.test_lifecycle import RA
from tests.test_lifecycle import STATES as LIFECYCLE_STATES
from tests.test_orchestrator import SHAS, Harness
from tests.test_webhooks import Client, make_config

MIGRATE = ("./migrate",)
SEED = ("./seed", "demo")
DATA_TOML = """\
[run]
volumes = ["/data", "/var/lib/app/"]
[data]
on_push = ["./migrate"]
seed = ["./seed", "demo"]
"""


# --- .prevu.toml ------------------------------------------------------------------


def test_data_and_volumes_are_read_into_settings_and_the_model() -> None:
    """[data] commands and [run] volumes (normalized) reach the single-Dockerfile model."""
    settings = parse_repo_config(DATA_TOML)
    assert settings.volumes == ("/data", "/var/lib/app")
    assert (settings.on_push, settings.seed) == (MIGRATE, SEED)
    model = single_dockerfile("/ws/pr-1", settings)
    assert model.front.volumes == ("/data", "/var/lib/app")
    assert (model.on_push, model.seed) == (MIGRATE, SEED)
    plain = parse_repo_config(None)
    assert (plain.volumes, plain.on_push, plain.seed) == ((), None, None)
    assert single_dockerfile("/ws/pr-1", plain) != model


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[data]\non_push = "./migrate"\n', "data.on_push", "expected a list like"),
        ("[data]\nseed = []\n", "data.seed", "non-empty list of strings"),
        ("[data]\nseed = [1]\n", "data.seed", "non-empty list of strings"),
        ('[data]\nseed = [" "]\n', "data.seed", "a program to run first"),
        ('[data]\nreset = ["x"]\n', "data.reset", "unknown key"),
        ("data = 3\n", "data", "expected a table"),
        ('[run]\nvolumes = "/data"\n', "run.volumes", 'expected a list like ["/data"]'),
        ('[run]\nvolumes = ["data"]\n', "run.volumes", "absolute container path"),
        ('[run]\nvolumes = ["/"]\n', "run.volumes", "absolute container path"),
        ('[run]\nvolumes = ["/a/.."]\n', "run.volumes", "absolute container path"),
        ('[run]\nvolumes = ["/data:/x"]\n', "run.volumes", "absolute container path"),
        ('[run]\nvolumes = ["/data", "/data/"]\n', "run.volumes", "listed twice"),
        (
            "[run]\nvolumes = [" + ", ".join(f'"/v{n}"' for n in range(17)) + "]\n",
            "run.volumes",
            "at most 16",
        ),
    ],
)
def test_bad_data_settings_name_the_key(text: str, key: str, reason: str) -> None:
    """Every bad [data] / [run] volumes value is a RepoConfigError naming key and reason."""
    with pytest.raises(RepoConfigError) as raised:
        parse_repo_config(text)
    assert raised.value.key == key and reason in raised.value.reason


ARG = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)


@given(st.lists(ARG, min_size=1, max_size=5))
def test_any_argv_is_kept_exactly_or_refused_clearly(argv: list[str]) -> None:
    """An argv list is kept exactly as written (no shell splitting); a blank program is refused."""
    text = f"[data]\non_push = {json.dumps(argv, ensure_ascii=False)}\n"
    if not argv[0].strip():
        with pytest.raises(RepoConfigError) as raised:
            parse_repo_config(text)
        assert raised.value.key == "data.on_push"
        return
    assert parse_repo_config(text).on_push == tuple(argv)


# --- the lifecycle: a failed on_push holds the old revision ------------------------

R1 = lc.Revision(SHAS[0], "b", 1)
R2 = lc.Revision(SHAS[1], "b", 2)
OLD = lc.Deployment(R1, "c1", "i1", "10.0.0.1", 8080)


def starting(serving: lc.Deployment | None) -> lc.Preview:
    return lc.Preview(target=R2, serving=serving, job=lc.Job("start", R2, "i2", True), clean=False)


def test_failed_on_push_keeps_the_old_revision_running_with_an_error() -> None:
    """StartFailed(on_push) while R1 serves: R1 keeps serving, status running, error set."""
    result = lc.transition(starting(OLD), lc.StartFailed(R2, "on_push failed (exit 3)", True))
    state = result.state
    assert state.serving == OLD and state.status == "running" and state.holding
    assert state.error == "on_push failed (exit 3)" and state.failed == R2
    assert not any(isinstance(e, lc.Unroute | lc.Build) for e in result.effects)
    assert lc.Discard(image="i2") in result.effects
    # held survives a restart (records), and the next good push clears it.
    assert records.state_from_json(records.state_to_json(state)) == state
    pushed = lc.transition(state, lc.Deploy(SHAS[2], "b")).state
    assert pushed.error is None and pushed.status == "queued"


def test_failed_on_push_on_the_first_start_fails_the_preview() -> None:
    """Nothing served before: the preview fails (unrouted), as any failed start."""
    result = lc.transition(starting(None), lc.StartFailed(R2, "on_push failed (exit 1)", True))
    assert result.state.status == "failed" and not result.state.holding
    assert lc.Unroute() in result.effects


def test_a_plain_start_failure_while_serving_is_still_failed() -> None:
    """Only on_push holds: a container that never got healthy fails the push as before."""
    result = lc.transition(starting(OLD), lc.StartFailed(R2, "no TCP connection"))
    assert result.state.status == "failed" and not result.state.held


def test_a_later_build_failure_is_not_held() -> None:
    """held is about the on_push failure only: a later failed build shows failed."""
    held = evolve(starting(OLD), job=None, failed=R2, error="on_push failed", held=True)
    r3 = lc.Revision(SHAS[2], "b", 3)
    building = lc.transition(held, lc.Deploy(SHAS[2], "b")).state
    assert building.job == lc.Job("build", r3)
    failed = lc.transition(building, lc.BuildFailed(r3, "boom")).state
    assert failed.status == "failed" and failed.error == "boom"


# --- the orchestrator on fakes -----------------------------------------------------


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def execs(h: Harness) -> list[tuple[str, ...]]:
    return [argv for _, argv in h.docker.execs]


def test_first_start_runs_on_push_then_seed_before_the_route_exists(h: Harness) -> None:
    """on_push then seed, once each, in the new container, before any ready route."""
    h.publish(1, SHAS[0], {".prevu.toml": DATA_TOML})
    h.docker.pause("exec_in")
    h.deploy(1, SHAS[0])
    route = h.routes.lookup("pr-1-shop.localhost:8000")
    assert route is not None and route.state == "building"
    assert h.status("pr-1-shop") == "starting"
    h.docker.release("exec_in")
    h.settle()
    assert execs(h) == [MIGRATE, SEED]
    (container, _), _ = h.docker.execs
    serving = h.orchestrator.serving("pr-1-shop")
    assert serving is not None and serving.container == container
    assert h.status("pr-1-shop") == "running"
    record = h.store.get("pr-1-shop")
    assert record is not None and record.data.get("seeded") == "true"
    volumes = sorted(h.docker.volumes.values(), key=lambda v: v.name)
    assert len(volumes) == 2
    for volume in volumes:
        assert volume.labels[lb.PREVIEW] == "pr-1-shop" and volume.labels[lb.REPO] == "acme/shop"
        assert volume.labels[lb.NUMBER] == "1" and volume.labels[lb.MANAGED] == "true"
        assert volume.labels[lb.INSTANCE] == h.orchestrator.instance
    (run,) = h.docker.runs.values()
    assert sorted(run.volumes.values()) == ["/data", "/var/lib/app"]


def test_a_push_runs_on_push_again_not_seed_and_a_restart_does_not_seed(h: Harness) -> None:
    """Second revision: on_push only; the seeded flag survives a restart of prevu."""
    h.publish(1, SHAS[0], {".prevu.toml": DATA_TOML})
    h.deploy(1, SHAS[0])
    h.settle()
    h.orchestrator.stop()
    h.orchestrator = h.make()
    done = ensureDeferred(h.orchestrator.start())
    h.settle()
    assert done.called
    h.publish(1, SHAS[1], {".prevu.toml": DATA_TOML})
    h.deploy(1, SHAS[1])
    h.settle()
    assert execs(h) == [MIGRATE, SEED, MIGRATE]
    serving = h.orchestrator.serving("pr-1-shop")
    assert serving is not None and serving.revision.sha == SHAS[1]
    assert len(h.docker.volumes) == 2, "the same volumes, kept across the push"


def test_a_failing_on_push_keeps_the_old_revision_served(h: Harness) -> None:
    """on_push exits 3: the old container keeps the route; running with error naming on_push."""
    h.publish(1, SHAS[0], {".prevu.toml": DATA_TOML})
    h.deploy(1, SHAS[0])
    h.settle()
    before = h.orchestrator.serving("pr-1-shop")
    broken = DATA_TOML.replace('["./migrate"]', '["./migrate", "--broken"]')
    h.docker.exec_answers[("./migrate", "--broken")] = ExecResult(3, "relation exists\n")
    h.publish(1, SHAS[1], {".prevu.toml": broken})
    h.deploy(1, SHAS[1])
    h.settle()
    assert h.orchestrator.serving("pr-1-shop") == before
    record = h.store.get("pr-1-shop")
    assert record is not None and record.status == "running"
    assert record.error == "on_push failed (exit 3): relation exists"
    assert before is not None
    route = h.routes.lookup("pr-1-shop.localhost:8000")
    assert route is not None and route.upstream is not None
    assert route.upstream.host == before.address
    assert [c.id for c in h.docker.containers.values()] == [before.container]
    lines = [line.line for line in h.store.read_logs("pr-1-shop")]
    assert "relation exists" in lines


def test_a_failing_seed_fails_the_preview_with_its_output(h: Harness) -> None:
    """seed exits 1 on the first start: the preview fails with seed's output."""
    h.docker.exec_answers[SEED] = ExecResult(1, "no fixtures\n")
    h.publish(1, SHAS[0], {".prevu.toml": DATA_TOML})
    h.deploy(1, SHAS[0])
    h.settle()
    record = h.store.get("pr-1-shop")
    assert record is not None and record.status == "failed"
    assert record.error == "seed failed (exit 1): no fixtures"
    route = h.routes.lookup("pr-1-shop.localhost:8000")
    assert route is not None and route.upstream is None and route.state == "failed"
    assert "seeded" not in record.data


def test_reset_wipes_the_volumes_then_runs_on_push_and_seed_again(h: Harness) -> None:
    """reset: 503 page, everything of the preview removed (volumes too), same commit,
    on_push then seed again; unknown or closed previews are refused."""
    h.publish(1, SHAS[0], {".prevu.toml": DATA_TOML})
    h.deploy(1, SHAS[0])
    h.settle()
    old = h.orchestrator.serving("pr-1-shop")
    volumes = set(h.docker.volumes)
    h.docker.pause("build")
    assert h.orchestrator.reset("pr-1-shop") is True
    route = h.routes.lookup("pr-1-shop.localhost:8000")
    assert route is not None and route.state == "building"
    h.docker.release("build")
    h.settle()
    removed = [name for op, name in h.docker.calls if op == "remove_volume"]
    assert sorted(removed) == sorted(volumes)
    assert execs(h) == [MIGRATE, SEED, MIGRATE, SEED]
    new = h.orchestrator.serving("pr-1-shop")
    assert old is not None and new is not None
    assert new.revision.sha == old.revision.sha and new.container != old.container
    assert h.status("pr-1-shop") == "running"
    assert set(h.docker.volumes) == volumes, "made again, empty"
    assert h.orchestrator.reset("nope") is False
    h.close(1, SHAS[0])
    h.settle()
    assert h.docker.volumes == {}
    assert h.orchestrator.reset("pr-1-shop") is False


@pytest.mark.parametrize("name", sorted(LIFECYCLE_STATES))
def test_the_on_push_flag_only_ever_holds_a_serving_revision(name: str) -> None:
    """For every state of the lifecycle table: StartFailed(on_push) differs from a plain
    StartFailed only by `held`, and holds only while a revision serves and the target failed."""
    state = LIFECYCLE_STATES[name]
    plain = lc.transition(state, lc.StartFailed(RA, "x"))
    held = lc.transition(state, lc.StartFailed(RA, "x", on_push=True))
    assert held.effects == plain.effects
    assert evolve(held.state, held=False) == plain.state
    if held.state.held:
        assert held.state.serving is not None and held.state.failed == held.state.target
        assert held.state.status == "running"


def test_a_volume_of_another_owner_is_refused_not_mounted(h: Harness) -> None:
    """A volume found under the preview's volume name that is not ours fails the start."""
    runtime = h.orchestrator.runtime
    assert isinstance(runtime, DockerRuntime)
    name = runtime.volume_name("pr-1-shop", "/data")
    h.docker.volumes[name] = VolumeInfo(name, {lb.MANAGED: "true", lb.INSTANCE: "someone-else"})
    h.publish(1, SHAS[0], {".prevu.toml": DATA_TOML})
    h.deploy(1, SHAS[0])
    h.settle()
    record = h.store.get("pr-1-shop")
    assert record is not None and record.status == "failed"
    assert record.error is not None and "belongs to someone-else" in record.error
    assert h.docker.runs == {} and h.docker.execs == []


def test_api_reset_answers_202_then_409_once_closed(tmp_path: Path) -> None:
    """POST /api/previews/{id}/reset: 401 without the token, 404 unknown, 202, 409 closed."""
    client = Client(tmp_path, make_config(tmp_path))
    h = client.h
    h.publish(2, SHAS[0], {".prevu.toml": DATA_TOML})
    h.deploy(2, SHAS[0])
    h.settle()
    path = "/api/previews/pr-2-shop/reset"
    assert client.api_call("POST", path, token=None)[0] == 401
    assert client.api_call("POST", "/api/previews/nope/reset")[0] == 404
    code, _, body = client.api_call("POST", path)
    assert code == 202 and json.loads(body)["id"] == "pr-2-shop"
    h.settle()
    assert execs(h) == [MIGRATE, SEED, MIGRATE, SEED]
    h.close(2, SHAS[0])
    h.settle()
    code, _, body = client.api_call("POST", path)
    assert code == 409 and "cannot be reset" in json.loads(body)["error"]
