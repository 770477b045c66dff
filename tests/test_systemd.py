"""
contrib/systemd/prevu.service, tried without systemd as PID 1: `systemd-analyze
verify` loads it (ExecStart at an installed twistd), its offline security
exposure is the one docs/deploy.md quotes, and its ExecStart run under
`setpriv` with the unit's user, groups and ambient capability binds port 80
(on 127.0.0.1) and reaches the Docker socket; without the capability or the
docker group it does neither.
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.prevu_process import free_port

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "contrib" / "systemd" / "prevu.service"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
INSTALLED_TWISTD = "/opt/prevu/bin/twistd"
INSTALLED_CONFIG = "/etc/prevu/prevu.toml"
FALLBACK_UID = 10001
"""The unit's `User=prevu` when this machine has no such user (numeric ids need none)."""
TOKEN = "systemd-test-token"


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file, every value of each key in order (sections merged)."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key) or []
    assert len(values) == 1, f"{key}= should be set once in {UNIT.name}, got {values}"
    return values[0]


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    """
    An "installed" prevu the unit's user can run: a venv made by the system Python
    (this checkout's own interpreter may sit in a directory other users cannot
    enter) that sees the test environment's site-packages, where `pip install .`
    put prevu, and its `twistd` script. World-readable, under /tmp.
    """
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    assert system_python, "no system python3 (apt-get install python3-venv)"
    version = subprocess.run(
        [system_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == "{}.{}".format(*sys.version_info[:2]), f"system python is {version}"
    root = Path(tempfile.mkdtemp(prefix="prevu-systemd-test-", dir="/tmp"))
    try:
        root.chmod(0o755)
        venv = root / "opt-prevu"
        subprocess.run([system_python, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
        (site / "prevu-test-environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
        source = Path(sys.executable).parent / "twistd"
        script = source.read_text().splitlines(keepends=True)
        (venv / "bin" / "twistd").write_text(f"#!{venv}/bin/python\n" + "".join(script[1:]))
        (venv / "bin" / "twistd").chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def with_installed_twistd(root: Path, unit: Path = UNIT) -> Path:
    """The unit, its ExecStart pointing at the twistd under `root`, as `root/prevu.service`."""
    copy = root / "prevu.service"
    copy.write_text(unit.read_text().replace(INSTALLED_TWISTD, str(root / "opt-prevu/bin/twistd")))
    return copy


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = shutil.which("systemd-analyze")
    assert command, "no systemd-analyze (apt-get install systemd)"
    return subprocess.run(
        [command, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_systemd_analyze_verify_passes_with_execstart_at_an_installed_twistd(
    installed: Path,
) -> None:
    """`systemd-analyze verify` says nothing about the unit; a missing binary it refuses."""
    assert one(unit_settings(), "ExecStart").startswith(INSTALLED_TWISTD + " ")
    result = analyze("verify", str(with_installed_twistd(installed)), cwd=installed)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    broken = installed / "broken"
    broken.mkdir()
    copy = broken / "prevu.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_TWISTD, str(broken / "no-twistd")))
    refused = analyze("verify", str(copy), cwd=broken)
    assert refused.returncode != 0
    assert "is not executable" in refused.stdout + refused.stderr


def test_the_exposure_score_quoted_in_the_docs_is_the_measured_one(installed: Path) -> None:
    """`systemd-analyze security --offline=true`: the score docs/deploy.md quotes, <= 2.0."""
    unit = with_installed_twistd(installed)
    result = analyze("security", "--offline=true", "--no-pager", str(unit), cwd=installed)
    output = result.stdout + result.stderr
    measured = re.search(r"Overall exposure level for prevu\.service: ([0-9.]+)", output)
    assert measured, output
    quoted = re.search(r"exposure level[^0-9]*([0-9.]+)", DEPLOY_DOC.read_text())
    assert quoted, "docs/deploy.md quotes no exposure level"
    assert quoted.group(1) == measured.group(1)
    assert float(measured.group(1)) <= 2.0


def setpriv_command(settings: dict[str, list[str]], *, groups: bool, caps: bool) -> list[str]:
    """setpriv arguments for the unit's User=, Group=, SupplementaryGroups=, capabilities."""
    user = one(settings, "User")
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        uid = FALLBACK_UID
    try:
        gid = grp.getgrnam(one(settings, "Group")).gr_gid
    except KeyError:
        gid = FALLBACK_UID
    supplementary = (
        [grp.getgrnam(name).gr_gid for name in one(settings, "SupplementaryGroups").split()]
        if groups
        else []
    )
    ambient = [c.lower().removeprefix("cap_") for c in one(settings, "AmbientCapabilities").split()]
    bounding = one(settings, "CapabilityBoundingSet").split()
    assert [c.lower().removeprefix("cap_") for c in bounding] == ambient
    wanted = ",".join(["-all", *(f"+{c}" for c in ambient)]) if caps else "-all"
    command = [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        f"--groups={','.join(map(str, supplementary))}" if supplementary else "--clear-groups",
        f"--inh-caps={wanted}",
        f"--ambient-caps={wanted}",
        f"--bounding-set={wanted}",
    ]
    if one(settings, "NoNewPrivileges") == "yes":
        command.append("--no-new-privs")
    return command


class UnitProcess:
    """The unit's ExecStart under setpriv, with a config binding 127.0.0.1:80."""

    def __init__(self, root: Path, *, groups: bool = True, caps: bool = True) -> None:
        settings = unit_settings()
        self.state = root / f"state-{int(groups)}{int(caps)}"
        self.state.mkdir()
        uid_gid = setpriv_command(settings, groups=groups, caps=caps)[1:3]
        uid, gid = (int(arg.split("=")[1]) for arg in uid_gid)
        os.chown(self.state, uid, gid)
        self.control = free_port()
        config = root / f"prevu-{int(groups)}{int(caps)}.toml"
        config.write_text(
            "[server]\n"
            'http = "tcp:80:interface=127.0.0.1"\n'
            f'control = "tcp:{self.control}:interface=127.0.0.1"\n'
            'public_url = "http://prevu.localhost"\n'
            f'state_dir = "{self.state}"\n'
            f'api_token = "{TOKEN}"\n'
            "[docker]\n"
            'self_container = "none"\n'
        )
        config.chmod(0o644)
        exec_start = shlex.split(one(settings, "ExecStart"))
        exec_start = [
            str(root / "opt-prevu/bin/twistd") if arg == INSTALLED_TWISTD else arg
            for arg in exec_start
        ]
        exec_start = [str(config) if arg == INSTALLED_CONFIG else arg for arg in exec_start]
        environment = dict(line.split("=", 1) for line in settings.get("Environment", []))
        environment = {
            k: v.replace("/var/lib/prevu", str(self.state)) for k, v in environment.items()
        }
        self.log = root / f"twistd-{int(groups)}{int(caps)}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*setpriv_command(settings, groups=groups, caps=caps), "--", *exec_start],
                cwd=self.state,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **environment},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", 80, timeout=5)
        try:
            connection.request("GET", path, headers={"Host": "prevu.localhost", **(headers or {})})
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def reconciles(self, result: str) -> float:
        """prevu_reconciles_total{result=...} read through the proxy on port 80."""
        status, text = self.get("/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, text
        pattern = 'prevu_reconciles_total{result="' + result + '"} '
        line = next((x for x in text.splitlines() if x.startswith(pattern)), None)
        return float(line.split()[-1]) if line else 0.0

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prevu exited: {self.output()[-3000:]}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 80), 0.2):
                return
            time.sleep(0.1)
        raise AssertionError(f"nothing listens on 127.0.0.1:80: {self.output()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def port_80_is_free() -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 80))
        except OSError:
            return False
    return True


def uid(process: UnitProcess) -> str:
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return " ".join(fields[k].split()[0] for k in ("Uid", "Gid")) + " | " + fields["Groups"].strip()


@pytest.mark.docker
@pytest.mark.slow
def test_execstart_under_the_units_user_groups_and_capability_binds_80_and_reaches_docker(
    installed: Path,
) -> None:
    """As the unit's user with only the docker group and CAP_NET_BIND_SERVICE: port 80 on
    127.0.0.1 answers and the first reconcile lists Docker through the socket."""
    assert os.geteuid() == 0, "setpriv needs root to take the unit's user"
    assert port_80_is_free(), "something else listens on 127.0.0.1:80"
    settings = unit_settings()
    docker_gid = grp.getgrnam(one(settings, "SupplementaryGroups")).gr_gid
    assert os.stat("/var/run/docker.sock").st_gid == docker_gid, "the socket's group differs"

    prevu = UnitProcess(installed)
    try:
        prevu.wait_listening()
        ids = uid(prevu)
        assert ids.split(" | ")[1] == str(docker_gid), ids
        assert ids.split(" | ")[0].split()[0] != "0", ids
        capabilities = Path(f"/proc/{prevu.process.pid}/status").read_text()
        ambient = re.search(r"CapAmb:\s*([0-9a-f]+)", capabilities)
        assert ambient and int(ambient.group(1), 16) == 1 << 10, "only CAP_NET_BIND_SERVICE"
        assert prevu.get("/healthz")[0] == 200
        deadline = time.monotonic() + 30
        while prevu.reconciles("ok") < 1:
            assert time.monotonic() < deadline, prevu.output()[-3000:]
            time.sleep(0.2)
        assert prevu.reconciles("docker-error") == 0
    finally:
        prevu.stop()

    # The same without the docker group: start-up finds no builder it may use and
    # stops with one line (before BuildKit builds, it came up and Docker refused it).
    no_group = UnitProcess(installed, groups=False)
    try:
        deadline = time.monotonic() + 30
        while no_group.process.poll() is None:
            assert time.monotonic() < deadline, no_group.output()[-3000:]
            time.sleep(0.2)
        assert no_group.process.returncode != 0
        assert "no Docker client builds with BuildKit" in no_group.output()
        assert port_80_is_free()
    finally:
        no_group.stop()

    # And without the capability: port 80 is refused and start-up stops with the one line
    # naming the key and the reason (before the start-up work it kept running with the
    # control port alone, which is what a service manager cannot see as a failure).
    no_caps = UnitProcess(installed, caps=False)
    try:
        deadline = time.monotonic() + 30
        while no_caps.process.poll() is None:
            assert time.monotonic() < deadline, no_caps.output()[-3000:]
            time.sleep(0.2)
        output = no_caps.output()
        assert no_caps.process.returncode == 1, output[-3000:]
        lines = [line for line in output.splitlines() if "cannot listen" in line]
        expected = (
            "prevu: cannot listen on port 80 (server.http = 'tcp:80:interface=127.0.0.1'): "
            "Permission denied"
        )
        assert len(lines) == 1 and lines[0].endswith(expected), output[-3000:]
        assert "Traceback" not in output and "Unhandled Error" not in output, output[-3000:]
        assert port_80_is_free()
    finally:
        no_caps.stop()
