"""
The control app with the real orchestrator, on the running reactor, for the
dashboard's tests: fakes at the git and Docker ports (`prevu.testing.fakes`),
a build that can be held and stepped line by line (`SteppedDocker`), and two
password users: `alice` (in `[auth] admins`) and `bob` (a reviewer only).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred

from prevu.adapters.docker_runtime import DockerRuntime
from prevu.auth.authority import Authority
from prevu.auth.passwords import hash_password, parse_users
from prevu.auth.rules import AuthSettings
from prevu.auth.tokens import Signer
from prevu.config import AuthConfig, Config, PreviewsConfig, RepoConfig, ServerConfig
from prevu.control.api import PreviewsApi
from prevu.control.app import ControlApp
from prevu.control.limits import control_site
from prevu.control.login import LoginPages
from prevu.control.preview_page import PreviewPage
from prevu.forge import policy
from prevu.forge.events import PullRequest
from prevu.orchestrator import Orchestrator, OrchestratorSettings
from prevu.ports import BuildRequest, Image, ImageInfo, LogSink
from prevu.routing import RouteRegistry
from prevu.testing.fakes import MANAGED, FakeDocker, FakeGit, FakeStore
from prevu.testing.health import FakeHealth

REPO = "acme/shop"
URL = "https://forge.example/acme/shop.git"
PASSWORD = "wonderland"


@define
class SteppedDocker(FakeDocker):
    """A fake engine whose builds, when `stepping`, give one log line per `step()`."""

    stepping: bool = False
    gates: list[Deferred[None]] = field(factory=list)

    def step(self) -> None:
        """Let the waiting build give its next line."""
        self.gates.pop(0).callback(None)

    async def build(self, request: BuildRequest, on_log: LogSink) -> Image:
        await self._enter("build", request.tag)
        self.builds.append(request)
        for line in self.build_lines:
            if self.stepping:
                gate: Deferred[None] = Deferred()
                self.gates.append(gate)
                await gate
            on_log(line)
        image_id = f"sha256:{self._next():064x}"
        self.images[image_id] = ImageInfo(image_id, (request.tag,), {**request.labels, **MANAGED})
        return Image(image_id, request.tag)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the control app listens there next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class StaticUsers:
    def __init__(self, text: str) -> None:
        self.users = parse_users(text)

    def current(self) -> Any:
        return self.users


@define
class DashboardApp:
    """A listening control app with the orchestrator behind it."""

    reactor: Any
    tmp: Path
    port: int = field(factory=free_port)
    docker: SteppedDocker = field(factory=SteppedDocker)
    store: FakeStore = field(init=False)
    git: FakeGit = field(init=False)
    orchestrator: Orchestrator = field(init=False)
    config: Config = field(init=False)
    listening: Any = None
    history: float = 7 * 86400.0

    def __attrs_post_init__(self) -> None:
        self.store = FakeStore(self.reactor)
        self.git = FakeGit(root=str(self.tmp / "workspaces"))
        self.config = Config(
            server=ServerConfig(
                state_dir=str(self.tmp / "state"), public_url=self.public_url, domain="localhost"
            ),
            auth=AuthConfig(admins=("alice",)),
            previews=PreviewsConfig(history=self.history),
        )
        settings = OrchestratorSettings.from_config(self.config, drain_delay=0.0)
        runtime = DockerRuntime.from_config(
            self.docker, FakeHealth(), self.config.docker, settings.instance
        )
        self.orchestrator = Orchestrator(
            settings, self.reactor, RouteRegistry(), runtime, self.git, self.store
        )

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def control(self) -> ControlApp:
        users = "".join(
            f"{name}:{hash_password(PASSWORD, n=1 << 10)}\n" for name in ("alice", "bob")
        )
        authority = Authority(
            settings=AuthSettings(public_url=self.public_url, domain="localhost"),
            signer=Signer.from_secrets("k" * 32),
        )
        login = LoginPages(
            authority=authority, clock=self.reactor, users=StaticUsers(users),
            login_configured=True,
        )
        api = PreviewsApi(self.config, self.orchestrator, self.store, self.docker)
        return ControlApp(config=self.config, login=login, previews=api,
                          page=PreviewPage(self.store))

    def listen(self) -> None:
        site = control_site(self.control().resource())
        self.listening = self.reactor.listenTCP(self.port, site, interface="127.0.0.1")

    async def close(self) -> None:
        self.orchestrator.stop()
        if self.listening is not None:
            await self.listening.stopListening()

    def deploy(self, number: int, sha: str, branch: str = "") -> str:
        """Open pull request `number` at `sha`; the id of its preview."""
        ref = f"refs/pull/{number}/head"
        self.git.remote(URL, ref, sha, {"Dockerfile": "FROM scratch\n"})
        pr = PullRequest("github", REPO, number, sha, branch or f"feature-{number}", URL, ref)
        decision = policy.Deploy(pr, RepoConfig(REPO), "open", revive=True)
        receipt = self.orchestrator.apply(decision)
        assert receipt.preview is not None
        return receipt.preview
