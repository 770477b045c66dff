"""
The git adapter: fetch one pull request head with the `git` CLI.

Every git command is a child process started with `reactor.spawnProcess`, so
the reactor never blocks on the network or the disk of a fetch. A fetch is
`git init`, `git fetch --depth 1 <url> <ref>`, a check that the fetched commit
is the expected SHA, `git checkout --detach <sha>` and a check of HEAD. The
whole sequence has one deadline (`GitSource.timeout`); a command still running
at the deadline is sent SIGTERM, then SIGKILL.

The forge token for private HTTPS repositories (sent as Basic
`GitSource.username:token`, the user name being the forge's, not this
adapter's) reaches git only through the environment of the fetch
(`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_0`/`GIT_CONFIG_VALUE_0` set
`http.<url>.extraHeader`), scoped to the clone URL, so it never appears in
argv (`ps`), in `.git/config` or anywhere on disk, and git's own error output
is scrubbed of it before it becomes a GitError or a log line.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from prevu.errors import GitError
from prevu.ports import Checkout, Git, GitSource
from prevu.reactors import DelayedCall, GitReactor

_WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_OUTPUT_LIMIT = 64 * 1024
_KILL_GRACE = 2.0
_ALLOWED_PROTOCOLS = "https:http:ssh:git:file"


def auth_header(username: str, token: str) -> str:
    """The HTTP header git sends for `username` and `token` (Basic, as forges accept)."""
    basic = base64.b64encode(f"{username}:{token}".encode()).decode("ascii")
    return f"Authorization: Basic {basic}"


def scrub(text: str, secrets: Sequence[str], username: str) -> str:
    """
    `text` with every secret replaced by `***`, raw and in its Basic form
    with `username` (the form the auth header carries).
    """
    return _blank(text, _forms(secrets, username))


def _forms(secrets: Sequence[str], username: str) -> list[str]:
    """Each secret raw and in its Basic form with `username`."""
    return [
        form
        for secret in secrets
        if secret
        for form in (secret, auth_header(username, secret).split(" ", 2)[2])
    ]


def _blank(text: str, forms: Sequence[str]) -> str:
    for form in forms:
        text = text.replace(form, "***")
    return text


def redact_url(url: str) -> str:
    """`url` without any user:password part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@define
class _Result:
    code: int | None
    output: str
    timed_out: bool


class _Collect(ProcessProtocol):
    """Collects a child's output (bounded) and fires `done` with a _Result."""

    def __init__(self, done: Deferred[_Result]) -> None:
        self.done = done
        self.chunks: list[bytes] = []
        self.size = 0
        self.timed_out = False
        self.timers: list[DelayedCall] = []

    def outReceived(self, data: bytes) -> None:
        self._keep(data)

    def errReceived(self, data: bytes) -> None:
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        if self.size < _OUTPUT_LIMIT:
            self.chunks.append(data[: _OUTPUT_LIMIT - self.size])
            self.size += len(data)

    def processEnded(self, reason: Failure) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        error = reason.value
        code = 0 if isinstance(error, ProcessDone) else getattr(error, "exitCode", None)
        output = b"".join(self.chunks).decode("utf-8", "replace")
        if not self.done.called:  # a cancelled fetch has fired already
            self.done.callback(_Result(code, output, self.timed_out))

    def kill(self, sig: int) -> None:
        self.timed_out = True
        transport: Any = self.transport
        pid = getattr(transport, "pid", None)
        if pid is None:
            return
        # git runs helpers (git-remote-http, ...) as children that keep our pipes
        # open: signal the whole process group that `setsid` gave it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessExitedAlready):
            transport.signalProcess(sig)


