"""
The dashboard: the list of previews at `/`, one page per preview at
`/previews/{id}`, their live updates, and the actions on a preview.

- `GET /?status=all|running|failed` — the list; destroyed previews older than
  `[previews] history` are folded into a `<details>` history.
- `GET /events[?preview=ID]` — Server-Sent Events: `event: preview` with the
  list row (JSON, `prevu.control.views.row`) after each change of a visible
  preview (`Orchestrator.watch`).
- `GET /previews/{id}` — status, log tail, deployments, delivery trail, actions.
- `GET /previews/{id}/logs` — the log as text; with `Accept: text/event-stream`
  the stored lines then every new one (`id:` is the line's seq, so a
  reconnecting `EventSource` resumes with `Last-Event-ID`).
- `POST /previews/{id}/{verb}` — an action of `prevu.control.actions.ACTIONS`:
  403 without a valid CSRF token or for a non-operator, with the reason.
- `GET /static/live.js` — the few lines of our own JavaScript that follow the
  streams; every page is complete without it.

Seeing follows the login (`visible`, from the control app); acting needs an
operator (`prevu.control.operators`). Pages come from the Jinja2 templates
(`prevu.control.rendering`); log lines are masked before they are shown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Request

from prevu.config import Config
from prevu.control import views
from prevu.control.actions import ActionContext, Operations, ShareLinks, offered
from prevu.control.operators import Keeper, WritePermission, operator_refusal
from prevu.control.rendering import Pages, default_pages
from prevu.control.responses import NO_STORE, Answer, header
from prevu.errors import DockerError, Problem, RequestRefused
from prevu.masking import Masker
from prevu.ports import LogLine, PreviewRecord, Store

PAGE_LINES = 300
"""Log lines shown in a preview's page before the live stream takes over."""
TEXT_LINES = 5000
"""Log lines of `/previews/{id}/logs` as text."""
HEARTBEAT = 20.0
"""Seconds between SSE comments, so that idle streams are not cut by proxies."""
RUN_POLL = 2.0
"""Seconds between two reads of the container's output for a followed log."""
RUN_TAIL = 100
"""Lines of the container's output read each time (and shown on the page)."""

Visible = Callable[[str], bool] | None
log = Logger()


class Previews(Operations, Protocol):
    """What the dashboard needs of the orchestrator (`prevu.orchestrator.Orchestrator`)."""

    def previews(self) -> list[PreviewRecord]: ...

    def get(self, preview: str) -> PreviewRecord | None: ...

    def watch(self, callback: Callable[[PreviewRecord], None]) -> Callable[[], None]: ...


class Sessions(ShareLinks, Protocol):
    """What the dashboard needs of the login (`prevu.control.login.LoginPages`)."""

    login_configured: bool  # users_file or [auth.github]: else nobody can log in

    def reviewer(self, request: Request) -> str | None: ...

    def csrf_token(self, request: Request) -> str: ...

    def csrf_ok(self, request: Request) -> bool: ...


class RunOutput(Protocol):
    """The container output (the Docker port's `container_logs`)."""

    async def container_logs(self, container: str, tail: int = 200) -> list[str]: ...


@define
class DeployHistory:
    """
    The system log lines of each preview, read incrementally from the store,
    and the deployments in them (`views.deployments`). Reactor thread only.
    """

    store: Store
    seen: dict[str, tuple[int, list[LogLine]]] = field(factory=dict)

    def of(self, preview: str) -> list[views.Deploy]:
        """The deployments of `preview` in its stored log, oldest first."""
        after, lines = self.seen.get(preview, (0, []))
        while True:
            page = self.store.read_logs(preview, after=after, limit=5000)
            if not page:
                break
            lines += [line for line in page if line.stream == "system"]
            after = page[-1].seq
        self.seen[preview] = (after, lines)
        return views.deployments(lines)

    def last(self, preview: str) -> views.Deploy | None:
        """The last deployment of `preview` (perhaps in progress), or None."""
        found = self.of(preview)
        return found[-1] if found else None


