"""
Compose previews on Docker Swarm (issue 19), on the private engines of
`tests/support/swarm_lab.py` (a single-node swarm, Debian's docker-registry),
prevu in its "home" container's namespace as in tests/test_swarm_e2e.py.

A two-service Compose preview (web built, db built and kept with a volume)
runs as two Swarm services on the preview's overlay, web reaching db by its
Compose service name; a push moves the route without a failed request while
db (its data) stays; prevu restarted serves it again without building;
close leaves no service, network, secret, config, volume, image or pushed
tag. The refusal of a privileged compose file is in tests/test_swarm_e2e.py
(one lab for both).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.support.git_repos import git
from tests.support.swarm_lab import REGISTRY, SwarmLab, docker_cli, engine_api
from tests.test_swarm_e2e import (
    CONFIG,
    LOAD,
    PROXY,
    SERVE,
    TOKEN,
    Prevu,
    api,
    lab,
    ours,
    pytestmark,
    wait_served,
    wait_status,
)

__all__ = ["lab", "pytestmark"]

COMPOSE = """\
services:
  web:
    build: .
    depends_on: [db]
  db:
    build: ./db
    volumes: ["data:/data"]
volumes:
  data: {}
"""
DB_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
CMD ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; /bin/busybox test -e /data/value.txt || \
echo data-$RANDOM$RANDOM > /data/value.txt; /bin/busybox httpd -p 8080 -h /data; \
while true; do /bin/busybox sleep 0.2; done"]
"""
PREVU_TOML = '[compose]\nservice = "web"\nport = 8080\nkeep = ["db"]\n'


def compose_repository(root: Path) -> None:
    root.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", str(root), cwd=root.parent)
    (root / "db").mkdir()
    for where in (root, root / "db"):
        subprocess.run(["cp", "/bin/busybox", str(where / "busybox")], check=True)
    (root / "www").mkdir()
    (root / "Dockerfile").write_text(SERVE)
    (root / "db" / "Dockerfile").write_text(DB_DOCKERFILE)
    (root / "compose.yaml").write_text(COMPOSE)
    (root / ".prevu.toml").write_text(PREVU_TOML)


def commit(root: Path, text: str) -> str:
    (root / "www" / "index.html").write_text(text)
    git("add", "-A", cwd=root)
    git("commit", "--quiet", "-m", text.strip(), cwd=root)
    return git("rev-parse", "HEAD", cwd=root)


def by_service(lab: SwarmLab) -> dict[str, Any]:
    """The manager's services by their `prevu.service` label (one each, else AssertionError)."""
    found: dict[str, Any] = {}
    for service in engine_api(lab.manager, "/services") or []:
        name = service["Spec"]["Labels"].get("prevu.service")
        assert name not in found, "one service per Compose service"
        found[name] = service
    return found


def running_container(lab: SwarmLab, service: str) -> str:
    flt = urllib.parse.quote(json.dumps({"service": [service], "desired-state": ["running"]}))
    tasks = engine_api(lab.manager, f"/tasks?filters={flt}") or []
    for task in tasks:
        if task["Status"]["State"] == "running":
            return str(task["Status"]["ContainerStatus"]["ContainerID"])
    raise AssertionError(f"no running task of {service}: {tasks}")


def fetch_db(lab: SwarmLab, web_service: str) -> str:
    """What web's task gets from http://db:8080/value.txt (by the Compose service name)."""
    container = running_container(lab, web_service)
    url = "http://db:8080/value.txt"
    return docker_cli(lab.manager, "exec", container, "/bin/busybox", "wget", "-q", "-O", "-", url)


