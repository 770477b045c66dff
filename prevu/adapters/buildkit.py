"""
BuildKit builds through the Docker CLI: finding a client that can, and running
one build as a process group prevu can stream, time out and cancel.

The Docker SDK's build endpoint is the classic builder: every `LABEL` becomes a
build step, `RUN --mount` fails, multi-stage builds leave their stage images
behind. BuildKit is reached through the CLI instead (the engine's built-in
BuildKit with `DOCKER_BUILDKIT=1`, or the buildx plugin where installed), a real
and well-kept component, as git's CLI is for fetches.

- `find_builder` tries, in order: `docker buildx version`, then each `docker` on
  `PATH` and `/usr/bin/docker` with a no-op BuildKit build; the first that works
  is kept (a client newer than the engine without buildx answers "the buildx
  component is missing" and is passed over). A configured path names one client.
- `BuildKitCli.build` runs `<cli> build --progress=plain` in a process group of
  its own (so a timeout or a cancel ends the CLI and any plugin it runs), with a
  clean environment: `PATH`, `DOCKER_HOST` when configured, `DOCKER_BUILDKIT=1`
  and a `DOCKER_CONFIG` of prevu's own, so a pull request's build never sees the
  server user's registry credentials. Labels are image metadata (`--label`), not
  build steps. BuildKit exports only the final image: no intermediate or stage
  image is left by a build, cancelled or not. The image id comes from
  `--iidfile`.

Threading: every method runs on the reactor thread; processes are spawned with
`reactor.spawnProcess` and their output arrives as reactor callbacks.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

from attrs import field, frozen
from twisted.internet import error as process_errors
from twisted.internet.base import DelayedCall
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from prevu.errors import DockerError

LogSink = Callable[[str], None]

# A child that makes itself a process group leader, then becomes the command:
# Twisted's spawnProcess has no preexec hook, and a group lets a cancel end the
# CLI together with any plugin (buildx) it started.
_SETSID = "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])"
_SYNTAX = re.compile(r"^#\s*syntax\s*=\s*(\S+)", re.IGNORECASE)
_ERROR_LINE = re.compile(r"^(?:#\d+\s+)?(?:ERROR|error):?\s*(.+)$")
_STEP_OUTPUT = re.compile(r"^#\d+ \d+\.\d+ (.*)$")
_KILL_GRACE = 5.0
_PROBE_TIMEOUT = 30.0


@frozen
class BuilderCli:
    """
    A Docker client that builds with BuildKit.

    `argv` starts every build (`("/usr/bin/docker",)` or `("docker", "buildx")`);
    `kind` is `"buildx"` (the plugin: images must be `--load`ed into the engine)
    or `"engine"` (the engine's built-in BuildKit through `DOCKER_BUILDKIT=1`).
    """

    argv: tuple[str, ...]
    kind: Literal["buildx", "engine"]

    def describe(self) -> str:
        """One line for start-up and `/healthz`: `docker buildx (/usr/bin/docker)`."""
        if self.kind == "buildx":
            return f"{' '.join(self.argv)} (buildx plugin)"
        return f"{self.argv[0]} with DOCKER_BUILDKIT=1"


@frozen
class CliBuild:
    """
    One BuildKit build.

    - `context`: the checkout directory (absolute); `dockerfile` relative to it.
    - `tag`: the image's name; `labels`: image metadata (never build steps).
    - `args`: build args; `target`: the stage of a multi-stage Dockerfile.
    - `secrets`: BuildKit secret id -> file path on the server (`--secret
      id=…,src=…`): readable by `RUN --mount=type=secret` steps, never in a layer.
    - `cache_from`: images whose inline cache metadata the build may reuse.
    - `inline_cache`: write cache metadata into the image, so that it can serve
      as `cache_from` for the repository's next pull request.
    - `timeout`: seconds before the build's process group is ended.
    """

    context: str
    tag: str
    dockerfile: str = "Dockerfile"
    labels: Mapping[str, str] = field(factory=dict)
    args: Mapping[str, str] = field(factory=dict)
    target: str | None = None
    secrets: Mapping[str, str] = field(factory=dict)
    cache_from: tuple[str, ...] = ()
    inline_cache: bool = False
    timeout: float = 900.0


def build_argv(cli: BuilderCli, spec: CliBuild, iidfile: str) -> list[str]:
    """The whole command line of one build (pure; shown in no log, secrets are paths)."""
    argv = [*cli.argv, "build", "--progress=plain", "--iidfile", iidfile]
    if cli.kind == "buildx":
        argv.append("--load")
    argv += ["--file", os.path.join(spec.context, spec.dockerfile), "--tag", spec.tag]
    for name, value in sorted(spec.labels.items()):
        argv += ["--label", f"{name}={value}"]
    for name, value in sorted(spec.args.items()):
        argv += ["--build-arg", f"{name}={value}"]
    if spec.inline_cache:
        argv += ["--build-arg", "BUILDKIT_INLINE_CACHE=1"]
    if spec.target:
        argv += ["--target", spec.target]
    for identifier, path in sorted(spec.secrets.items()):
        argv += ["--secret", f"id={identifier},src={path}"]
    for image in spec.cache_from:
        argv += ["--cache-from", image]
    argv.append(spec.context)
    return argv


def clean_environment(
    docker_config: str, docker_host: str | None = None, path: str | None = None
) -> dict[str, str]:
    """
    The whole environment of a Docker CLI process: nothing of prevu's own.

    `docker_config` is a directory of prevu's (its `config.json` holds only
    what `[docker] registry_auth_file` gave); `HOME` points there too, so the
    CLI never reads `~/.docker` of the server user.
    """
    environment = {
        "PATH": path if path is not None else os.environ.get("PATH", "/usr/bin:/bin"),
        "DOCKER_BUILDKIT": "1",
        "DOCKER_CONFIG": docker_config,
        "HOME": docker_config,
        "LANG": "C.UTF-8",
    }
    if docker_host:
        environment["DOCKER_HOST"] = docker_host
    return environment


def prepare_docker_config(directory: str, registry_auth_file: str | None = None) -> str:
    """
    Make prevu's own `DOCKER_CONFIG` directory (mode 0700) and return it.

    Its `config.json` is a copy of `registry_auth_file` when one is configured,
    else an empty object: builds then pull only public images.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    target = os.path.join(directory, "config.json")
    if registry_auth_file:
        shutil.copyfile(registry_auth_file, target)
    else:
        with open(target, "w", encoding="utf-8") as handle:
            handle.write("{}\n")
    os.chmod(target, 0o600)
    return directory