@define
class Dashboard:
    """The dashboard's handlers, delegated to from the control app (`prevu.control.app`)."""

    config: Config
    orchestrator: Previews
    store: Store
    clock: Any
    """The reactor (`seconds`, `callLater`); None only in a bare app: the wall clock."""
    sessions: Sessions | None = None
    mask: Masker = lambda line: line
    docker: RunOutput | None = None
    keeper: Keeper | None = None
    """The keep/extend facade; None until the orchestrator offers it (buttons hidden)."""
    may_write: WritePermission | None = None
    """Forge write permission; None: only `[auth] admins` are operators."""
    pages: Pages = field(factory=default_pages)
    history: DeployHistory = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.history = DeployHistory(self.store)

    # --- shared ---------------------------------------------------------------------

    def _now(self) -> float:
        # A bare control app (tests of one page) may have no reactor: the wall clock then.
        return float(self.clock.seconds()) if self.clock is not None else time.time()

    def _login(self) -> bool:
        """Whether anyone can log in (False: the actions are the CLI's, see operators)."""
        return self.sessions is not None and self.sessions.login_configured

    def _user(self, request: Request) -> str | None:
        return self.sessions.reviewer(request) if self.sessions is not None else None

    def _frame(self, request: Request, title: str) -> dict[str, Any]:
        """What every page's frame shows: the title, who is logged in, the logout token."""
        user = self._user(request)
        csrf = self.sessions.csrf_token(request) if self.sessions is not None else ""
        return {"title": title, "user": user, "operator": user in self.config.auth.admins,
                "csrf": csrf}

    def _row(self, record: PreviewRecord) -> dict[str, Any]:
        link = views.pr_url(
            record.forge, record.repo, record.number,
            self.config.github.api_url, self.config.gitlab.url,
        )
        shown = views.row(record, self._now(), self.history.last(record.id), link)
        shown["note"] = self.mask(shown["note"])
        return shown

    def _record(self, preview: str, visible: Visible) -> PreviewRecord:
        record = self.orchestrator.get(preview)
        # A preview the reviewer may not see is answered as one that does not exist.
        if record is None or (visible is not None and not visible(record.repo)):
            raise RequestRefused("not_found", f"no preview {preview!r}")
        return record

    def _masked(self, line: LogLine) -> str:
        return f"[{line.stream}] {self.mask(line.line)}"

    # --- the list -------------------------------------------------------------------

    def listing(self, request: Request, visible: Visible) -> Answer:
        """`GET /`: the previews the reviewer sees, filtered by `?status=`."""
        wanted = views.parse_filter(_arg(request, "status"))
        records = [
            r for r in self.orchestrator.previews() if visible is None or visible(r.repo)
        ]
        keep = self.config.previews.history
        current, old = views.arrange(records, self._now(), keep, wanted)
        recent, _ = views.arrange(records, self._now(), keep, "all")
        return self.pages.render(
            "list.html",
            **self._frame(request, f"prevu: {len(current)} previews"),
            rows=[self._row(r) for r in current],
            history=[self._row(r) for r in old],
            history_after=views.short_duration(keep),
            filters=views.FILTERS,
            current=wanted,
            counts=views.counts(recent),
        )

    async def events(self, request: Request, visible: Visible) -> Answer:
        """`GET /events`: a `preview` event with the row of each visible preview that changes."""
        only = _arg(request, "preview")
        _event_stream(request)
        request.write(b": live\n\n")

        def changed(record: PreviewRecord) -> None:
            if only and record.id != only:
                return
            if visible is not None and not visible(record.repo):
                return
            request.write(b"event: preview\ndata: %s\n\n" % json.dumps(self._row(record)).encode())

        await self._stream(request, self.orchestrator.watch(changed))
        return Answer("ok")

    async def _stream(self, request: Request, stop: Callable[[], None]) -> None:
        """Keep an event stream open with heartbeats until the client leaves; then `stop`."""
        finished: Deferred[None] = Deferred()
        beat = LoopingCall(lambda: request.write(b": heartbeat\n\n"))
        if self.clock is not None:
            beat.clock = self.clock
            beat.start(HEARTBEAT, now=False)

        def done(_: object) -> None:
            stop()
            if beat.running:
                beat.stop()
            if not finished.called:
                finished.callback(None)

        request.notifyFinish().addBoth(done)
        await finished

    # --- a preview ------------------------------------------------------------------

    async def page(self, request: Request, preview: str, visible: Visible) -> Answer:
        """`GET /previews/{id}`. :raises RequestRefused: not_found (unknown, not visible)."""
        record = self._record(preview, visible)
        tail = self._tail(preview, PAGE_LINES)
        frame = self._frame(request, f"{record.id} · prevu")
        refusal = await operator_refusal(
            frame["user"], record.repo, self.config.auth.admins, self.may_write, self._login()
        )
        frame["operator"] = refusal is None
        return self.pages.render(
            "preview.html",
            **frame,
            r=self._row(record),
            why_not=refusal or "",
            actions=offered(self.keeper),
            lines=[self._masked(line) for line in tail],
            after=tail[-1].seq if tail else 0,
            following=True,
            run_output=await self._run_output(record),
            deploys=[_deploy_view(d) for d in reversed(self.history.of(preview))],
            trail=self._trail(record),
        )

    def _tail(self, preview: str, count: int) -> list[LogLine]:
        lines: list[LogLine] = []
        after = 0
        while True:
            page = self.store.read_logs(preview, after=after, limit=5000)
            if not page:
                return lines
            lines = (lines + page)[-count:]
            after = page[-1].seq

    async def _run_output(self, record: PreviewRecord) -> list[str]:
        if record.container is None or self.docker is None:
            return []
        try:
            output = await self.docker.container_logs(record.container, tail=RUN_TAIL)
        except DockerError as error:
            return [f"(container output unavailable: {error})"]
        return [self.mask(line) for line in output]

    def _trail(self, record: PreviewRecord) -> list[dict[str, str]] | None:
        if record.forge not in ("github", "gitlab"):
            return None
        return [
            {
                "at": views.iso(entry.at),
                "event": entry.event,
                "action": entry.action,
                "sha": entry.sha[:12],
                "decision": entry.decision,
                "outcome": entry.outcome,
                "reason": self.mask(entry.reason),
            }
            for entry in self.store.delivery_trail(record.repo, record.number)
        ][-50:]

    async def logs(self, request: Request, preview: str, visible: Visible) -> Answer:
        """`GET /previews/{id}/logs`: text, or a live stream for `Accept: text/event-stream`."""
        self._record(preview, visible)
        if "text/event-stream" in (header(request, b"accept") or ""):
            await self._follow(request, preview, _after(request))
            return Answer("ok")
        text = "".join(self.mask(line.line) + "\n" for line in self._tail(preview, TEXT_LINES))
        headers = (
            (b"content-type", b"text/plain; charset=utf-8"),
            *NO_STORE,
            (b"x-content-type-options", b"nosniff"),
        )
        return Answer("ok", text.encode(), headers)

    async def _follow(self, request: Request, preview: str, after: int) -> None:
        """
        The stored lines after `after`, then each new one (`id:` its seq); and
        the container's new output every `RUN_POLL` seconds as `event: run`.
        """
        _event_stream(request)

        def send(line: LogLine) -> None:
            data = "".join(f"data: {part}\n" for part in self._masked(line).split("\n"))
            request.write(f"id: {line.seq}\n{data}\n".encode())

        for line in self.store.read_logs(preview, after=after):
            send(line)
        request.write(b": following\n\n")

        def watcher(line: LogLine) -> None:
            if line.preview == preview:
                send(line)

        stop_logs = self.store.watch_logs(watcher)
        stop_run = self._follow_run(request, preview)

        def stop() -> None:
            stop_logs()
            stop_run()

        await self._stream(request, stop)

    def _follow_run(self, request: Request, preview: str) -> Callable[[], None]:
        """Poll the serving container's output; send what is new as `run` events."""
        if self.docker is None or self.clock is None:
            return lambda: None
        docker = self.docker
        # The first read is what the page already shows: a baseline, not sent.
        seen: dict[str, Any] = {"container": None, "lines": None}

        async def poll() -> None:
            record = self.orchestrator.get(preview)
            container = record.container if record is not None else None
            if container is None:
                return
            try:
                output = await docker.container_logs(container, RUN_TAIL)
            except DockerError:
                return
            lines = [self.mask(line) for line in output]
            if seen["lines"] is None:
                fresh: list[str] = []
            elif container != seen["container"]:
                fresh = [f"--- container {container[:12]} ---", *lines]
            else:
                fresh = views.new_lines(seen["lines"], lines)
            seen.update(container=container, lines=lines)
            for line in fresh:
                request.write(f"event: run\ndata: {line}\n\n".encode())

        reader = LoopingCall(lambda: Deferred.fromCoroutine(poll()))
        reader.clock = self.clock
        reader.start(RUN_POLL, now=True)
        return lambda: reader.stop() if reader.running else None

    # --- actions --------------------------------------------------------------------

    def refusal(
        self, request: Request, preview: str, reason: str, problem: Problem = "forbidden"
    ) -> Answer:
        """A page saying why an action was refused, answered with `problem`'s status."""
        return self.pages.render(
            "message.html", problem, **{**self._frame(request, "Refused")},
            refused=True, message=reason, link=None,
            back=f"/previews/{preview}", back_label=preview,
        )

    async def act(self, request: Request, preview: str, verb: str, visible: Visible) -> Answer:
        """
        `POST /previews/{id}/{verb}`: check the CSRF token, the preview, the
        verb and the operator, then run the action. Refusals answer 403 (or
        404/409) as a page that says why.
        """
        frame = self._frame(request, "prevu")
        try:
            if self.sessions is None or not self.sessions.csrf_ok(request):
                raise RequestRefused(
                    "forbidden", "missing or expired form token (CSRF): reload the page"
                )
            record = self._record(preview, visible)
            action = next((a for a in offered(self.keeper) if a.verb == verb), None)
            if action is None:
                raise RequestRefused("not_found", f"no action {verb!r}")
            user = frame["user"]
            refusal = await operator_refusal(
                user, record.repo, self.config.auth.admins, self.may_write, self._login()
            )
            if refusal is not None:
                raise RequestRefused("forbidden", refusal)
            assert user is not None
            context = ActionContext(
                record=record,
                user=user,
                form=lambda name: _arg(request, name),
                orchestrator=self.orchestrator,
                keeper=self.keeper,
                shares=self.sessions,
            )
            done = action.run(context)
        except RequestRefused as refused:
            log.info(
                "dashboard action {verb} on {preview} refused: {reason}",
                verb=verb, preview=preview, reason=refused.reason,
            )
            return self.refusal(request, preview, refused.reason, refused.problem)
        log.info("dashboard action {verb} on {preview} by {user}", verb=verb, preview=preview,
                 user=context.user)
        if done.link is None:
            location = f"/previews/{preview}"
            return Answer("see_other", b"", ((b"location", location.encode()), *NO_STORE))
        return self.pages.render(
            "message.html", **{**frame, "title": f"{verb}: {preview}"}, refused=False,
            message=done.message, link=done.link, back=f"/previews/{preview}", back_label=preview,
        )


def _event_stream(request: Request) -> None:
    """Headers of a Server-Sent Events answer (never cached, never buffered by a proxy)."""
    request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-accel-buffering", b"no")


def _deploy_view(deploy: views.Deploy) -> dict[str, str]:
    css = {"succeeded": "running", "failed": "failed", "in progress": "building"}
    return {
        "sha": deploy.sha[:12],
        "started": views.iso(deploy.started),
        "duration": views.short_duration(deploy.duration),
        "result": deploy.result,
        "css": css.get(deploy.result, "stopped"),
        "reason": deploy.reason,
    }


def _arg(request: Request, name: str) -> str:
    args: Any = request.args or {}
    values = args.get(name.encode()) or [b""]
    return str(values[0].decode("utf-8", "replace"))


def _after(request: Request) -> int:
    raw = header(request, b"last-event-id") or _arg(request, "after") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        raise RequestRefused("malformed", f"bad log position {raw!r}") from None
