"""
The lifecycle's vocabulary: frozen values, states, events and effects.

Pure core (attrs only). `Preview` is the state of one preview; its public
`status` is derived from it, never stored separately. Events come in (from
webhooks, the API and the results of jobs); effects go out as data for the
orchestrator to carry out. The rules over them live in
`prevu.lifecycle.transitions`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from attrs import field, frozen, validators

from prevu.ports import PreviewStatus
from prevu.revisions import SHA_PATTERN

SHA = SHA_PATTERN
Gate = Literal["open", "approve"]
"""How a deploy was admitted: `open`, or `approve` (a fork head that waits for approval)."""
JobKind = Literal["build", "start", "teardown", "suspend", "resume"]


# --- values ------------------------------------------------------------------


def _endpoints(value: Iterable[tuple[str, str, int]]) -> tuple[tuple[str, str, int], ...]:
    return tuple((str(s), str(a), int(p)) for s, a, p in value)


@frozen
class Revision:
    """
    A commit to deploy. `serial` grows with every accepted deploy request,
    so that a redeploy of the same SHA is a new revision.
    """

    sha: str = field(validator=validators.matches_re(SHA))
    branch: str = ""
    serial: int = field(default=0, validator=validators.ge(0))

    @property
    def short(self) -> str:
        return self.sha[:12]


@frozen
class Deployment:
    """A started, healthy container and where it is reached."""

    revision: Revision
    container: str
    image: str
    address: str
    port: int = field(validator=[validators.ge(1), validators.le(65535)])
    extra: tuple[tuple[str, str, int], ...] = field(default=(), converter=_endpoints)
    """Compose previews: (service, address, port) of each `[compose] expose` service."""


@frozen
class Job:
    """The one job in flight; `started` is False while a build waits for a build slot."""

    kind: JobKind
    revision: Revision | None = None
    image: str | None = None
    started: bool = False


@frozen
class Preview:
    """The lifecycle state of one preview."""

    closed: bool = False
    target: Revision | None = None
    serving: Deployment | None = None
    job: Job | None = None
    awaiting: Revision | None = None
    approved: str | None = None
    failed: Revision | None = None
    error: str | None = None
    note: str | None = None
    asleep: bool = False
    clean: bool = True
    held: bool = False
    """The failed target's `[data] on_push` failed while the previous revision serves:
    that one keeps serving and the status stays `running`, with `error` (docs/data.md)."""

    @property
    def status(self) -> PreviewStatus:
        """The public status (SPEC §4), derived from the state."""
        if self.closed:
            return "stopped"
        if self.job is not None:
            kind = self.job.kind
            if kind == "build":
                return "building" if self.job.started else "queued"
            if kind in ("start", "resume"):
                return "starting"
            if kind == "suspend":
                return "sleeping"
            return "stopped"
        if self.awaiting is not None:
            return "queued"
        if self.failed is not None and self.failed == self.target and not self.holding:
            return "failed"
        if self.serving is not None:
            return "sleeping" if self.asleep else "running"
        return "queued" if self.target is not None else "stopped"

    @property
    def holding(self) -> bool:
        """True when a failed `on_push` left the previous revision serving (see `held`)."""
        return self.held and self.serving is not None and self.failed == self.target

    @property
    def detail(self) -> str | None:
        """A human explanation of the status, when there is more to say than the status."""
        if self.awaiting is not None and not self.closed:
            return (
                f"waiting for approval of {self.awaiting.short}: a maintainer comments "
                "/preview approve"
            )
        if self.status == "failed":
            return self.error
        return self.note

    @property
    def sha(self) -> str | None:
        """The commit this preview is about: the wanted one, else the one serving."""
        if self.awaiting is not None:
            return self.awaiting.sha
        if self.target is not None:
            return self.target.sha
        return self.serving.revision.sha if self.serving else None

    @property
    def active(self) -> bool:
        """True when the preview holds, or is about to hold, Docker resources (max_previews)."""
        return not self.closed and (self.serving is not None or self.job is not None)


# --- events ------------------------------------------------------------------


@frozen
class Deploy:
    """Deploy `sha` (opened, reopened, pushed). `revive` may bring back a closed preview."""

    sha: str = field(validator=validators.matches_re(SHA))
    branch: str = ""
    gate: Gate = "open"
    revive: bool = False
    room: bool = True
    """False when `max_previews` is reached and this preview holds no resources yet."""
    limit: int = 0


@frozen
class Deny:
    """This pull request may not have a preview (fork policy)."""

    sha: str = field(validator=validators.matches_re(SHA))
    branch: str
    reason: str


@frozen
class Approve:
    """A trusted maintainer approved the fork head awaiting approval."""

    by: str


@frozen
class Close:
    """The pull request was closed or merged, or the preview deleted."""

    reason: str


@frozen
class Redeploy:
    """Build the current target again (API)."""


@frozen
class Poke:
    """Re-evaluate the state (after a restart): start whatever is due."""


@frozen
class Sleep:
    """The preview was idle: stop its container, keep it routable."""


@frozen
class Wake:
    """A request arrived for a sleeping preview."""


@frozen
class BuildStarted:
    """The build got a build slot and runs."""

    revision: Revision


@frozen
class Built:
    """The image of `revision` is built."""

    revision: Revision
    image: str


@frozen
class BuildFailed:
    """The build of `revision` failed, or was cancelled or superseded."""

    revision: Revision
    reason: str


@frozen
class Started:
    """A container of `deployment.revision` is running and healthy."""

    deployment: Deployment


@frozen
class StartFailed:
    """
    The container of `revision` did not start or never became healthy; or
    (`on_push`) it was healthy but its `[data] on_push` command failed.
    """

    revision: Revision
    reason: str
    on_push: bool = False


@frozen
class Suspended:
    """The container was stopped (sleep)."""


@frozen
class TornDown:
    """Everything of the preview is gone."""


@frozen
class Vanished:
    """The serving container is gone or stopped (found by reconcile): mark it failed."""

    container: str
    reason: str | None = None
    """Why, for the user (None: "vanished or stopped"); e.g. a restart limit reached."""


@frozen
class Adopt:
    """A running container of this preview was found (restart): serve it."""

    deployment: Deployment
    asleep: bool = False


@frozen
class Heal:
    """
    The serving container stopped, crashed or was removed behind prevu's back
    (found by reconcile, issue 15): start it again (`recreate`: a new container
    from its image). `reason` says what happened; it is the preview's `error`
    while it heals (status `starting`).
    """

    container: str
    reason: str
    recreate: bool = False


Event = (
    Deploy
    | Deny
    | Approve
    | Close
    | Redeploy
    | Poke
    | Sleep
    | Wake
    | BuildStarted
    | Built
    | BuildFailed
    | Started
    | StartFailed
    | Suspended
    | TornDown
    | Vanished
    | Adopt
    | Heal
)


# --- effects -----------------------------------------------------------------


@frozen
class Build:
    """Fetch the revision and build its image; answer BuildStarted, then Built or BuildFailed."""

    revision: Revision


@frozen
class CancelBuild:
    """Abort the build of `revision` (it answers BuildFailed)."""

    revision: Revision


@frozen
class Start:
    """Run `image` on the preview network and wait until healthy: Started or StartFailed."""

    revision: Revision
    image: str


@frozen
class RouteTo:
    """Point the preview's host at `deployment` (state `ready`)."""

    deployment: Deployment


@frozen
class RouteBuilding:
    """Show the self-refreshing 503 page on the preview's host while nothing serves."""


@frozen
class RouteAsleep:
    """Mark the route sleeping: the proxy wakes the preview on the next request."""

    deployment: Deployment


@frozen
class Unroute:
    """Remove the preview's host from the routes (404)."""


@frozen
class Discard:
    """Remove a container and/or image that does not serve (old or stale)."""

    container: str | None = None
    image: str | None = None


@frozen
class Suspend:
    """Stop the serving container; answer Suspended."""

    deployment: Deployment


@frozen
class Resume:
    """Start the stopped container again; answer Started or StartFailed."""

    deployment: Deployment


@frozen
class Teardown:
    """Remove containers, images, network and workspace of the preview; answer TornDown."""


Effect = (
    Build
    | CancelBuild
    | Start
    | RouteTo
    | RouteBuilding
    | RouteAsleep
    | Unroute
    | Discard
    | Suspend
    | Resume
    | Teardown
)


@frozen
class Transition:
    """The new state and the effects to carry out, in order."""

    state: Preview
    effects: tuple[Effect, ...] = ()
