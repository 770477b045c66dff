"""
prevu's own image (Dockerfile) built here and run with the Docker socket
mounted: a signed webhook through the containerized proxy deploys a preview
served by that proxy, a close removes everything; two prevu containers with
the same in-container `state_dir` on one engine keep apart.

The image is built `--build-arg BASE=prevu-base/python:3.11` (no registry is
reachable), made by the shared `base-image` tool when absent. Only the proxy
port is published, on 127.0.0.1; the control app stays on loopback inside
each container and is reached through the proxy under `public_url`'s host.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prevu import labels as lb
from prevu.forge.github import sign
from prevu.instance import legacy_id
from tests.support.docker import BUSYBOX, HTTPD_DOCKERFILE, TEST_SESSION, remove_test_objects
from tests.support.git_repos import ForgeRepo, git

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BASE = "prevu-base/python:3.11"
FIXTURES = ROOT.parent / "shared" / "fixtures"
if not FIXTURES.exists():
    FIXTURES = Path("/work/shared/fixtures")
LABELS = {"prevu.test": "true", "prevu.test.session": TEST_SESSION}
SECRET = "image-test-secret"
REPO = "Codertocat/Hello-World"
DOMAIN = "test.localhost"
PUBLIC_HOST = f"prevu.{DOMAIN}"
PREVU_UID = 10001

CONFIG = """\
[server]
domain = "{domain}"
http = "tcp:8000"
control = "tcp:8001:interface=127.0.0.1"
public_url = "http://{public_host}"
state_dir = "/var/lib/prevu"

[github]
webhook_secret = "{secret}"

[[repos]]
name = "{repo}"
access = "public"

[docker]
network = "{network}"
self_container = "auto"
memory = "64m"
cpus = 0.5
pids = 64
reconcile_interval = "1s"
"""


def base_image_tool() -> Path:
    """`../shared/tools/base-image` next to the clone (CI), or the shared copy here."""
    for candidate in (
        ROOT.parent / "shared" / "tools" / "base-image",
        Path("/work/shared/tools/base-image"),
    ):
        if candidate.exists():
            return candidate
    raise AssertionError("no shared/tools/base-image to build prevu-base/python:3.11 with")


def until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` at `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def prevu_image(docker_client: Any) -> Iterator[str]:
    """prevu's image built from this checkout on the local base; removed afterwards."""
    import docker.errors

    try:
        docker_client.api.inspect_image(BASE)
    except docker.errors.ImageNotFound:
        subprocess.run([str(base_image_tool()), "python"], check=True, timeout=900)
    tag = f"prevu-test/prevu:{TEST_SESSION}"
    output: list[str] = []
    started = time.monotonic()
    try:
        for chunk in docker_client.api.build(
            path=str(ROOT),
            tag=tag,
            buildargs={"BASE": BASE},
            labels=LABELS,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        ):
            output.append(str(chunk.get("stream") or chunk.get("status") or ""))
            if "error" in chunk:
                raise AssertionError(f"build failed: {chunk['error']}\n{''.join(output)[-3000:]}")
        print(f"prevu image built in {time.monotonic() - started:.1f}s")
        yield tag
    finally:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.api.remove_image(tag, force=True)