def syntax_frontend(dockerfile_text: str) -> str | None:
    """The image a Dockerfile's `# syntax=` directive names, if its first lines have one."""
    for line in dockerfile_text.splitlines():
        if not line.strip():
            continue
        match = _SYNTAX.match(line.strip())
        if match:
            return match.group(1)
        if not line.lstrip().startswith("#"):
            return None
    return None


def explain_failure(dockerfile_text: str, output_tail: Sequence[str], status: str) -> str:
    """
    The reason a build failed, in one line for the preview's `error`.

    A `# syntax=` frontend that cannot be pulled is said plainly (the raw error
    is a resolver message about a registry); otherwise the last `ERROR`/`error:`
    line BuildKit printed, else the exit status.
    """
    frontend = syntax_frontend(dockerfile_text)
    text = "\n".join(output_tail)
    if frontend and frontend.split(":")[0].split("@")[0] in text:
        return (
            f"the Dockerfile's '# syntax={frontend}' line needs the frontend image "
            f"{frontend}, which this server cannot pull: remove the line or make the image "
            "available to the engine"
        )
    for line in reversed(output_tail):
        match = _ERROR_LINE.match(line.strip())
        if match:
            return match.group(1)
    last = next((line.strip() for line in reversed(output_tail) if line.strip()), "")
    return f"docker build {status}: {last}" if last else f"docker build {status}"


def step_output(line: str) -> str:
    """
    A plain-progress line as the preview's log shows it: a step's own output
    (`#7 0.412 hello`) without BuildKit's step number and timestamp (`hello`);
    every other line (`#7 [2/3] RUN …`, `#7 CACHED`, `#7 DONE 0.5s`) unchanged.
    """
    match = _STEP_OUTPUT.match(line)
    return match.group(1) if match else line


class _BuildProcess(ProcessProtocol):
    """Streams a build's output line by line to a sink; fires `ended` with the exit code."""

    def __init__(self, on_line: LogSink) -> None:
        self.on_line = on_line
        self.pending = {1: b"", 2: b""}
        self.tail: list[str] = []
        self.ended: Deferred[int | None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self.pending.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        self.pending[childFD] = rest
        for line in lines:
            self._emit(line)

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self.tail = [*self.tail[-29:], line]
        self.on_line(step_output(line))

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self.pending.items():
            if rest:
                self._emit(rest)
            self.pending[fd] = b""
        value = reason.value
        code = value.exitCode if isinstance(value, process_errors.ProcessTerminated) else 0
        self.ended.callback(code)


class BuilderReactor(Protocol):
    """The reactor capabilities a builder needs: `IReactorProcess` and `IReactorTime`."""

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> IProcessTransport: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object
    ) -> DelayedCall: ...


