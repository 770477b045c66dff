"""Run `twistd -n prevu` as a real subprocess on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def twistd() -> str:
    return os.path.join(os.path.dirname(sys.executable), "twistd")


def run_twistd(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run twistd to completion (for start-up failures)."""
    return subprocess.run(
        [twistd(), "--pidfile=", *args],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class PrevuProcess:
    """`twistd -n prevu --config <file>` started from a config text with {http}/{control} ports."""

    def __init__(self, tmp: Path, config: str) -> None:
        self.http_port = free_port()
        self.control_port = free_port()
        self.tmp = tmp
        self.config_path = tmp / "prevu.toml"
        self.config_path.write_text(
            config.format(http=self.http_port, control=self.control_port, state=tmp / "state")
        )
        self.log_path = tmp / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 20.0) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [twistd(), "--pidfile=", "-n", "prevu", "--config", str(self.config_path)],
                cwd=self.tmp,
                env=environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prevu exited: {self.log_path.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"prevu did not listen: {self.log_path.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss(self) -> int:
        """Resident memory of the prevu process, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> str:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.log_path.read_text()