def test_a_compose_preview_on_a_single_node_swarm(lab: SwarmLab, tmp_path: Path) -> None:
    """Open (two services, by name), push (no failed request, db kept), close (nothing left)."""
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
    )
    prevu = Prevu(home, config, tmp_path / "twistd.log")
    prevu.start()
    load: subprocess.Popen[bytes] | None = None
    try:
        repo = tmp_path / "shop"
        compose_repository(repo)
        sha = commit(repo, "one\n")
        body = {"repo": "shop", "branch": "main", "sha": sha, "clone_url": repo.as_uri()}
        answer = api(home, "POST", "/api/previews", body)
        preview, host = str(answer["id"]), str(answer["host"])
        wait_status(home, preview, "running", prevu)
        wait_served(home, host, "one\n")

        services = by_service(lab)
        assert sorted(services) == ["db", "web"], services
        web, db = services["web"]["Spec"], services["db"]["Spec"]
        instance = web["Labels"]["prevu.instance"]
        network = ours(lab, "networks", instance)
        assert [n["Driver"] for n in network] == ["overlay"], network
        for spec, name in ((web, "web"), (db, "db")):
            assert spec["Labels"]["prevu.preview"] == preview
            assert spec["EndpointSpec"]["Mode"] == "dnsrr"
            template = spec["TaskTemplate"]
            assert template["Networks"] == [{"Target": network[0]["Id"], "Aliases": [name]}]
            assert template["ContainerSpec"]["Image"].startswith(f"{REGISTRY}/prevu-")
            assert "@sha256:" in template["ContainerSpec"]["Image"], "pinned by digest"
            # The preview's 64m and 0.5 CPU split between its two services, as on one host.
            assert template["Resources"]["Limits"]["MemoryBytes"] == 32 << 20
            assert template["Resources"]["Reservations"]["NanoCPUs"] == 250_000_000
            assert "node.role == manager" in template["Placement"]["Constraints"]
            env = template["ContainerSpec"]["Env"]
            assert any(e.startswith("PREVU_URL=") for e in env), env
        assert db["Labels"]["prevu.part"] == "keep"
        assert "prevu.part" not in web["Labels"] and web["Labels"]["prevu.host"] == host
        volume = db["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Source"]
        assert engine_api(lab.manager, f"/volumes/{volume}")["Labels"]["prevu.preview"] == preview
        value = fetch_db(lab, services["web"]["ID"])
        assert value.startswith("data-"), value
        db_id, web_id = services["db"]["ID"], services["web"]["ID"]
        node = engine_api(lab.manager, "/nodes")[0]["ID"]
        pinned = engine_api(lab.manager, f"/services/{db_id}")["Spec"]["TaskTemplate"]
        assert f"node.id=={node}" in pinned["Placement"]["Constraints"], "pinned to its volume"
        db_task = running_container(lab, db_id)

        # Push: the new web next to the old one, the route moves; db and its data stay.
        stop_file, out = tmp_path / "stop-load", tmp_path / "load.json"
        load = home.popen([sys.executable, "-I", "-c", LOAD, PROXY, host, str(stop_file), str(out)])
        time.sleep(1.0)
        sha2 = commit(repo, "two\n")
        api(home, "POST", "/api/previews", {**body, "sha": sha2})
        wait_served(home, host, "two\n", timeout=150)
        time.sleep(1.0)
        stop_file.write_text("")
        load.wait(30)
        load = None
        seen = json.loads(out.read_text())
        failed = [s for s in seen if s[0] != 200 or s[1] not in ("one\n", "two\n")]
        assert len(seen) > 20 and not failed, (len(seen), failed[:5])
        wait_status(home, preview, "running", prevu)
        deadline = time.monotonic() + 60
        while len(engine_api(lab.manager, "/services")) != 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        services = by_service(lab)
        assert services["db"]["ID"] == db_id, "the kept service is left running"
        assert services["web"]["ID"] != web_id, "a new revision's web, the old one removed"
        assert fetch_db(lab, services["web"]["ID"]) == value, "the data survived the push"
        assert running_container(lab, db_id) == db_task, "db's container was never restarted"
        print(f"compose push: {len(seen)} requests, none failed")

        # prevu restarted: the running services are adopted, nothing is built again.
        prevu.stop()
        before = engine_api(lab.manager, "/images/json")
        images = {i["Id"] for i in before}
        prevu.start()
        wait_served(home, host, "two\n", timeout=60)
        wait_status(home, preview, "running", prevu)
        time.sleep(4.0)  # a reconcile period (3 s) later: nothing replaced
        assert {n: s["ID"] for n, s in by_service(lab).items()} == {
            n: s["ID"] for n, s in services.items()
        }
        after = engine_api(lab.manager, "/images/json")
        # Nothing built (the old revision's image may be removed meanwhile: discarded).
        assert {i["Id"] for i in after} <= images, (before, after)
        wait_served(home, host, "two\n", timeout=10)

        # Close: nothing of this prevu left, its pushed images deleted from the registry.
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
        tags = lab.manager.http(f"http://{REGISTRY}/v2/prevu-{instance}/{preview}/tags/list")
        assert tags[0] == 200 and json.loads(tags[1])["tags"] in (None, []), tags
    finally:
        if load is not None:
            load.kill()
            load.wait(10)
        prevu.stop()