def _kill_group(pid: int | None, sig: int) -> None:
    """
    Send `sig` to the process group a client process made (`_SETSID`). With
    no such group yet, the child has not run setsid, so it started no client:
    it is killed with SIGKILL. It may still be the fork of prevu, which
    catches SIGTERM with prevu's own handler until it execs. A TERM sent then
    was lost, and the build ran on. The KILL 5 s later cut its client off,
    sometimes during the export, and the engine tagged the image after prevu
    had untagged it. That is how an image of a closed preview was left behind
    under load.
    """
    if pid is None:
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # no group yet: the child has not run setsid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    except PermissionError:
        pass


class BuildKitCli:
    """
    Runs BuildKit builds with one `BuilderCli`.

    :param reactor: provides `IReactorProcess` and `IReactorTime`.
    :param cli: the client `find_builder` chose.
    :param environment: the processes' whole environment (`clean_environment`).
    """

    log = Logger()

    def __init__(
        self, reactor: BuilderReactor, cli: BuilderCli, environment: Mapping[str, str]
    ) -> None:
        self.reactor = reactor
        self.cli = cli
        self.environment = dict(environment)

    async def build(self, spec: CliBuild, on_log: LogSink) -> str:
        """
        Build `spec`, streaming each output line to `on_log`; return the image id.

        Cancelling the awaiting Deferred ends the build's process group (TERM,
        then KILL after 5 s); BuildKit stops the running step. The image is
        tagged only when the build finished.

        :raises DockerError: ("build", reason) on a failure, the timeout, or a
            missing client; `CancelledError` when cancelled.
        """
        with open(
            os.path.join(spec.context, spec.dockerfile), encoding="utf-8", errors="replace"
        ) as handle:
            dockerfile_text = handle.read()
        scratch = tempfile.mkdtemp(prefix="prevu-build-")
        iidfile = os.path.join(scratch, "iid")
        protocol = _BuildProcess(on_log)
        argv = build_argv(self.cli, spec, iidfile)
        try:
            transport = self.reactor.spawnProcess(
                protocol,
                sys.executable,
                [sys.executable, "-c", _SETSID, *argv],
                env=self.environment,
                path=spec.context,
            )
        except OSError as error:
            shutil.rmtree(scratch, ignore_errors=True)
            raise DockerError("build", f"cannot start {argv[0]}: {error}") from None
        pid: int | None = transport.pid
        why: list[str] = []
        gone: Deferred[None] = Deferred()
        waiting: Deferred[int | None] = Deferred(lambda _: end("cancelled"))

        def end(reason: str) -> None:
            """End the build's process group: TERM now, KILL if it lingers."""
            if gone.called or why:
                return
            why.append(reason)
            _kill_group(pid, signal.SIGTERM)
            killer = self.reactor.callLater(_KILL_GRACE, _kill_group, pid, signal.SIGKILL)
            gone.addCallback(lambda _: killer.cancel() if killer.active() else None)

        def ended(code: int | None) -> None:
            gone.callback(None)
            if not waiting.called:
                waiting.callback(code)

        protocol.ended.addCallback(ended)
        timer = self.reactor.callLater(spec.timeout, end, "timeout")
        try:
            try:
                code = await waiting
            except CancelledError:
                await gone
                raise
            if why == ["timeout"]:
                raise DockerError("build", f"timed out after {spec.timeout:g}s")
            if code != 0:
                raise DockerError(
                    "build", explain_failure(dockerfile_text, protocol.tail, f"exited {code}")
                )
            try:
                with open(iidfile, encoding="ascii") as handle:
                    return handle.read().strip()
            except OSError:
                raise DockerError("build", "the build wrote no image id") from None
        finally:
            if timer.active():
                timer.cancel()
            shutil.rmtree(scratch, ignore_errors=True)

    async def prune(self, keep_storage: int) -> bool:
        """
        `docker builder prune --force --keep-storage <bytes>`: bounds the ENGINE's
        build cache (every build on the engine, not only prevu's); True on success.
        """
        argv = [
            self.cli.argv[0],
            "builder",
            "prune",
            "--force",
            "--keep-storage",
            str(keep_storage),
        ]
        scratch = tempfile.mkdtemp(prefix="prevu-prune-")
        try:
            return await _probe(self.reactor, argv, self.environment, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


async def _probe(
    reactor: BuilderReactor, argv: Sequence[str], environment: Mapping[str, str], scratch: str
) -> bool:
    """True when `argv` exits 0 within the probe timeout."""
    lines: list[str] = []
    protocol = _BuildProcess(lines.append)
    try:
        transport = reactor.spawnProcess(
            protocol,
            sys.executable,
            [sys.executable, "-c", _SETSID, *argv],
            env=dict(environment),
            path=scratch,
        )
    except OSError:
        return False
    pid = transport.pid
    timer = reactor.callLater(_PROBE_TIMEOUT, _kill_group, pid, signal.SIGKILL)
    code = await protocol.ended
    if timer.active():
        timer.cancel()
    return code == 0


def candidates(setting: str, path: str | None = None) -> list[str]:
    """
    The clients to try for `[docker] cli`: the named path alone, or for
    `"auto"` every `docker` on `path` in order, then `/usr/bin/docker`.
    """
    if setting != "auto":
        return [setting]
    found: list[str] = []
    for directory in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        if not directory:
            continue
        binary = os.path.join(directory, "docker")
        real = os.path.realpath(binary)
        if os.access(binary, os.X_OK) and real not in {os.path.realpath(f) for f in found}:
            found.append(binary)
    if os.access("/usr/bin/docker", os.X_OK) and os.path.realpath("/usr/bin/docker") not in {
        os.path.realpath(f) for f in found
    }:
        found.append("/usr/bin/docker")
    return found


async def find_builder(
    reactor: BuilderReactor, setting: str, environment: Mapping[str, str]
) -> BuilderCli:
    """
    The first client that builds with BuildKit, for `[docker] cli` = `setting`.

    For each candidate: `<docker> buildx version` (the plugin), then a no-op
    BuildKit build of `FROM scratch` exported to nowhere (the engine's own
    BuildKit). Nothing is pulled or tagged by a probe.

    :raises DockerError: ("builder", one line naming what was tried) when none works.
    """
    tried = candidates(setting, environment.get("PATH"))
    scratch = tempfile.mkdtemp(prefix="prevu-probe-")
    try:
        with open(os.path.join(scratch, "Dockerfile"), "w", encoding="utf-8") as handle:
            handle.write("FROM scratch\n")
        for binary in tried:
            if await _probe(reactor, [binary, "buildx", "version"], environment, scratch):
                return BuilderCli((binary, "buildx"), "buildx")
            noop = [binary, "build", "-q", "-o", "type=tar,dest=/dev/null", scratch]
            if await _probe(reactor, noop, environment, scratch):
                return BuilderCli((binary,), "engine")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    raise _none_found(tried)


def _run_quietly(argv: Sequence[str], environment: Mapping[str, str], cwd: str) -> bool:
    """True when `argv` exits 0 within the probe timeout (blocking; start-up only)."""
    try:
        completed = subprocess.run(
            list(argv),
            env=dict(environment),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


def find_builder_at_startup(setting: str, environment: Mapping[str, str]) -> BuilderCli:
    """
    `find_builder` for start-up, before the reactor runs (blocking subprocesses,
    each bounded by the probe timeout). Same order, same result, same error.

    :raises DockerError: ("builder", one line naming what was tried) when none works.
    """
    tried = candidates(setting, environment.get("PATH"))
    scratch = tempfile.mkdtemp(prefix="prevu-probe-")
    try:
        with open(os.path.join(scratch, "Dockerfile"), "w", encoding="utf-8") as handle:
            handle.write("FROM scratch\n")
        for binary in tried:
            if _run_quietly([binary, "buildx", "version"], environment, scratch):
                return BuilderCli((binary, "buildx"), "buildx")
            noop = [binary, "build", "-q", "-o", "type=tar,dest=/dev/null", scratch]
            if _run_quietly(noop, environment, scratch):
                return BuilderCli((binary,), "engine")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    raise _none_found(tried)


def _none_found(tried: Sequence[str]) -> DockerError:
    names = ", ".join(tried) or "no docker client on PATH"
    return DockerError(
        "builder",
        f"no Docker client builds with BuildKit (tried {names}); install the buildx plugin "
        "or a client matching the engine, or name one with [docker] cli",
    )
