#!/usr/bin/env python3
"""
Benchmark prevu's proxy against nginx (1 worker) in one run, on 127.0.0.1 only.

What it does, stopping by itself (every child has a deadline and is killed by PID):

1. starts an nginx *upstream* serving a 100-byte and a 64 KiB file with keep-alive;
2. starts the *reference proxy*: nginx, `worker_processes 1`, routing Host `app.test`
   to that upstream through a keep-alive pool;
3. starts *prevu*: `twistd -n prevu --config prevu.toml` with one `[[routes]]` entry
   for the same Host and upstream;
4. for each size, runs `wrk --latency` against both proxies (a warm-up first), and
   reads each proxy's CPU time (utime+stime of its processes, from /proc) around
   the measured run;
5. prints req/s, p50, p99 and CPU µs per request for both, with prevu/nginx ratios;
6. measures prevu's idle RSS with 1,000 routes (after start-up and one request);
7. with `--profile`, runs prevu under cProfile for the small response and prints the
   top functions by own time.

Needs the Debian packages `wrk` and `nginx-light` (or `nginx`); see bench/README.md.
Run it with the project's venv: `.venv/bin/python bench/proxy.py [--quick]`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HOST = "app.test"
SIZES = {"100 B": ("small.bin", 100), "64 KiB": ("large.bin", 64 * 1024)}
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_SMALL_US = 25.0
LIMIT_SMALL_US = 45.0
TARGET_RSS_MB = 45.0


class BenchError(Exception):
    """The benchmark cannot produce trustworthy numbers (a tool is missing, a check failed)."""


# --- processes ---------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(
    name: str, port: int, process: subprocess.Popen[bytes], log: Path, seconds: float
) -> None:
    """Return once 127.0.0.1:port accepts connections; fail if the process exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited ({process.returncode}):\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on {port} within {seconds}s:\n{tail(log)}")


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (nginx workers of a master)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) comes after the parenthesised command name, which may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the given processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / TICKS


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


@dataclass
class Child:
    """A process this script started; stopped by its own PID (and its recorded children)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int
    pids: list[int] = field(default_factory=list)

    def measured_pids(self) -> list[int]:
        """The process and its children now (nginx forks its workers after it listens)."""
        return [self.process.pid, *children_of(self.process.pid)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.pids = children_of(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pid in self.pids:  # nginx workers outliving a killed master
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"nginx: worker"):
                    os.kill(pid, signal.SIGKILL)


class Processes:
    """Every child process of the run, stopped in reverse order of start."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        command: list[str],
        log: Path,
        port: int,
        cwd: Path,
        env: dict[str, str] | None = None,
        wait: float = 30.0,
    ) -> Child:
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        child = Child(name, process, log, port)
        self.children.append(child)
        wait_listening(name, port, process, log, wait)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        self.children.remove(child)

    def stop_all(self) -> None:
        while self.children:
            self.stop(self.children[-1])


# --- nginx -------------------------------------------------------------------

NGINX_MAIN = """\
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{body}
}}
"""

UPSTREAM_BODY = """\
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        location / {{ }}
    }}
"""

REFERENCE_BODY = """\
    upstream app_upstream {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} default_server backlog=4096;
        server_name _;
        return 404;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name {host};
        location / {{
            proxy_pass http://app_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_max_temp_file_size 0;
        }}
    }}
"""