class Forge:
    """A local bare repository with pull request heads, readable by the prevu user."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = ForgeRepo.create(root, "hello-world")

    def push(self, number: int, index: str) -> str:
        """Publish a busybox httpd site serving `index` as pull request `number`."""
        git("checkout", "--quiet", "-B", f"pr-{number}", "main", cwd=self.repo.work)
        shutil.copy(BUSYBOX, self.repo.work / "busybox")
        (self.repo.work / "busybox").chmod(0o755)
        git("add", "busybox", cwd=self.repo.work)
        return self.repo.push_pull(
            number, {"Dockerfile": HTTPD_DOCKERFILE, "www/index.html": index}
        )

    def hand_over(self) -> None:
        """Give the bare repository to the prevu user (git refuses other owners' repositories);
        nothing is pushed to it afterwards."""
        for path in [self.root, self.repo.bare, *self.repo.bare.rglob("*")]:
            os.lchown(path, PREVU_UID, PREVU_UID)

    def payload(self, action: str, number: int, sha: str) -> bytes:
        data = json.loads((FIXTURES / "github" / f"pull_request-{action}.json").read_text())
        data["number"] = number
        data["pull_request"]["number"] = number
        data["pull_request"]["head"]["sha"] = sha
        data["pull_request"]["base"]["repo"]["clone_url"] = self.repo.url
        return json.dumps(data).encode()


def request(
    port: int,
    host: str,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One HTTP request to 127.0.0.1:`port` with `Host: host`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class PrevuContainer:
    """One prevu container on the image: socket mounted, its group added, proxy on loopback."""

    def __init__(self, client: Any, image: str, config: Path, forge: Forge, name: str) -> None:
        socket_gid = os.stat("/var/run/docker.sock").st_gid
        self.client = client
        self.container = client.containers.run(
            image,
            name=name,
            detach=True,
            labels=LABELS,
            group_add=[str(socket_gid)],
            volumes={
                "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                str(config): {"bind": "/etc/prevu/prevu.toml", "mode": "ro"},
                str(forge.root): {"bind": str(forge.root), "mode": "ro"},
            },
            ports={"8000/tcp": ("127.0.0.1", None)},
        )
        self.deliveries = 0

    @property
    def port(self) -> int:
        self.container.reload()
        bindings = self.container.attrs["NetworkSettings"]["Ports"].get("8000/tcp") or []
        return int(bindings[0]["HostPort"]) if bindings else 0

    def exec(self, *command: str) -> str:
        code, output = self.container.exec_run(list(command))
        assert code == 0, output
        return str(output.decode().strip())

    def ready(self) -> None:
        """The control app answers through the proxy under public_url's host."""

        def answers() -> bool:
            with contextlib.suppress(OSError, http.client.HTTPException):
                return self.port > 0 and request(self.port, PUBLIC_HOST, path="/healthz")[0] == 200
            return False

        until(f"prevu in {self.container.name} to answer", answers, 60)

    def deliver(self, action: str, body: bytes) -> tuple[int, bytes]:
        self.deliveries += 1
        headers = {
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": f"{self.container.name}-{self.deliveries}",
            "X-Hub-Signature-256": sign(SECRET, body),
            "Content-Type": "application/json",
        }
        return request(self.port, PUBLIC_HOST, "POST", "/webhooks/github", body, headers)

    def serves(self, host: str, content: bytes) -> bool:
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, body = request(self.port, host)
            return status == 200 and content in body
        return False

    def logs(self) -> str:
        return str(self.container.logs(tail=60).decode("utf-8", "replace"))


def objects_of(client: Any, instance: str) -> list[str]:
    """Containers, networks and images labelled with `instance`."""
    wanted = {"label": f"{lb.INSTANCE}={instance}"}
    api = client.api
    found = [f"container {c['Names'][0]}" for c in api.containers(all=True, filters=wanted)]
    found += [f"network {n['Name']}" for n in api.networks(filters=wanted)]
    found += [f"image {i['Id'][:19]}" for i in api.images(filters=wanted)]
    return found


def test_the_image_serves_previews_as_non_root_and_two_containers_stay_apart(
    docker_client: Any, prevu_image: str, tmp_path: Path
) -> None:
    """Webhook -> served through the containerized proxy -> closed -> nothing left, for two
    prevu containers both keeping state in /var/lib/prevu, while each reconciles every second."""
    forge = Forge(tmp_path / "forge")
    network = f"prevu-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "prevu.toml"
    config.write_text(
        CONFIG.format(
            domain=DOMAIN, public_host=PUBLIC_HOST, secret=SECRET, repo=REPO, network=network
        )
    )
    config.chmod(0o644)
    names = [f"prevu-test-image-{uuid.uuid4().hex[:8]}-{side}" for side in "ab"]
    prevus: list[PrevuContainer] = []
    instances: list[str] = []
    try:
        for name in names:
            prevus.append(PrevuContainer(docker_client, prevu_image, config, forge, name))
        a, b = prevus
        for prevu in prevus:
            prevu.ready()
            # non-root, in the socket's group only through --group-add
            assert prevu.exec("id", "-u") == str(PREVU_UID)
            groups = prevu.exec("id", "-G").split()
            assert str(os.stat("/var/run/docker.sock").st_gid) in groups
            instances.append(prevu.exec("cat", "/var/lib/prevu/instance"))
            assert f"prevu instance {instances[-1]}" in prevu.logs()
            # only the proxy is published, on loopback
            prevu.container.reload()
            published = prevu.container.attrs["NetworkSettings"]["Ports"]
            assert [(p, [x["HostIp"] for x in v]) for p, v in published.items() if v] == [
                ("8000/tcp", ["127.0.0.1"])
            ]
        assert instances[0] != instances[1], "same state_dir path, yet one identity"
        assert legacy_id("/var/lib/prevu") not in instances

        sha1 = forge.push(1, "one from a\n")
        sha2 = forge.push(2, "two from b\n")
        forge.hand_over()
        assert a.deliver("opened", forge.payload("opened", 1, sha1))[0] == 202
        assert b.deliver("opened", forge.payload("opened", 2, sha2))[0] == 202
        host1, host2 = f"pr-1-hello-world.{DOMAIN}", f"pr-2-hello-world.{DOMAIN}"
        until("a to serve pr 1", lambda: a.serves(host1, b"one from a"), 90)
        until("b to serve pr 2", lambda: b.serves(host2, b"two from b"), 90)

        # Several reconciles of each (every 1s) and a restart of a: with the path-hash id
        # each would take the other's preview for its own orphan and remove it.
        time.sleep(3)
        a.container.restart(timeout=10)
        a.ready()
        until("a to serve pr 1 again", lambda: a.serves(host1, b"one from a"), 30)
        time.sleep(2)
        assert a.exec("cat", "/var/lib/prevu/instance") == instances[0]
        assert b.serves(host2, b"two from b"), b.logs()
        assert a.serves(host1, b"one from a"), a.logs()
        assert not a.serves(host2, b"two from b") and not b.serves(host1, b"one from a")
        ours = [objects_of(docker_client, instance) for instance in instances]
        assert all(any(o.startswith("container ") for o in found) for found in ours), ours

        assert a.deliver("closed", forge.payload("closed", 1, sha1))[0] == 202
        assert b.deliver("closed", forge.payload("closed", 2, sha2))[0] == 202
        for prevu, instance, host in ((a, instances[0], host1), (b, instances[1], host2)):
            until(
                f"{instance} to leave nothing",
                lambda i=instance: not objects_of(docker_client, i),
                60,
            )
            assert not prevu.serves(host, b"from"), prevu.logs()
        leftover = [
            n["Name"] for n in docker_client.api.networks() if n["Name"].startswith(network)
        ]
        assert leftover == []
    finally:
        for prevu in prevus:
            with contextlib.suppress(Exception):
                prevu.container.remove(force=True, v=True)
        for instance in instances:
            remove_test_objects(docker_client, {"label": f"{lb.INSTANCE}={instance}"})
