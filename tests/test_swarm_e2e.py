"""
Previews on Docker Swarm (issue 19), on private engines only
(`tests/support/swarm_lab.py`: a manager engine in a network namespace of its
own, Debian's docker-registry on its LAN address, a single-node swarm).
prevu runs in the network namespace of its "home" container on the manager
(`[docker] self_container`), so it reaches each preview's overlay network.

Open -> served through the proxy (a Swarm service, dnsrr, on its own overlay,
labelled, limited, image pushed to the registry); push -> no failed request
while the route moves to the new task; prevu restarted -> served again
without rebuilding (the same service); close -> nothing left. prevu on the
host (no container of its own) is refused at start-up with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from prevu.compose.check import ComposeRefused, check_model
from tests.support.docker import HTTPD_DOCKERFILE
from tests.support.git_repos import git
from tests.support.netns_dockerd import Netns, missing
from tests.support.prevu_process import environment, twistd
from tests.support.swarm_lab import REGISTRY, SwarmLab, engine_api

pytestmark = [pytest.mark.docker, pytest.mark.slow]
TOKEN = "swarm-token"
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
runtime = "swarm"
self_container = "{home}"
memory = "64m"
cpus = 0.5
reconcile_interval = "3s"

[swarm]
registry = "{registry}"
constraints = ["node.role == manager"]
"""
LOAD = """\
import json, sys, time, urllib.request, os
url, host, stop, out = sys.argv[1:5]
seen = []
while not os.path.exists(stop):
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            seen.append([response.status, response.read().decode()])
    except urllib.error.HTTPError as error:
        seen.append([error.code, error.read().decode("utf-8", "replace")[:200]])
    except OSError as error:
        seen.append([0, str(error)])
    time.sleep(0.02)
open(out, "w").write(json.dumps(seen))
"""
# Exits at once on SIGTERM: Swarm's stop of the old task does not wait 10 s.
SERVE = HTTPD_DOCKERFILE.replace(
    'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]',
    'CMD ["/bin/busybox", "sh", "-c", "trap \'exit 0\' TERM; '
    '/bin/busybox httpd -p 8080 -h /www; while true; do /bin/busybox sleep 0.2; done"]',
)
PRIVILEGED = "services:\n  web:\n    build: .\n    privileged: true\n"


@pytest.fixture
def lab() -> Iterator[SwarmLab]:
    lacking = missing()
    assert not lacking, lacking
    made = SwarmLab.create()
    try:
        yield made
    finally:
        made.close()


def commit(root: Path, text: str) -> str:
    (root / "www" / "index.html").write_text(text)
    git("add", "-A", cwd=root)
    git("commit", "--quiet", "-m", text.strip(), cwd=root)
    return git("rev-parse", "HEAD", cwd=root)


def repository(root: Path, prevu_toml: str = "") -> None:
    root.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", str(root), cwd=root.parent)
    subprocess.run(["cp", "/bin/busybox", str(root / "busybox")], check=True)
    (root / "www").mkdir()
    (root / "Dockerfile").write_text(SERVE)
    if prevu_toml:
        (root / ".prevu.toml").write_text(prevu_toml)


def api(ns: Netns, method: str, path: str, body: object = None) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    status, text = ns.http(
        CONTROL + path, method, headers, json.dumps(body) if body is not None else None
    )
    assert status in (200, 202), (status, text)
    answer: dict[str, object] = json.loads(text)
    return answer


