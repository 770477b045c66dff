"""
A private Docker daemon in a network namespace of its own, for tests that must
stop, restart or break an engine (never the shared one).

`NetnsDockerd.create()` makes a namespace (`ip netns add`, loopback up) and a
short root directory; `start()` runs `dockerd` in it, `stop()`/`restart()` end
and start it again on the same data; `close()` leaves nothing (daemon, its
mounts, namespace, files). `command`/`popen`/`run` run other programs in the
namespace (prevu itself, so that it reaches the containers' addresses), and
`http` sends one HTTP request from inside it (to prevu's ports there).
The namespace itself is a `Netns`; a `Bridge` (a Linux bridge in a namespace
of its own) joins several namespaces over veth pairs, as a LAN of test hosts
(e.g. Swarm nodes, each a `NetnsDockerd` on the same bridge). Use addresses
of 198.18.0.0/15 (RFC 2544, for tests) there.

Facts this relies on, checked on this machine (Docker 20.10, cgroup v1):

- The namespace is entered with `nsenter --net=/run/netns/<name>`, never
  `ip netns exec`: the latter remounts /sys, hides the cgroups, and dockerd
  fails with "Devices cgroup isn't mounted".
- dockerd gets `--config-file` (an empty JSON object unless `daemon_config`
  says more): without it, the machine's /etc/docker/daemon.json points its
  `data-root` at the shared engine's. `--data-root`, `--exec-root`,
  `--pidfile` and the socket all live under `root`, so it starts its own
  containerd (under the exec root) and an empty image store.
- Unix socket paths are limited to 108 bytes: `root` is a short directory
  under /tmp, not pytest's long `tmp_path`.
- dockerd bind-mounts its data root onto itself and may leave that mount
  after it stops: `close()` unmounts whatever is mounted under `root`.
- A stop waits for each container's own stop timeout (Docker's default 10 s;
  `--shutdown-timeout`, 1 s here, does not shorten it): a container whose
  PID 1 ignores SIGTERM (busybox httpd) holds a stop for 10 s. Test images
  that must stop fast trap SIGTERM; `close()` removes the containers first.

Blocking (subprocess, sockets): the tests' own set-up, not prevu's code.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import define, field

CLIENT = """\
import json, sys, urllib.request, urllib.error
url, method, headers, body, timeout = json.loads(sys.argv[1])
request = urllib.request.Request(url, data=body.encode() if body is not None else None,
                                 method=method, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
        print(json.dumps([response.status, response.read().decode("utf-8", "replace")]))
except urllib.error.HTTPError as error:
    print(json.dumps([error.code, error.read().decode("utf-8", "replace")]))
except OSError as error:
    print(json.dumps([0, str(error)]))
"""
"""The one-request HTTP client `http` runs inside the namespace."""


def missing() -> list[str]:
    """What this machine lacks to run a Netns or NetnsDockerd (empty: nothing)."""
    lacking = []
    if os.geteuid() != 0:
        lacking.append("root (network namespaces and dockerd need it)")
    for tool in ("ip", "nsenter", "dockerd"):
        if shutil.which(tool) is None:
            lacking.append(f"the {tool} program")
    if not os.path.isdir("/sys/fs/cgroup"):
        lacking.append("cgroups at /sys/fs/cgroup")
    return lacking


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the daemon's unix socket (for `ping`)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


@define
class Netns:
    """A network namespace made for a test (`ip netns add`), loopback up."""

    name: str

    @classmethod
    def create(cls, prefix: str = "prevu-test") -> Netns:
        """A new namespace; raises when the machine can't make one."""
        lacking = missing()
        if lacking:
            raise RuntimeError("cannot make network namespaces here: no " + ", ".join(lacking))
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return cls(name)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def ip(self, *args: str) -> None:
        """`ip -n <name> args...`, raising with ip's message when it fails."""
        done = subprocess.run(["ip", "-n", self.name, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ip -n {self.name} {' '.join(args)}: {done.stderr.strip()}")

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (`nsenter --net`, never `ip netns exec`)."""
        return ["nsenter", f"--net={self.path}", *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` inside the namespace (kwargs as for subprocess.Popen)."""
        return subprocess.Popen(self.command(argv), **kwargs)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` inside the namespace to completion (kwargs as for subprocess.run)."""
        return subprocess.run(self.command(argv), check=False, **kwargs)

    def http(
        self,
        url: str,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, str]:
        """One HTTP request from inside the namespace: (status, body); status 0 when refused."""
        request = json.dumps([url, method, dict(headers or {}), body, timeout])
        done = self.run(
            [sys.executable, "-I", "-c", CLIENT, request],
            capture_output=True,
            text=True,
            timeout=timeout + 10,
        )
        if done.returncode != 0:
            raise RuntimeError(f"http client failed: {done.stderr[-2000:]}")
        status, text = json.loads(done.stdout)
        return int(status), str(text)

    def close(self) -> None:
        """Delete the namespace (its interfaces go with it)."""
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)


@define
class Bridge:
    """
    A Linux bridge `name` in a namespace of its own (`hub`) joining other
    namespaces over veth pairs: a LAN of test hosts. `attach` gives a
    namespace an interface on it with an address (CIDR, e.g. "198.18.0.2/24").
    """

    hub: Netns
    name: str = "br0"
    attached: int = 0

    @classmethod
    def create(cls, prefix: str = "prevu-lan") -> Bridge:
        hub = Netns.create(prefix)
        bridge = cls(hub)
        hub.ip("link", "add", bridge.name, "type", "bridge")
        hub.ip("link", "set", bridge.name, "up")
        return bridge

    def attach(self, netns: Netns, address: str, interface: str = "lan0") -> str:
        """Join `netns` to the bridge as `interface` with `address`; the interface's name."""
        self.attached += 1
        port, peer = f"port{self.attached}", f"peer{self.attached}"
        self.hub.ip("link", "add", port, "type", "veth", "peer", "name", peer)
        self.hub.ip("link", "set", peer, "netns", netns.name)
        self.hub.ip("link", "set", port, "master", self.name, "up")
        netns.ip("link", "set", peer, "name", interface)
        netns.ip("addr", "add", address, "dev", interface)
        netns.ip("link", "set", interface, "up")
        return interface

    def close(self) -> None:
        """Delete the hub namespace: the bridge and every veth pair go with it."""
        self.hub.close()


@define
class NetnsDockerd:
    """
    One dockerd in the network namespace `netns`, everything of it under
    `root`. `daemon_config` is its daemon.json (e.g. `insecure-registries`),
    `extra_args` more dockerd flags (e.g. `--bip`), `shutdown_timeout`
    seconds its containers get on a stop.
    """

    netns: Netns
    root: Path
    daemon_config: Mapping[str, Any] = field(factory=dict)
    extra_args: tuple[str, ...] = ()
    shutdown_timeout: int = 1
    dockerd: str = field(factory=lambda: shutil.which("dockerd") or "/usr/sbin/dockerd")
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, prefix: str = "prevu-test", **kwargs: Any) -> NetnsDockerd:
        """A new namespace (loopback up) and root directory; raises when the machine can't."""
        netns = Netns.create(prefix)
        return cls(netns, Path(tempfile.mkdtemp(prefix="pvd-", dir="/tmp")), **kwargs)

    # --- paths ---------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        """The daemon's address for DOCKER_HOST or `[docker] host`."""
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    # --- running things in the namespace ----------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace."""
        return self.netns.command(argv)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` inside the namespace (kwargs as for subprocess.Popen)."""
        return self.netns.popen(argv, **kwargs)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` inside the namespace to completion (kwargs as for subprocess.run)."""
        return self.netns.run(argv, **kwargs)

    def http(
        self,
        url: str,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, str]:
        """One HTTP request from inside the namespace (see `Netns.http`)."""
        return self.netns.http(url, method, headers, body, timeout)

    # --- the daemon -----------------------------------------------------------------

    def ping(self) -> bool:
        """True when the daemon answers `GET /_ping`."""
        connection = _UnixHTTPConnection(str(self.socket_path), timeout=2.0)
        try:
            connection.request("GET", "/_ping")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def start(self, timeout: float = 60.0) -> None:
        """Start dockerd and wait until it answers; raises with its log's tail otherwise."""
        config = self.root / "daemon.json"
        config.write_text(json.dumps(dict(self.daemon_config)))
        argv = [
            self.dockerd,
            "--config-file",
            str(config),
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.root / "dockerd.pid"),
            "--shutdown-timeout",
            str(self.shutdown_timeout),
            "-H",
            self.host,
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.process = self.popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={"PATH": os.environ["PATH"]}
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited: {self._tail()}")
            if self.ping():
                return
            time.sleep(0.1)
        raise RuntimeError(f"dockerd did not answer within {timeout:g}s: {self._tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        """Stop dockerd (SIGTERM: it stops its containers first), SIGKILL after `timeout`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop, then start again on the same data (what a daemon restart does)."""
        self.stop(timeout)
        self.start(timeout)

    def _api(self, method: str, path: str) -> Any:
        """One call of the daemon's API over its socket; the decoded JSON answer (or None)."""
        connection = _UnixHTTPConnection(str(self.socket_path), timeout=30.0)
        try:
            connection.request(method, path)
            body = connection.getresponse().read()
        finally:
            connection.close()
        return json.loads(body) if body.strip().startswith((b"[", b"{")) else None

    def remove_containers(self) -> None:
        """Remove every container of this daemon at once (a stop waits 10 s for each
        container that ignores SIGTERM: Docker's default stop timeout)."""
        if self.process is None or not self.ping():
            return
        for container in self._api("GET", "/containers/json?all=1") or ():
            self._api("DELETE", f"/containers/{container['Id']}?force=1&v=1")

    def close(self) -> None:
        """Remove the containers, stop the daemon, unmount what it left, delete the
        namespace and `root`."""
        with contextlib.suppress(OSError):  # the daemon is gone already: stop() does the rest
            self.remove_containers()
        self.stop()
        for mount in sorted(self._mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        self.netns.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _mounts(self) -> list[str]:
        root = str(self.root)
        found = []
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                point = line.split()[4]
                if point == root or point.startswith(root + "/"):
                    found.append(point)
        return found

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"