@define
class GitCli:
    """
    `prevu.ports.Git` with the git CLI; workspaces live in `root`
    (`<state_dir>/workspaces`).

    `reactor` provides IReactorProcess, IReactorTime and IReactorFromThreads
    (`prevu.reactors.GitReactor`). `pool` runs the
    recursive delete of workspaces, which can take a while for large trees.
    """

    reactor: GitReactor
    root: str
    pool: ThreadPool
    git: str = field(factory=lambda: shutil.which("git") or "/usr/bin/git")
    setsid: str = field(factory=lambda: shutil.which("setsid") or "/usr/bin/setsid")
    log: Logger = field(factory=Logger, eq=False)

    async def remote_head(self, source: GitSource) -> str:
        if source.url.startswith("-") or source.ref.startswith("-"):
            raise GitError("ls-remote", "URL and ref may not start with '-'")
        deadline = self.reactor.seconds() + source.timeout
        secrets = _forms([source.token] if source.token else [], source.username)
        shown_url = redact_url(source.url)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        output = await self._git(
            ["ls-remote", "--", source.url, source.ref],
            deadline, secrets, cwd=self.root, env=self._auth_env(source),
            what=f"ls-remote {shown_url}",
        )  # fmt: skip
        for line in output.splitlines():
            sha, _, name = line.partition("\t")
            if name.strip() == source.ref:
                return sha.strip()
        raise GitError("ls-remote", f"{source.ref} does not exist at {shown_url}")

    async def fetch(self, source: GitSource, workspace: str) -> Checkout:
        path = self._path(workspace)
        if source.url.startswith("-") or source.ref.startswith("-"):
            raise GitError("fetch", "URL and ref may not start with '-'")
        deadline = self.reactor.seconds() + source.timeout
        # Every form of the token that could show up in git's output.
        secrets = _forms([source.token] if source.token else [], source.username)
        shown_url = redact_url(source.url)
        await self.remove_workspace(workspace)
        os.makedirs(path, mode=0o700)
        try:
            await self._git(["init", "--quiet", path], deadline, secrets, cwd=self.root)
            await self._git(
                [
                    "fetch",
                    "--quiet",
                    "--depth",
                    "1",
                    "--no-tags",
                    "--no-recurse-submodules",
                    "--",
                    source.url,
                    source.ref,
                ],
                deadline,
                secrets,
                cwd=path,
                env=self._auth_env(source),
                what=f"fetch {shown_url}",
            )
            fetched = await self._git(["rev-parse", "FETCH_HEAD"], deadline, secrets, path)
            fetched = fetched.strip()
            if fetched != source.sha:
                raise GitError(
                    "fetch",
                    f"{source.ref} of {shown_url} is at {fetched}, not the expected {source.sha}",
                )
            await self._git(
                ["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", source.sha],
                deadline,
                secrets,
                path,
            )
            head = (await self._git(["rev-parse", "HEAD"], deadline, secrets, path)).strip()
            if head != source.sha:
                raise GitError("checkout", f"HEAD is {head}, not the expected {source.sha}")
        except BaseException:
            await self.remove_workspace(workspace)
            raise
        self.log.info(
            "fetched {ref} of {url} at {sha} into {workspace}",
            ref=source.ref,
            url=shown_url,
            sha=source.sha,
            workspace=workspace,
        )
        return Checkout(workspace=workspace, path=path, sha=source.sha)

    async def remove_workspace(self, workspace: str) -> None:
        path = self._path(workspace)
        if not os.path.lexists(path):
            return
        # Twisted annotates with its zope interface; GitReactor names the same capability.
        reactor = cast(IReactorFromThreads, self.reactor)
        await deferToThreadPool(reactor, self.pool, shutil.rmtree, path, ignore_errors=True)

    def workspaces(self) -> list[str]:
        try:
            return sorted(name for name in os.listdir(self.root) if _WORKSPACE_NAME.match(name))
        except FileNotFoundError:
            return []

    # --- internals ------------------------------------------------------------

    def _path(self, workspace: str) -> str:
        if not _WORKSPACE_NAME.match(workspace) or workspace in (".", ".."):
            raise GitError("workspace", f"invalid workspace name {workspace!r}")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        return os.path.join(self.root, workspace)

    def _auth_env(self, source: GitSource) -> dict[str, str]:
        if not source.token:
            return {}
        parts = urlsplit(source.url)
        if parts.scheme not in ("http", "https"):
            return {}
        # Scope the header to the clone URL so that a redirect elsewhere never gets it.
        scope = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{scope}.extraHeader",
            "GIT_CONFIG_VALUE_0": auth_header(source.username, source.token),
        }

    def _base_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.root,
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_ALLOW_PROTOCOL": _ALLOWED_PROTOCOLS,
            "GIT_PROTOCOL_FROM_USER": "0",
        }

    async def _git(
        self,
        args: list[str],
        deadline: float,
        secrets: Sequence[str],
        cwd: str,
        env: Mapping[str, str] | None = None,
        what: str | None = None,
    ) -> str:
        """Run git with `args`; its output, or GitError naming `what` (default: the subcommand)."""
        command = what or (args[2] if args[0] == "-c" else args[0])
        remaining = deadline - self.reactor.seconds()
        if remaining <= 0:
            raise GitError(command, "timed out")
        # Cancelling the fetch (a superseded or closed pull request) kills git at once.
        done: Deferred[_Result] = Deferred(lambda _: protocol.kill(signal.SIGKILL))
        protocol = _Collect(done)
        full_env = {**self._base_env(), **(env or {})}
        # `setsid` makes git the leader of a new process group (same pid, it execs).
        self.reactor.spawnProcess(
            protocol,
            self.setsid,
            [self.setsid, self.git, *args],
            env=full_env,
            path=cwd,
        )
        protocol.timers = [
            self.reactor.callLater(remaining, protocol.kill, signal.SIGTERM),
            self.reactor.callLater(remaining + _KILL_GRACE, protocol.kill, signal.SIGKILL),
        ]
        result = await done
        output = _blank(result.output, secrets)
        if result.timed_out:
            raise GitError(command, "timed out")
        if result.code != 0:
            reason = output.strip().splitlines()[-3:] or [f"exit status {result.code}"]
            raise GitError(command, " / ".join(reason))
        return output


def _conforms(cli: GitCli) -> Git:
    """mypy checks here that GitCli satisfies the Git Protocol."""
    return cli
