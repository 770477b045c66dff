"""
The ports: what the orchestrator asks of git, Docker and the state store.

Each outside system sits behind a small `typing.Protocol` defined here, with
frozen attrs values going in and out. The real adapters live in
`prevu/adapters/git.py`, `prevu/adapters/docker.py` and `prevu/store.py`;
in-memory fakes of all three live in `prevu/testing/fakes.py`.

Threading contract (the same for every implementation):

- Every method is called on the reactor thread.
- `async` methods never block the reactor: git runs as child processes
  (`reactor.spawnProcess`), Docker SDK calls run on prevu's own thread pool
  and their results come back on the reactor thread.
- Callbacks the caller passes in (`LogSink`, log watchers) are always called
  on the reactor thread.
- The `Store` is synchronous on purpose: SQLite on local disk in WAL mode with
  `synchronous=NORMAL` answers these small reads and writes in tens of
  microseconds, far less than a thread hop, and keeping it on the reactor
  thread means no locking and a single writer. See docs/docker.md.

Failures are `GitError` and `DockerError` (`DockerUnavailable` when the
engine cannot be reached at all, so that callers can retry with backoff
instead of failing the preview).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

from attrs import Factory, field, frozen, validators

from prevu.revisions import SHA_PATTERN

Access = Literal["private", "public"]
PreviewStatus = Literal[
    "queued", "building", "starting", "running", "sleeping", "failed", "stopped"
]
PREVIEW_STATUSES: tuple[PreviewStatus, ...] = (
    "queued", "building", "starting", "running", "sleeping", "failed", "stopped",
)
LogStream = Literal["build", "run", "system"]

LogSink = Callable[[str], None]
"""Receives one line of output (no trailing newline), on the reactor thread."""


def _frozen_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


def _str_tuple(value: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(value or ())


# --- git ---------------------------------------------------------------------


@frozen
class GitSource:
    """
    What to fetch: `ref` from the repository at `url`, expected to be `sha`.

    `token` authenticates HTTPS fetches of private repositories; it is never
    written to disk, put in argv or logged (`repr=False` keeps it out of
    reprs too). `username` goes with it (Basic `username:token`); each forge
    says its own (`prevu.forge.registry.clone_credentials`: GitHub
    `x-access-token`, GitLab `oauth2`). The default is GitHub's until every
    caller passes the forge's.
    """

    url: str = field(validator=validators.min_len(1))
    ref: str = field(validator=validators.min_len(1))
    sha: str = field(validator=validators.matches_re(SHA_PATTERN))
    token: str | None = field(default=None, repr=False)
    timeout: float = field(default=300.0, validator=validators.gt(0))
    username: str = field(default="x-access-token", validator=validators.min_len(1))


@frozen
class Checkout:
    """A workspace directory holding the files of `sha`."""

    workspace: str
    path: str
    sha: str


class Git(Protocol):
    """Fetches pull request heads into workspaces under `state_dir`."""

    async def fetch(self, source: GitSource, workspace: str) -> Checkout:
        """
        Fetch `source` into the workspace named `workspace` and check out its SHA.

        `workspace` is a name (letters, digits, `-`, `_`, `.`), not a path; an
        existing workspace of that name is replaced. Raises GitError on any
        failure, timeout or when HEAD is not `source.sha`; a failed fetch
        leaves no workspace behind.
        """
        ...

    async def remote_head(self, source: GitSource) -> str:
        """
        The SHA `source.ref` of `source.url` is at now (`git ls-remote`), whatever
        `source.sha` says: what a pull request's head really is when two events
        disagree. Raises GitError on any failure, a timeout or a missing ref.
        """
        ...

    async def remove_workspace(self, workspace: str) -> None:
        """Delete the workspace named `workspace`; a missing one is fine."""
        ...

    def workspaces(self) -> list[str]:
        """The names of the workspaces that exist now (for orphan cleanup)."""
        ...


# --- docker ------------------------------------------------------------------


@frozen
class BuildRequest:
    """
    One `docker build`.

    `args` (from `.prevu.toml`) are always passed; `prevu_args` (`PREVU_*`)
    are passed only for the names the Dockerfile declares with `ARG`, so a
    Dockerfile that does not ask for them never sees them (and Docker does not
    warn about unused build args).
    """

    context: str
    tag: str
    dockerfile: str = "Dockerfile"
    args: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    prevu_args: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    labels: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    memory: int | None = None
    timeout: float = field(default=900.0, validator=validators.gt(0))
    target: str | None = None
    """The stage of a multi-stage Dockerfile (None: the last)."""
    secrets: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping, repr=False)
    """BuildKit secret id -> file path on the server (`RUN --mount=type=secret,id=…`)."""
    cache_from: tuple[str, ...] = field(default=(), converter=_str_tuple)
    """Images whose inline cache the build may reuse (the repository's cache image)."""
    cache_tag: str | None = None
    """Also tag the repository's cache image (inline cache, `cache_labels` only) here."""
    cache_labels: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)


@frozen
class Image:
    """A built image: its id (`sha256:...`) and the tag it was given."""

    id: str
    tag: str