def start_nginx(
    processes: Processes, nginx: str, prefix: Path, name: str, workers: int, body: str, port: int
) -> Child:
    """nginx as our own child: own prefix and config, in the foreground (`daemon off`)."""
    prefix.mkdir(mode=0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(workers=workers, prefix=prefix, body=body))
    command = [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
    return processes.start(name, command, prefix / "stdout.log", port, prefix)


# --- prevu -------------------------------------------------------------------

PREVU_CONFIG = """\
[server]
http = "tcp:{http}:interface=127.0.0.1"
control = "tcp:{control}:interface=127.0.0.1"
state_dir = "{state}"
"""

ROUTE = """
[[routes]]
host = "{host}"
upstream = "http://127.0.0.1:{upstream}"
access = "public"
"""


def prevu_environment(source: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(source) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_prevu(
    processes: Processes,
    args: argparse.Namespace,
    directory: Path,
    name: str,
    hosts: list[str],
    upstream: int,
    profile: Path | None = None,
) -> Child:
    """`twistd -n --pidfile= prevu --config <dir>/prevu.toml`, optionally under cProfile."""
    directory.mkdir()
    http_port, control_port = free_port(), free_port()
    text = PREVU_CONFIG.format(http=http_port, control=control_port, state=directory / "state")
    text += "".join(ROUTE.format(host=host, upstream=upstream) for host in hosts)
    config = directory / "prevu.toml"
    config.write_text(text)
    command = [args.twistd, "--pidfile=", "-n"]
    if args.reactor:
        command.append(f"--reactor={args.reactor}")
    if profile is not None:
        command += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
    command += ["prevu", "--config", str(config)]
    return processes.start(
        name,
        command,
        directory / "twistd.log",
        http_port,
        directory,
        env=prevu_environment(args.source),
    )


# --- measuring ---------------------------------------------------------------


def fetch(port: int, path: str, host: str = HOST) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def robots_tag(port: int, host: str = HOST) -> str:
    """The X-Robots-Tag of a response through the proxy at `port` ("none" without one)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/" + SIZES["100 B"][0], headers={"Host": host})
        response = connection.getresponse()
        response.read()
        return response.getheader("X-Robots-Tag") or "none"
    finally:
        connection.close()


def check_serves(child: Child, host: str = HOST) -> None:
    """Each size comes back whole through `child`: a wrong answer would make the numbers lie."""
    for path, size in SIZES.values():
        status, body = fetch(child.port, "/" + path, host)
        if status != 200 or len(body) != size:
            raise BenchError(
                f"{child.name}: GET /{path} gave {status} with {len(body)} bytes, "
                f"expected 200 with {size}:\n{tail(child.log)}"
            )


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str
    non_2xx: int


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """The figures of `wrk --latency` output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if not (done and rps and p50 and p99):
        raise BenchError(f"cannot parse wrk output:\n{output}")
    errors = re.search(r"Socket errors: (.*)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=to_ms(done.group(2) + done.group(3)) / 1000,
        rps=float(rps.group(1)),
        p50_ms=to_ms(p50.group(1)),
        p99_ms=to_ms(p99.group(1)),
        errors=errors.group(1) if errors else "",
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(args: argparse.Namespace, port: int, path: str, seconds: float) -> WrkResult:
    command = [
        args.wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "-H",
        f"Host: {HOST}",
        "--latency",
        f"http://127.0.0.1:{port}/{path}",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr}{result.stdout}")
    return parse_wrk(result.stdout)


@dataclass
class Measure:
    proxy: str
    size: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    requests: int
    cpu_seconds: float
    errors: str
    non_2xx: int
    cpu_us_all_runs: list[float] = field(default_factory=list)


def best_of(runs: list[Measure]) -> Measure:
    """The run with the least CPU per request: the one least disturbed by other jobs."""
    best = min(runs, key=lambda m: m.cpu_us_per_request)
    best.cpu_us_all_runs = [m.cpu_us_per_request for m in runs]
    best.errors = "; ".join(m.errors for m in runs if m.errors)
    best.non_2xx = sum(m.non_2xx for m in runs)
    return best


def measure(args: argparse.Namespace, child: Child, size: str) -> Measure:
    """Warm up, then one wrk run with the proxy's CPU time read around it."""
    path = SIZES[size][0]
    if args.warmup > 0:
        run_wrk(args, child.port, path, args.warmup)
    pids = child.measured_pids()
    before = cpu_seconds(pids)
    result = run_wrk(args, child.port, path, args.duration)
    used = cpu_seconds(pids) - before
    if result.requests == 0:
        raise BenchError(f"wrk completed no request through {child.name}")
    return Measure(
        proxy=child.name,
        size=size,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_us_per_request=used / result.requests * 1e6,
        requests=result.requests,
        cpu_seconds=used,
        errors=result.errors,
        non_2xx=result.non_2xx,
    )


def idle_rss(
    processes: Processes, args: argparse.Namespace, tmp: Path, upstream: int
) -> dict[str, Any]:
    """prevu's VmRSS with N routes, after start-up and one proxied request."""
    hosts = [f"r{index:04d}.{HOST}" for index in range(args.routes)]
    child = start_prevu(processes, args, tmp / "prevu-rss", "prevu-rss", hosts, upstream)
    try:
        check_serves(child, host=hosts[-1])
        time.sleep(0.5)
        return {
            "routes": args.routes,
            "rss_mb": status_kib(child.process.pid, "VmRSS") / 1024,
            "hwm_mb": status_kib(child.process.pid, "VmHWM") / 1024,
            # Anonymous memory is prevu's own heap; file pages are shared libraries (libcrypto…).
            "anon_mb": status_kib(child.process.pid, "RssAnon") / 1024,
            "file_mb": status_kib(child.process.pid, "RssFile") / 1024,
        }
    finally:
        processes.stop(child)


def profile_small(
    processes: Processes, args: argparse.Namespace, tmp: Path, upstream: int
) -> tuple[Measure, str]:
    """The small-response run with prevu under cProfile; the top functions by tottime."""
    stats_path = tmp / "prevu.pstats"
    child = start_prevu(
        processes,
        args,
        tmp / "prevu-profile",
        "prevu (cProfile)",
        [HOST],
        upstream,
        profile=stats_path,
    )
    try:
        check_serves(child)
        result = measure(args, child, "100 B")
    finally:
        processes.stop(child)  # SIGTERM: the reactor stops and twistd writes the stats
    if not stats_path.exists():
        raise BenchError(f"no profile written:\n{tail(child.log)}")
    out = io.StringIO()
    stats = pstats.Stats(str(stats_path), stream=out)
    stats.sort_stats("tottime").print_stats(args.profile_top)
    text = out.getvalue()
    # Keep the table, drop pstats' preamble about the file and call counts.
    start = text.find("   ncalls")
    header = text[:start].strip().splitlines()
    summary = next((line.strip() for line in header if "function calls" in line), "")
    return result, summary + "\n" + text[start:].rstrip()


# --- report ------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def format_table(results: dict[str, dict[str, Measure]]) -> str:
    rows = [("size", "proxy", "req/s", "p50 ms", "p99 ms", "CPU µs/req")]
    for size, pair in results.items():
        nginx, prevu = pair["nginx"], pair["prevu"]
        for m in (nginx, prevu):
            rows.append(
                (
                    size,
                    m.proxy,
                    f"{m.rps:,.0f}",
                    f"{m.p50_ms:.3f}",
                    f"{m.p99_ms:.3f}",
                    f"{m.cpu_us_per_request:.1f}",
                )
            )
        rows.append(
            (
                size,
                "prevu/nginx",
                ratio(prevu.rps, nginx.rps),
                ratio(prevu.p50_ms, nginx.p50_ms),
                ratio(prevu.p99_ms, nginx.p99_ms),
                ratio(prevu.cpu_us_per_request, nginx.cpu_us_per_request),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def warnings_for(results: dict[str, dict[str, Measure]]) -> list[str]:
    found = []
    for pair in results.values():
        for m in pair.values():
            if m.non_2xx:
                found.append(f"{m.proxy} {m.size}: {m.non_2xx} non-2xx responses")
            if m.errors:
                found.append(f"{m.proxy} {m.size}: socket errors: {m.errors}")
    return found


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} vCPU {model}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def revision(source: Path) -> str:
    """The commit measured, and whether prevu/ had uncommitted changes (others may be editing)."""
    if source.resolve() != REPO:
        return f"prevu from {source}"
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "prevu"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "prevu at an unknown revision"
    return f"prevu at {head}" + (" + uncommitted changes in prevu/" if dirty else "")


def versions(args: argparse.Namespace) -> str:
    nginx = subprocess.run([args.nginx, "-v"], capture_output=True, text=True, timeout=10)
    wrk = subprocess.run([args.wrk, "-v"], capture_output=True, text=True, timeout=10)
    twisted = subprocess.run(
        [
            args.python,
            "-c",
            "import twisted, httptools; print(twisted.__version__, httptools.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    tw, ht = [*twisted.stdout.split(), "?", "?"][:2]
    return (
        f"{nginx.stderr.strip().replace('nginx version: ', '')}, "
        f"wrk {(wrk.stdout or wrk.stderr or 'wrk ?').split()[1]}, "
        f"Twisted {tw}, httptools {ht}"
    )


# --- main --------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    venv_bin = REPO / ".venv" / "bin"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds of warm-up (default 2; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measured runs per size and proxy; the table shows the least CPU/req of them",
    )
    parser.add_argument("--connections", "-c", type=int, default=50)
    parser.add_argument("--threads", "-t", type=int, default=1)
    parser.add_argument(
        "--routes", type=int, default=1000, help="routes in the idle RSS check (0: skip)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also run the small response under cProfile"
    )
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument(
        "--reactor", default="epoll", help="twistd --reactor for prevu ('' for twistd's default)"
    )
    parser.add_argument("--upstream-workers", type=int, default=1)
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="directory holding prevu/ and twisted/plugins/ to run (default: this checkout)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp directory (logs, configs)"
    )
    parser.add_argument(
        "--twistd",
        default=str(venv_bin / "twistd")
        if (venv_bin / "twistd").exists()
        else os.path.join(os.path.dirname(sys.executable), "twistd"),
    )
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    args.python = os.path.join(os.path.dirname(args.twistd), "python")
    if not os.path.exists(args.python):
        args.python = sys.executable
    return args


def time_limit(args: argparse.Namespace) -> int:
    """A generous bound on the whole run: each wrk run plus start-ups, doubled."""
    runs = 4 * args.repeat + (1 if args.profile else 0)
    return int(2 * (runs * (args.duration + args.warmup + 5) + 60)) + 60


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise BenchError(f"benchmark exceeded its {seconds}s time limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_tools(args: argparse.Namespace) -> None:
    for tool, package in (
        (args.wrk, "wrk"),
        (args.nginx, "nginx-light"),
        (args.twistd, "prevu's venv"),
    ):
        if not (shutil.which(tool) or os.access(tool, os.X_OK)):
            raise BenchError(f"{tool} not found: install {package} (see bench/README.md)")


def write_files(www: Path) -> None:
    www.mkdir(mode=0o755)
    for path, size in SIZES.values():
        (www / path).write_bytes(b"x" * (size - 1) + b"\n")
        (www / path).chmod(0o644)


def verdict_cpu(small: float) -> str:
    if small <= TARGET_SMALL_US:
        return "meets the target"
    if small <= LIMIT_SMALL_US:
        return "within the acceptable limit"
    return "OVER the acceptable limit"


def compare(
    processes: Processes, args: argparse.Namespace, tmp: Path, upstream_port: int
) -> dict[str, Any]:
    """nginx and prevu side by side, for each size; prints the table."""
    reference_port = free_port()
    nginx = start_nginx(
        processes,
        args.nginx,
        tmp / "reference",
        "nginx",
        1,
        REFERENCE_BODY.format(port=reference_port, upstream=upstream_port, host=HOST),
        reference_port,
    )
    prevu = start_prevu(processes, args, tmp / "prevu", "prevu", [HOST], upstream_port)
    for child in (nginx, prevu):
        check_serves(child)
    print(f"  prevu's X-Robots-Tag on this route: {robots_tag(prevu.port)}", flush=True)
    rss_start = status_kib(prevu.process.pid, "VmRSS") / 1024
    runs: dict[str, dict[str, list[Measure]]] = {size: {"nginx": [], "prevu": []} for size in SIZES}
    for repeat in range(args.repeat):
        for size in SIZES:  # nginx and prevu alternate, so both see the same background load
            for child in (nginx, prevu):
                print(f"  measuring {child.name} {size} ({repeat + 1}/{args.repeat}) …", flush=True)
                runs[size][child.name].append(measure(args, child, size))
    results = {size: {name: best_of(r) for name, r in pair.items()} for size, pair in runs.items()}
    rss = {
        "after_start_1_route": rss_start,
        "after_bench": status_kib(prevu.process.pid, "VmRSS") / 1024,
        "peak": status_kib(prevu.process.pid, "VmHWM") / 1024,
    }
    processes.stop(prevu)
    processes.stop(nginx)

    small = results["100 B"]["prevu"].cpu_us_per_request
    print(f"\n{format_table(results)}\n")
    if args.repeat > 1:
        print(f"best of {args.repeat} runs by CPU/req; CPU µs/req of every run:")
        for size, pair in results.items():
            for m in pair.values():
                print(
                    f"  {size:6}  {m.proxy:5}  " + " ".join(f"{v:.1f}" for v in m.cpu_us_all_runs)
                )
    print(
        f"prevu small-response CPU: {small:.1f} µs/req (target ≤ {TARGET_SMALL_US:g}, "
        f"acceptable ≤ {LIMIT_SMALL_US:g}): {verdict_cpu(small)}"
    )
    print(
        f"prevu RSS with 1 route: {rss['after_start_1_route']:.1f} MB after start, "
        f"{rss['after_bench']:.1f} MB after the runs, peak {rss['peak']:.1f} MB"
    )
    warnings = warnings_for(results)
    for warning in warnings:
        print(f"WARNING: {warning}")
    return {
        "results": {
            size: {k: asdict(v) for k, v in pair.items()} for size, pair in results.items()
        },
        "prevu_rss_mb": rss,
        "warnings": warnings,
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The whole benchmark; every child is stopped on the way out, whatever happens."""
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "versions": versions(args),
        "revision": revision(args.source),
        "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration:g}s",
        "warmup_s": args.warmup,
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }
    print(
        f"{report['date']} · {report['machine']}\n{report['versions']} · {report['revision']}\n"
        f"wrk {report['wrk']}, warm-up {args.warmup:g}s · "
        f"load average before: {' '.join(report['loadavg_before'])}",
        flush=True,
    )
    processes = Processes()
    try:
        write_files(tmp / "www")
        upstream_port = free_port()
        start_nginx(
            processes,
            args.nginx,
            tmp / "upstream",
            "upstream",
            args.upstream_workers,
            UPSTREAM_BODY.format(port=upstream_port, root=tmp / "www"),
            upstream_port,
        )
        report.update(compare(processes, args, tmp, upstream_port))
        if args.routes > 0:
            idle = idle_rss(processes, args, tmp, upstream_port)
            report["idle_rss"] = idle
            verdict = "ok" if idle["rss_mb"] <= TARGET_RSS_MB else "OVER the target"
            print(
                f"prevu idle RSS with {args.routes:,} routes: {idle['rss_mb']:.1f} MB "
                f"(target ≤ {TARGET_RSS_MB:g} MB: {verdict}; anonymous {idle['anon_mb']:.1f} MB, "
                f"file-backed {idle['file_mb']:.1f} MB; peak {idle['hwm_mb']:.1f} MB)"
            )
        if args.profile:
            print("\n  profiling prevu (100 B) …", flush=True)
            profiled, top = profile_small(processes, args, tmp, upstream_port)
            report["profile"] = {"run": asdict(profiled), "top": top}
            print(
                f"\nprevu under cProfile, 100 B: {profiled.rps:,.0f} req/s, "
                f"{profiled.cpu_us_per_request:.1f} µs/req (profiler overhead included)"
            )
            print(f"top {args.profile_top} functions by tottime:\n{top}")
        report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
        print(f"load average after: {' '.join(report['loadavg_after'])}")
        return report
    finally:
        processes.stop_all()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_tools(args)
        tmp = Path(tempfile.mkdtemp(prefix="prevu-bench-"))
        tmp.chmod(0o755)  # nginx workers may run as another user when started as root
        try:
            with deadline(time_limit(args)):
                report = run(args, tmp)
        finally:
            if args.keep:
                print(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    except BenchError as error:
        print(f"bench/proxy.py: {error}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