class Prevu:
    """`twistd -n prevu` in the home namespace, its log in `log`."""

    def __init__(self, ns: Netns, config: Path, log: Path) -> None:
        self.ns, self.config, self.log = ns, config, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as output:
            self.process = self.ns.popen(
                [twistd(), "--pidfile=", "-n", "prevu", "--config", str(self.config)],
                cwd=self.config.parent,
                env=environment(),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while self.ns.http(CONTROL + "/healthz", timeout=1.0)[0] != 200:
            assert self.process.poll() is None, self.tail()
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.2)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_status(
    ns: Netns,
    preview: str,
    wanted: str,
    prevu: Prevu,
    timeout: float = 150,
    allow_failed: bool = False,
) -> None:
    deadline = time.monotonic() + timeout
    answer: dict[str, object] = {}
    while time.monotonic() < deadline:
        answer = api(ns, "GET", f"/api/previews/{preview}")
        if answer["status"] == wanted:
            return
        assert allow_failed or answer["status"] != "failed", (answer, prevu.tail())
        time.sleep(0.5)
    raise AssertionError(f"{preview}: {answer}; {prevu.tail()}")


def wait_served(ns: Netns, host: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    answer = (0, "")
    while time.monotonic() < deadline:
        answer = ns.http(PROXY, headers={"Host": host}, timeout=3.0)
        if answer == (200, text):
            return
        time.sleep(0.3)
    raise AssertionError(f"{host}: {answer}")


def ours(lab: SwarmLab, kind: str, instance: str) -> list[dict[str, object]]:
    """The engine's `kind` objects (services, networks, secrets, configs) of this prevu."""
    flt = urllib.parse.quote(json.dumps({"label": [f"prevu.instance={instance}"]}))
    found = engine_api(lab.manager, f"/{kind}?filters={flt}") or []
    return list(found)


def test_a_preview_on_a_single_node_swarm(lab: SwarmLab, tmp_path: Path) -> None:
    """Open, push without a failed request, restart prevu, close: on Swarm services."""
    home = lab.home()
    state = tmp_path / "state"
    config = tmp_path / "prevu.toml"
    config.write_text(
        CONFIG.format(
            state=state, token=TOKEN, host=lab.manager.host, home="prevu-home", registry=REGISTRY
        )
    )
    prevu = Prevu(home, config, tmp_path / "twistd.log")
    prevu.start()
    load: subprocess.Popen[bytes] | None = None
    try:
        repo = tmp_path / "site"
        repository(repo, '[run]\nvolumes = ["/data"]\n')  # a named volume, kept across pushes
        sha = commit(repo, "one\n")
        body = {"repo": "site", "branch": "main", "sha": sha, "clone_url": repo.as_uri()}
        answer = api(home, "POST", "/api/previews", body)
        preview, host = str(answer["id"]), str(answer["host"])
        wait_status(home, preview, "running", prevu)
        wait_served(home, host, "one\n")

        services = engine_api(lab.manager, "/services")
        assert len(services) == 1, services
        spec = services[0]["Spec"]
        labels = spec["Labels"]
        instance = labels["prevu.instance"]
        assert labels["prevu.preview"] == preview and labels["prevu.managed"] == "true"
        assert spec["EndpointSpec"]["Mode"] == "dnsrr"
        template = spec["TaskTemplate"]
        assert template["ContainerSpec"]["Image"].startswith(f"{REGISTRY}/prevu-")
        assert "@sha256:" in template["ContainerSpec"]["Image"], "pinned by digest"
        assert template["Resources"]["Limits"]["MemoryBytes"] == 64 << 20
        assert template["Resources"]["Reservations"]["NanoCPUs"] == 500_000_000
        assert template["Placement"]["Constraints"] == ["node.role == manager"]
        mounts = template["ContainerSpec"]["Mounts"]
        assert [(m["Type"], m["Target"]) for m in mounts] == [("volume", "/data")], mounts
        assert mounts[0]["VolumeOptions"]["Labels"]["prevu.preview"] == preview
        volume = mounts[0]["Source"]
        assert engine_api(lab.manager, f"/volumes/{volume}")["Labels"]["prevu.preview"] == preview
        networks = ours(lab, "networks", instance)
        assert [n["Driver"] for n in networks] == ["overlay"], networks
        assert networks[0]["Attachable"] is True
        catalog = lab.manager.http(f"http://{REGISTRY}/v2/_catalog")
        assert catalog[0] == 200 and f"prevu-{instance}/{preview}" in catalog[1], catalog

        # A refused Compose file (privileged): only that preview fails, with the reason the
        # one-host allowlist gives (the same `check_model`), nothing started.
        compose = tmp_path / "compose-site"
        repository(compose)
        (compose / ".prevu.toml").write_text('[compose]\nservice = "web"\nport = 8080\n')
        (compose / "compose.yaml").write_text(PRIVILEGED)
        sha_c = commit(compose, "compose\n")
        refused = api(
            home,
            "POST",
            "/api/previews",
            {"repo": "compose-site", "branch": "main", "sha": sha_c, "clone_url": compose.as_uri()},
        )
        wait_status(home, str(refused["id"]), "failed", prevu, allow_failed=True)
        failed_preview = api(home, "GET", f"/api/previews/{refused['id']}")
        with pytest.raises(ComposeRefused) as one_host:
            check_model(
                {"services": {"web": {"build": {"context": str(compose)}, "privileged": True}}},
                str(compose),
                os.path.realpath,
            )
        reason = str(one_host.value.reason)
        assert "services.web.privileged" in str(failed_preview["error"]), failed_preview
        assert reason in str(failed_preview["error"]), (reason, failed_preview)
        assert len(engine_api(lab.manager, "/services")) == 1

        # Push: a new service next to the old one; the route moves when it is healthy.
        stop_file, out = tmp_path / "stop-load", tmp_path / "load.json"
        load = home.popen([sys.executable, "-I", "-c", LOAD, PROXY, host, str(stop_file), str(out)])
        time.sleep(1.0)
        sha2 = commit(repo, "two\n")
        api(home, "POST", "/api/previews", {**body, "sha": sha2})
        try:
            wait_served(home, host, "two\n", timeout=150)
        except AssertionError:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            logs = home.http(f"{CONTROL}/api/previews/{preview}/logs?stored", headers=headers)
            raise AssertionError(f"{logs[1][-3000:]}\n{prevu.tail()}") from None
        time.sleep(1.0)
        stop_file.write_text("")
        load.wait(30)
        load = None
        seen = json.loads(out.read_text())
        failed = [s for s in seen if s[0] != 200 or s[1] not in ("one\n", "two\n")]
        assert len(seen) > 20 and not failed, (len(seen), failed[:5])
        assert seen[-1] == [200, "two\n"]
        wait_status(home, preview, "running", prevu)
        deadline = time.monotonic() + 60
        while len(engine_api(lab.manager, "/services")) != 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        services = engine_api(lab.manager, "/services")
        assert len(services) == 1, "the old revision's service is removed"
        serving = services[0]["ID"]
        pushed = services[0]["Spec"]["TaskTemplate"]
        assert pushed["ContainerSpec"]["Mounts"][0]["Source"] == volume, "the same volume"
        node = engine_api(lab.manager, "/nodes")[0]["ID"]
        assert f"node.id=={node}" in pushed["Placement"]["Constraints"], "pinned to its volume"
        print(f"push: {len(seen)} requests, none failed")

        # prevu restarted: the running service is adopted, nothing is built again.
        prevu.stop()
        images = {i["Id"] for i in engine_api(lab.manager, "/images/json")}
        prevu.start()
        wait_served(home, host, "two\n", timeout=60)
        assert [s["ID"] for s in engine_api(lab.manager, "/services")] == [serving]
        assert {i["Id"] for i in engine_api(lab.manager, "/images/json")} == images

        # The service removed behind prevu's back: the reconcile makes a new one (self-healing,
        # issue 15; since prevu restarted it builds the commit again: the app model of the
        # image is not known any more, as on one host).
        assert lab.manager._api("DELETE", f"/services/{serving}") is None
        back = time.monotonic()
        recreated: list[str] = []
        while time.monotonic() - back < 60:
            recreated = [s["ID"] for s in engine_api(lab.manager, "/services")]
            if recreated and recreated != [serving]:
                break
            time.sleep(0.3)
        assert len(recreated) == 1 and recreated != [serving], (recreated, prevu.tail())
        time.sleep(1.0)  # the removed service's task is gone by now: a new address serves
        wait_served(home, host, "two\n", timeout=60)
        print(f"recreated and served again after {time.monotonic() - back:.1f}s")
        wait_status(home, preview, "running", prevu)

        # Close: no service, network, secret, config or volume of this prevu left.
        assert api(home, "DELETE", f"/api/previews/{preview}")
        wait_status(home, preview, "stopped", prevu)
        deadline = time.monotonic() + 60
        left: dict[str, object] = {}
        while time.monotonic() < deadline:
            left = {
                kind: ours(lab, kind, instance)
                for kind in ("services", "networks", "secrets", "configs")
            }
            images = engine_api(lab.manager, "/images/json") or []
            left["images"] = [
                i for i in images if (i.get("Labels") or {}).get("prevu.preview") == preview
            ]
            volumes = engine_api(lab.manager, "/volumes")["Volumes"] or []
            left["volumes"] = [v for v in volumes if (v.get("Labels") or {}).get("prevu.instance")]
            if not any(left.values()):
                break
            time.sleep(0.5)
        assert not any(left.values()), left
        # ... and its images are deleted from the registry (it holds every PR's code).
        tags = lab.manager.http(f"http://{REGISTRY}/v2/prevu-{instance}/{preview}/tags/list")
        assert tags[0] == 200 and json.loads(tags[1])["tags"] in (None, []), tags
    finally:
        if load is not None:
            load.kill()
            load.wait(10)
        prevu.stop()


def test_prevu_on_the_host_is_refused_with_the_reason(lab: SwarmLab, tmp_path: Path) -> None:
    """runtime = "swarm" with no container of prevu's own: start-up stops and says why."""
    config = tmp_path / "prevu.toml"
    text = CONFIG.format(
        state=tmp_path / "state", token=TOKEN, host=lab.manager.host, home="x", registry=REGISTRY
    ).replace('self_container = "x"', 'self_container = "none"')
    config.write_text(text)
    done = lab.manager.run(
        [twistd(), "--pidfile=", "-n", "prevu", "--config", str(config)],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "prevu runs on the host" in output and "own container on a manager" in output, output


TWO_NODES = """
[[swarm.nodes]]
name = "worker"
docker_host = "{worker}"
"""


def test_a_preview_on_the_worker_of_two_nodes(lab: SwarmLab, tmp_path: Path) -> None:
    """
    Constrained to the worker: served through the manager's prevu; the worker's engine
    restarted -> served again within a few reconcile periods; close -> nothing on either node.
    """
    worker = lab.add_worker()
    home = lab.home()
    state = tmp_path / "state"
    config = tmp_path / "prevu.toml"
    text = CONFIG.format(
        state=state, token=TOKEN, host=lab.manager.host, home="prevu-home", registry=REGISTRY
    ).replace('"node.role == manager"', '"node.role == worker"')
    config.write_text(text + TWO_NODES.format(worker=worker.host))
    prevu = Prevu(home, config, tmp_path / "twistd.log")
    prevu.start()
    try:
        repo = tmp_path / "site"
        # [data] on_push runs in the task's container on the worker (through its engine).
        argv = ["/bin/busybox", "sh", "-c", "echo pushed-on-worker > /www/pushed.html"]
        repository(repo, f"[data]\non_push = {json.dumps(argv)}\n")
        sha = commit(repo, "on the worker\n")
        body = {"repo": "site", "branch": "main", "sha": sha, "clone_url": repo.as_uri()}
        answer = api(home, "POST", "/api/previews", body)
        preview, host = str(answer["id"]), str(answer["host"])
        wait_status(home, preview, "running", prevu)
        wait_served(home, host, "on the worker\n")
        pushed = home.http(PROXY + "pushed.html", headers={"Host": host}, timeout=3.0)
        assert pushed == (200, "pushed-on-worker\n"), pushed
        assert (
            engine_api(
                lab.manager,
                "/containers/json?filters=%7B%22label%22%3A%5B%22prevu.preview%22%5D%7D",
            )
            == []
        )
        running = engine_api(worker, "/containers/json")
        assert len(running) == 1 and running[0]["Labels"]["prevu.preview"] == preview, running
        instance = running[0]["Labels"]["prevu.instance"]

        worker.restart()
        back = time.monotonic()
        try:
            wait_served(home, host, "on the worker\n", timeout=60)
        except AssertionError as error:
            status = api(home, "GET", f"/api/previews/{preview}")
            raise AssertionError(f"{error}; {status}; {prevu.tail()}") from None
        took = time.monotonic() - back
        print(f"served again {took:.1f}s after the worker's engine restarted")
        assert took <= 5 * 3.0 + 15, took  # a few reconcile periods (3 s) + Swarm's rescheduling

        assert api(home, "DELETE", f"/api/previews/{preview}")
        wait_status(home, preview, "stopped", prevu)
        deadline = time.monotonic() + 60
        left: dict[str, object] = {}
        while time.monotonic() < deadline:
            left = {kind: ours(lab, kind, instance) for kind in ("services", "networks")}
            for node, engine in (("manager", lab.manager), ("worker", worker)):
                images = engine_api(engine, "/images/json") or []
                # The repository's shared build cache image (`prevu.cache`, no preview
                # label) outlives its previews by design (docs/docker.md).
                left[f"{node} images"] = [
                    i for i in images if (i.get("Labels") or {}).get("prevu.preview") == preview
                ]
                containers = engine_api(engine, "/containers/json?all=1") or []
                left[f"{node} containers"] = [
                    c for c in containers if (c.get("Labels") or {}).get("prevu.instance")
                ]
            if not any(left.values()):
                break
            time.sleep(0.5)
        assert not any(left.values()), left
    finally:
        prevu.stop()


def test_a_preview_sleeps_and_wakes_on_swarm(lab: SwarmLab, tmp_path: Path) -> None:
    """Idle: the service is scaled to 0 (no task left); a request wakes it at a new task."""
    home = lab.home()
    config = tmp_path / "prevu.toml"
    config.write_text(
        CONFIG.format(
            state=tmp_path / "state",
            token=TOKEN,
            host=lab.manager.host,
            home="prevu-home",
            registry=REGISTRY,
        )
        + '\n[previews]\nsleep_after = "4s"\n'
    )
    prevu = Prevu(home, config, tmp_path / "twistd.log")
    prevu.start()
    try:
        repo = tmp_path / "site"
        repository(repo)
        sha = commit(repo, "awake\n")
        body = {"repo": "site", "branch": "main", "sha": sha, "clone_url": repo.as_uri()}
        answer = api(home, "POST", "/api/previews", body)
        preview, host = str(answer["id"]), str(answer["host"])
        wait_status(home, preview, "running", prevu)
        wait_served(home, host, "awake\n")

        wait_status(home, preview, "sleeping", prevu, timeout=30)
        (service,) = engine_api(lab.manager, "/services")
        assert service["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
        deadline = time.monotonic() + 30
        running = [0]
        while running and time.monotonic() < deadline:
            tasks = engine_api(lab.manager, "/tasks")
            running = [t for t in tasks if t["Status"]["State"] == "running"]
            time.sleep(0.3)
        assert not running, "no task runs while it sleeps"

        first = home.http(PROXY, headers={"Host": host}, timeout=10.0)
        assert first == (200, "awake\n") or first[0] == 503, first  # held, or "waking" page
        wait_served(home, host, "awake\n", timeout=60)
        wait_status(home, preview, "running", prevu)
        (woken,) = engine_api(lab.manager, "/services")
        assert woken["ID"] == service["ID"] and woken["Spec"]["Mode"]["Replicated"]["Replicas"] == 1
    finally:
        prevu.stop()