@frozen
class RunRequest:
    """
    One container to create and start on a preview network.

    `nano_cpus` is CPUs times 1e9, as Docker counts them. Containers always run
    with `no-new-privileges` and never privileged; the adapter adds no way to
    turn that off.
    """

    image: str
    name: str
    network: str
    port: int = field(validator=[validators.ge(1), validators.le(65535)])
    env: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    labels: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    command: tuple[str, ...] | None = None
    memory: int | None = None
    nano_cpus: int | None = None
    pids: int | None = None
    volumes: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    """Named volume → container path it is mounted at (created first with `create_volume`)."""
    restart_limit: int = field(default=0, validator=validators.ge(0))
    """The engine restarts a container that exits non-zero (or is OOM-killed) this
    often (Docker's `on-failure:N` policy); 0: never (`no`)."""


@frozen
class RunningContainer:
    """
    A started container and where prevu reaches it.

    `address` is the container's IP address on the preview network: prevu on
    the host reaches it through the bridge, prevu in a container first joins
    that network. `name` is the container name (resolvable through Docker's
    DNS by containers on that network).
    """

    id: str
    name: str
    network: str
    address: str
    port: int


@frozen
class ContainerInfo:
    """A container prevu manages, as the engine reports it."""

    id: str
    name: str
    image: str
    state: str
    labels: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    networks: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    """Network name → this container's IP address on it."""
    exit_code: int | None = None
    """The exit code of a container that ran and stopped (inspect only; None otherwise)."""
    oom_killed: bool = False
    """True when the kernel killed the container for exceeding its memory limit (inspect)."""
    restart_count: int = 0
    """How often the engine restarted the container (inspect)."""
    memory: int | None = None
    """The container's memory limit in bytes (inspect; None: none or not inspected)."""

    @property
    def running(self) -> bool:
        return self.state == "running"


@frozen
class NetworkInfo:
    """A network prevu manages."""

    id: str
    name: str
    labels: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)


@frozen
class ImageInfo:
    """An image prevu built."""

    id: str
    tags: tuple[str, ...] = field(default=(), converter=_str_tuple)
    labels: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)


@frozen
class VolumeInfo:
    """A named volume prevu created (a preview's data, kept across pushes)."""

    name: str
    labels: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)


@frozen
class ExecResult:
    """What a command run in a container answered: its exit code and its output (both streams)."""

    exit_code: int
    output: str


@frozen
class Managed:
    """Everything labelled `prevu.managed=true`: the source of truth for what runs."""

    containers: tuple[ContainerInfo, ...] = ()
    networks: tuple[NetworkInfo, ...] = ()
    images: tuple[ImageInfo, ...] = ()
    volumes: tuple[VolumeInfo, ...] = ()


class Docker(Protocol):
    """The Docker engine, as prevu uses it. Removals are idempotent."""

    async def ping(self) -> bool:
        """True when the engine answers; False (never an exception) when it does not."""
        ...

    async def build(self, request: BuildRequest, on_log: LogSink) -> Image:
        """
        Build and tag an image, feeding each output line to `on_log`.

        Raises DockerError("build", reason) when the build fails or exceeds
        `request.timeout` (the lines up to the failure have been fed to `on_log`).

        Cancellation (added for the orchestrator, which cancels a build that a
        newer commit supersedes): cancelling the Deferred that wraps this
        coroutine (`Deferred.fromCoroutine(docker.build(...)).cancel()`)
        aborts the build soon, e.g. by closing the build stream from the
        worker thread between two output chunks, and fails with
        CancelledError; the image is then not tagged, or removed.
        """
        ...

    async def create_network(self, name: str, labels: Mapping[str, str]) -> NetworkInfo:
        """Create a bridge network (or return the existing one of that name)."""
        ...

    async def run(self, request: RunRequest) -> RunningContainer:
        """Create and start a container; when prevu itself runs in a container, join its network."""
        ...

    async def start(self, container: str) -> RunningContainer:
        """Start a stopped container again (waking a sleeping preview); its address may change."""
        ...

    async def stop(self, container: str, timeout: float = 10.0) -> None:
        """Stop a container; a missing or stopped one is fine."""
        ...

    async def remove_container(self, container: str) -> None:
        """Remove a container, running or not; a missing one is fine."""
        ...

    async def remove_image(self, image: str) -> None:
        """Remove an image by id or tag; a missing one is fine."""
        ...

    async def remove_network(self, name: str) -> None:
        """Remove a network (leaving it first if prevu joined it); a missing one is fine."""
        ...

    async def remove_volume(self, name: str) -> None:
        """Remove a named volume and its data; a missing one is fine."""
        ...

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        """
        Create the named volume `name` with `labels` (plus `prevu.managed`), or
        answer the existing one with its own labels (the caller checks the owner).
        """
        ...

    async def inspect_container(self, container: str) -> ContainerInfo | None:
        """The container's current state (with exit code, OOM kill, restarts), or None."""
        ...

    async def exec_in(self, container: str, argv: Sequence[str]) -> ExecResult:
        """
        Run `argv` in the running `container` and wait for it to end.

        Raises DockerError when the container does not exist or is not running.
        """
        ...

    async def container_logs(self, container: str, tail: int = 200) -> list[str]:
        """The last `tail` lines of a container's output (stdout and stderr)."""
        ...

    async def list_managed(self) -> Managed:
        """Every container (running or not), network, image and volume labelled as managed."""
        ...


