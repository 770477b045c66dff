"""
A swarm of private test engines (issue 19), never the shared engine.

`SwarmLab.create()` makes a LAN (`Bridge`), a manager (`NetnsDockerd` at
198.18.0.2, `--insecure-registry` for the lab's registry, an empty image
store), Debian's `docker-registry` listening on the manager namespace's
veth address (198.18.0.2:5000, storage under the lab's root), and a swarm
(`docker swarm init --advertise-addr 198.18.0.2`). `add_worker()` joins
another engine (198.18.0.3, ...) as a worker. `home()` runs prevu's "home"
container on the manager (FROM scratch + static busybox, built in the
private engine) and names its network namespace (`ip netns attach`):
prevu runs as a host process in that namespace with
`[docker] self_container` naming the container, so that it joins each
preview's overlay network like prevu in its own container would (what
differs: prevu's files are the host's, not an image's).
`close()` leaves nothing: containers, swarm, registry, daemons, namespaces.

Blocking (subprocess, sockets): the tests' own set-up, not prevu's code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from attrs import define, field

from tests.support.docker import BUSYBOX
from tests.support.netns_dockerd import Bridge, Netns, NetnsDockerd

MANAGER = "198.18.0.2"
REGISTRY = f"{MANAGER}:5000"
REGISTRY_BIN = "/usr/bin/docker-registry"
HOME_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
CMD ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while true; do /bin/busybox sleep 0.2; done"]
"""


def docker_cli(engine: NetnsDockerd, *args: str, check: bool = True) -> str:
    """`docker args...` against `engine` (the CLI talks to its socket); stdout."""
    env = {"PATH": os.environ["PATH"], "DOCKER_HOST": engine.host, "HOME": str(engine.root)}
    done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def engine_api(engine: NetnsDockerd, path: str) -> Any:
    """GET `path` of `engine`'s API: the decoded JSON."""
    return engine._api("GET", path)


@define
class SwarmLab:
    """A LAN, a manager engine with a registry, workers; see the module docstring."""

    bridge: Bridge
    manager: NetnsDockerd
    root: Path
    workers: list[NetnsDockerd] = field(factory=list)
    registry: subprocess.Popen[bytes] | None = None
    home_netns: Netns | None = None
    tag: str = field(factory=lambda: uuid.uuid4().hex[:8])

    @classmethod
    def create(cls) -> SwarmLab:
        if shutil.which(REGISTRY_BIN) is None:
            raise RuntimeError("install Debian's docker-registry (apt-get install docker-registry)")
        bridge = Bridge.create("pvsw-lan")
        manager = NetnsDockerd.create("pvsw-mgr", daemon_config={"insecure-registries": [REGISTRY]})
        lab = cls(bridge, manager, Path(tempfile.mkdtemp(prefix="pvsw-", dir="/tmp")))
        try:
            bridge.attach(manager.netns, f"{MANAGER}/24")
            manager.start()
            lab._start_registry()
            docker_cli(manager, "swarm", "init", "--advertise-addr", MANAGER)
        except BaseException:
            lab.close()
            raise
        return lab

    def _start_registry(self) -> None:
        storage = self.root / "registry"
        storage.mkdir()
        config = self.root / "registry.yml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "version": 0.1,
                    "log": {"level": "warn"},
                    "storage": {
                        "filesystem": {"rootdirectory": str(storage)},
                        "delete": {"enabled": True},
                    },
                    "http": {"addr": REGISTRY},
                }
            )
        )
        with open(self.root / "registry.log", "ab") as log:
            self.registry = self.manager.popen(
                [REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while self.manager.http(f"http://{REGISTRY}/v2/", timeout=1.0)[0] != 200:
            if self.registry.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.root / "registry.log").read_text()[-2000:])
            time.sleep(0.2)

    def add_worker(self) -> NetnsDockerd:
        """A new engine on the LAN, joined to the swarm as a worker."""
        address = f"198.18.0.{3 + len(self.workers)}"
        worker = NetnsDockerd.create("pvsw-wrk", daemon_config={"insecure-registries": [REGISTRY]})
        self.workers.append(worker)
        self.bridge.attach(worker.netns, f"{address}/24")
        worker.start()
        token = docker_cli(self.manager, "swarm", "join-token", "-q", "worker")
        docker_cli(
            worker,
            "swarm",
            "join",
            "--token",
            token,
            "--advertise-addr",
            address,
            f"{MANAGER}:2377",
        )
        return worker

    def home(self, name: str = "prevu-home") -> Netns:
        """prevu's container on the manager (see the module docstring): its namespace."""
        context = self.root / "home"
        context.mkdir()
        shutil.copy(BUSYBOX, context / "busybox")
        (context / "Dockerfile").write_text(HOME_DOCKERFILE)
        docker_cli(self.manager, "build", "-q", "-t", "prevu-test-home:1", str(context))
        docker_cli(
            self.manager,
            "run",
            "-d",
            "--name",
            name,
            "--label",
            "prevu.test=true",
            "prevu-test-home:1",
        )
        pid = docker_cli(self.manager, "inspect", "-f", "{{.State.Pid}}", name)
        netns = Netns(f"pvsw-home-{self.tag}")
        subprocess.run(["ip", "netns", "attach", netns.name, pid], check=True)
        self.home_netns = netns
        return netns

    def close(self) -> None:
        """Leave nothing: the home namespace's name, swarm, registry, engines, LAN, files."""
        if self.home_netns is not None:
            self.home_netns.close()
        for worker in self.workers:
            with contextlib.suppress(Exception):
                docker_cli(worker, "swarm", "leave", "--force", check=False)
            worker.close()
        with contextlib.suppress(Exception):
            docker_cli(self.manager, "swarm", "leave", "--force", check=False)
        if self.registry is not None:
            self.registry.kill()
            self.registry.wait(10)
        self.manager.close()
        self.bridge.close()
        shutil.rmtree(self.root, ignore_errors=True)