# --- store ---------------------------------------------------------------------


Decision = Literal["queued", "ignored", "duplicate", "refused", "stale", "failed"]
"""What the webhook handler decided for one delivery (SPEC §6, issue 11)."""


@frozen
class DeliveryEntry:
    """
    One verified webhook delivery and the decision about it, for
    `GET /api/deliveries` and `prevu why`. `at` is epoch seconds; `seq`
    orders entries (0 before the store numbered it); `outcome` is filled in
    later (`superseded by <sha>`); `repo`, `number` and `sha` are empty/0 for
    events that concern no pull request.
    """

    delivery: str
    forge: str
    event: str
    action: str
    repo: str
    number: int
    sha: str
    at: float
    decision: Decision
    reason: str = ""
    preview: str = ""
    outcome: str = ""
    seq: int = 0


@frozen
class UnverifiedDelivery:
    """
    A delivery that failed signature or token verification, recorded without
    parsing its body: the delivery header, forge, time (epoch s), the peer
    address and why it was refused. Never attached to a pull request.
    """

    delivery: str
    forge: str
    at: float
    peer: str
    reason: str


@frozen
class PreviewRecord:
    """
    A preview as stored: what the API lists plus what the orchestrator needs
    to carry on after a restart. Timestamps are seconds since the epoch.

    `data` holds any further string values the orchestrator wants to keep
    (stored as JSON), so that new needs do not require a schema change.
    """

    id: str = field(validator=validators.min_len(1))
    repo: str
    number: int
    branch: str = ""
    sha: str = ""
    status: PreviewStatus = field(default="queued", validator=validators.in_(PREVIEW_STATUSES))
    url: str = ""
    host: str = ""
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    access: Access = field(default="private", validator=validators.in_(("private", "public")))
    forge: str = "github"
    clone_url: str = ""
    ref: str = ""
    container: str | None = None
    image: str | None = None
    network: str | None = None
    closed: bool = False
    data: Mapping[str, str] = field(default=Factory(dict), converter=_frozen_mapping)


@frozen
class LogLine:
    """One stored log line; `seq` increases across all previews (use it to follow)."""

    seq: int
    preview: str
    stream: LogStream
    at: float
    line: str


LogWatcher = Callable[[LogLine], None]


class Store(Protocol):
    """Previews and their log lines. Synchronous; reactor thread only."""

    def list_previews(self) -> list[PreviewRecord]:
        """Every preview, oldest first."""
        ...

    def get(self, preview: str) -> PreviewRecord | None:
        """One preview by id, or None."""
        ...

    def upsert(self, record: PreviewRecord) -> None:
        """Insert or replace the preview with `record.id`."""
        ...

    def delete(self, preview: str) -> None:
        """Delete a preview and its logs; a missing one is fine."""
        ...

    def append_log(self, preview: str, stream: LogStream, line: str) -> LogLine:
        """Store one line (timestamped now) and tell the watchers."""
        ...

    def read_logs(self, preview: str, after: int = 0, limit: int = 10_000) -> list[LogLine]:
        """The preview's lines with `seq > after`, oldest first, at most `limit`."""
        ...

    def watch_logs(self, watcher: LogWatcher) -> Callable[[], None]:
        """Call `watcher` with every new line; returns a function that stops it."""
        ...

    def remember_delivery(self, delivery: str) -> bool:
        """Record a webhook delivery id; False when it was seen before (a redelivery)."""
        ...

    def record_delivery(self, entry: DeliveryEntry) -> DeliveryEntry:
        """
        Append `entry` to the delivery trail (kept to the newest `deliveries_kept`);
        a queued entry with a SHA marks the PR's earlier queued entries of
        another SHA `superseded by <sha12>`. Returns it numbered.
        """
        ...

    def fill_outcome(self, forge: str, delivery: str, outcome: str) -> None:
        """Set the `outcome` of delivery `delivery` of `forge` (a command done or refused)."""
        ...

    def delivery_trail(self, repo: str = "", number: int = 0) -> list[DeliveryEntry]:
        """The trail, oldest first; of one repository (case-insensitive) and number when given."""
        ...

    def record_unverified(self, entry: UnverifiedDelivery) -> bool:
        """
        Keep a delivery that failed verification in its own bounded bucket;
        False (nothing kept) when over the rate limit (60 a minute).
        """
        ...

    def unverified_deliveries(self) -> list[UnverifiedDelivery]:
        """The unverified bucket, oldest first."""
        ...

    def seen_delivery(self, delivery: str) -> bool:
        """
        True when `delivery` was remembered (and not trimmed yet). The webhook
        handler asks this first and remembers a delivery only once it was acted
        on, so that an ignored, refused or failed one is processed again when
        the forge redelivers it.
        """
        ...
