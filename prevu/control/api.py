"""
The previews API (SPEC §4) and `/metrics` (the dashboard is `prevu.control.dashboard`).

Every `/api/previews...` route and `/metrics` need `Authorization: Bearer
<api_token>`: 401 without a valid one; with no `api_token` configured the API
is off and answers 403 saying so. Handlers return `Answer`s and raise
`RequestRefused(problem, reason)`; the control app's funnel turns both into
HTTP answers.

- `GET /api/previews` — JSON list of previews.
- `GET /api/previews/{id}` — one preview.
- `GET /api/previews/{id}/logs` — build, run and system log lines as plain
  text; `Accept: text/event-stream` follows them as Server-Sent Events
  (`Last-Event-ID` or `?after=SEQ` resumes).
- `POST /api/previews/{id}/redeploy` — build the current commit again (202).
- `POST /api/previews/{id}/reset` — drop the preview's data (volumes), start
  its commit again, run `[data] on_push` then `seed` (202; docs/data.md).
- `DELETE /api/previews/{id}` — tear the preview down (202; listed as stopped).
- `POST /api/previews` — `prevu up`: `{"repo", "branch", "sha", "clone_url"}` (202).
- `POST /api/previews/{id}/keep` — never remove it for being idle (200, `keep_until: "forever"`).
- `POST /api/previews/{id}/extend` — `{"by": "3d"}`: keep it at least that much longer
  (200, `keep_until` ISO 8601); the same facade as `/preview keep` and `/preview extend`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.server import Request

from prevu.config import Config
from prevu.control.responses import (
    BEARER_CHALLENGE,
    NO_STORE,
    Answer,
    bearer_ok,
    header,
    json_answer,
)
from prevu.errors import DockerError, RequestRefused
from prevu.orchestrator.engine import Receipt
from prevu.orchestrator.metrics import Metrics
from prevu.ports import DeliveryEntry, LogLine, PreviewRecord, Store, UnverifiedDelivery
from prevu.revisions import SHA_PATTERN
from prevu.units import parse_duration

SHA = re.compile(SHA_PATTERN)
REPO = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
BRANCH = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


class PreviewOperations(Protocol):
    """What the API needs of the orchestrator."""

    def previews(self) -> list[PreviewRecord]: ...

    def get(self, preview: str) -> PreviewRecord | None: ...

    def redeploy(self, preview: str) -> bool: ...

    def reset(self, preview: str) -> bool: ...

    def destroy(self, preview: str, reason: str = ...) -> bool: ...

    def deploy_local(
        self, repo: str, branch: str, sha: str, clone_url: str, access: str | None = None
    ) -> Receipt: ...

    def gauges(self) -> list[tuple[str, Any, float]]: ...

    def watch(self, callback: Callable[[PreviewRecord], None]) -> Callable[[], None]: ...

    def keep(self, preview: str) -> float | None: ...

    def extend(self, preview: str, seconds: float) -> float | None: ...


class RunLogs(Protocol):
    """The container output (the Docker port's `container_logs`)."""

    async def container_logs(self, container: str, tail: int = 200) -> list[str]: ...


def _iso(seconds: float) -> str | None:
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def preview_json(record: PreviewRecord) -> dict[str, Any]:
    """The API's view of a preview (SPEC §4 fields first)."""
    return {
        "id": record.id,
        "repo": record.repo,
        "number": record.number,
        "branch": record.branch,
        "sha": record.sha,
        "status": record.status,
        "url": record.url,
        "host": record.host,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "error": record.error,
        "detail": record.data.get("detail"),
        "access": record.access,
        "forge": record.forge,
        "container": record.container,
        "closed": record.closed,
    }


def delivery_json(entry: DeliveryEntry) -> dict[str, Any]:
    """The API's view of one webhook delivery and its decision (`GET /api/deliveries`)."""
    return {
        "seq": entry.seq,
        "delivery": entry.delivery,
        "forge": entry.forge,
        "event": entry.event,
        "action": entry.action,
        "repo": entry.repo,
        "number": entry.number,
        "sha": entry.sha,
        "at": _iso(entry.at),
        "decision": entry.decision,
        "reason": entry.reason or None,
        "preview": entry.preview or None,
        "outcome": entry.outcome or None,
    }


def unverified_json(entry: UnverifiedDelivery) -> dict[str, Any]:
    """The API's view of a delivery that failed verification (body never parsed)."""
    return {
        "delivery": entry.delivery,
        "forge": entry.forge,
        "at": _iso(entry.at),
        "peer": entry.peer,
        "reason": entry.reason,
    }


def _log_text(line: LogLine) -> str:
    stamp = _iso(line.at) or ""
    return f"{stamp} [{line.stream}] {line.line}"


@define
class PreviewsApi:
    """The API handlers, delegated to from the control app."""

    config: Config
    orchestrator: PreviewOperations
    store: Store
    docker: RunLogs | None = None
    metrics: Metrics = field(factory=Metrics)
    log: Logger = field(factory=Logger)

    # --- auth -------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        """Raise RequestRefused unless the request carries the bearer api_token."""
        token = self.config.server.api_token
        if not token:
            reason = "the API is off: set [server] api_token (or api_token_file)"
            raise RequestRefused("forbidden", reason)
        if not bearer_ok(request, token):
            for name, value in BEARER_CHALLENGE:
                request.setHeader(name, value)
            raise RequestRefused("unauthenticated", "missing or wrong bearer token")

    def _record(self, preview: str) -> PreviewRecord:
        record = self.orchestrator.get(preview)
        if record is None:
            raise RequestRefused("not_found", f"no preview {preview!r}")
        return record

    # --- routes -------------------------------------------------------------------

    def list(self, request: Request) -> Answer:
        self.authorize(request)
        return json_answer("ok", [preview_json(r) for r in self.orchestrator.previews()])

    def deliveries(self, request: Request) -> Answer:
        """`GET /api/deliveries?repo=OWNER/NAME&number=N`: the delivery trail, oldest first."""
        self.authorize(request)
        repo, raw = _arg(request, b"repo"), _arg(request, b"number")
        if raw and not raw.isdigit():
            raise RequestRefused("malformed", f"number must be a positive integer, got {raw!r}")
        if raw and not repo:
            raise RequestRefused("malformed", "number needs repo")
        trail = self.store.delivery_trail(repo, int(raw or 0))
        return json_answer("ok", [delivery_json(entry) for entry in trail])

    def unverified(self, request: Request) -> Answer:
        """`GET /api/deliveries/unverified`: deliveries that failed verification, oldest first."""
        self.authorize(request)
        return json_answer("ok", [unverified_json(e) for e in self.store.unverified_deliveries()])

    def show(self, request: Request, preview: str) -> Answer:
        self.authorize(request)
        return json_answer("ok", preview_json(self._record(preview)))

    def redeploy(self, request: Request, preview: str) -> Answer:
        self.authorize(request)
        record = self._record(preview)
        if record.closed:
            reason = f"preview {preview!r} is closed; reopen the pull request"
            raise RequestRefused("conflict", reason)
        self.orchestrator.redeploy(preview)
        return json_answer("accepted", preview_json(self._record(preview)))

    def reset(self, request: Request, preview: str) -> Answer:
        """Wipe the preview's data and start its commit again (docs/data.md): 202, or 409."""
        self.authorize(request)
        record = self._record(preview)
        if record.closed or not self.orchestrator.reset(preview):
            reason = f"preview {preview!r} cannot be reset: it is closed or has no commit yet"
            raise RequestRefused("conflict", reason)
        return json_answer("accepted", preview_json(self._record(preview)))

    def delete(self, request: Request, preview: str) -> Answer:
        self.authorize(request)
        self._record(preview)
        self.orchestrator.destroy(preview, "deleted through the API")
        return json_answer("accepted", preview_json(self._record(preview)))

    def _kept(self, preview: str, until: float | None) -> Answer:
        if until is None:
            raise RequestRefused("not_found", f"no preview {preview!r}")
        shown = "forever" if math.isinf(until) else _iso(until)
        return json_answer("ok", {**preview_json(self._record(preview)), "keep_until": shown})

    def keep(self, request: Request, preview: str) -> Answer:
        """`POST /api/previews/{id}/keep`: never removed for being idle (issue 16)."""
        self.authorize(request)
        self._record(preview)
        return self._kept(preview, self.orchestrator.keep(preview))

    def extend(self, request: Request, preview: str) -> Answer:
        """`POST /api/previews/{id}/extend` with `{"by": "3d"}`: kept at least that longer."""
        self.authorize(request)
        self._record(preview)
        content: Any = request.content
        try:
            data = json.loads(content.read(1 << 16) if content is not None else b"")
            seconds = parse_duration(str(data["by"]))
        except (ValueError, TypeError, KeyError):
            reason = 'expected {"by": "<duration>"}, such as "3d"'
            raise RequestRefused("malformed", reason) from None
        if not 0 < seconds < math.inf:
            raise RequestRefused("malformed", "by must be a positive duration")
        return self._kept(preview, self.orchestrator.extend(preview, seconds))

    def create(self, request: Request) -> Answer:
        """`prevu up`: deploy a branch of a repository the server can read."""
        self.authorize(request)
        content: Any = request.content
        try:
            data = json.loads(content.read(1 << 20) if content is not None else b"")
        except ValueError:
            raise RequestRefused("malformed", "expected a JSON object") from None
        if not isinstance(data, dict):
            raise RequestRefused("malformed", "expected a JSON object")
        repo, branch = str(data.get("repo", "")), str(data.get("branch", ""))
        sha, clone_url = str(data.get("sha", "")).lower(), str(data.get("clone_url", ""))
        if not REPO.match(repo):
            raise RequestRefused("malformed", f"bad repo {repo!r}: use name or owner/name")
        if not BRANCH.match(branch) or branch.startswith("-"):
            raise RequestRefused("malformed", f"bad branch {branch!r}")
        if not SHA.match(sha):
            raise RequestRefused("malformed", f"bad sha {sha!r}: give the full commit id")
        if not clone_url or clone_url.startswith("-"):
            raise RequestRefused("malformed", "clone_url is required")
        access = data.get("access")
        if access not in (None, "public", "private"):
            raise RequestRefused("malformed", f'bad access {access!r}: "public" or "private"')
        receipt = self.orchestrator.deploy_local(repo, branch, sha, clone_url, access)
        record = self._record(receipt.preview or "")
        return json_answer("accepted", preview_json(record))

    async def logs(self, request: Request, preview: str) -> Answer:
        self.authorize(request)
        record = self._record(preview)
        after = _after(request)
        if "text/event-stream" in (header(request, b"accept") or ""):
            await self._follow(request, preview, after)
            return Answer("ok")
        lines = [_log_text(line) for line in self.store.read_logs(preview, after=after)]
        if record.container and self.docker is not None and not _has_arg(request, b"stored"):
            try:
                output = await self.docker.container_logs(record.container, tail=200)
            except DockerError as error:
                output = [f"(container output unavailable: {error})"]
            lines += [f"[run] {line}" for line in output]
        text = ("\n".join(lines) + "\n").encode() if lines else b""
        return Answer("ok", text, ((b"content-type", b"text/plain; charset=utf-8"), *NO_STORE))

    async def _follow(self, request: Request, preview: str, after: int) -> None:
        """Server-Sent Events: the stored lines, then every new one until the client leaves."""
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")

        def send(line: LogLine) -> None:
            data = "\n".join(f"data: {part}" for part in _log_text(line).split("\n"))
            request.write(f"id: {line.seq}\nevent: {line.stream}\n{data}\n\n".encode())

        for line in self.store.read_logs(preview, after=after):
            send(line)
        request.write(b": following\n\n")
        finished: Deferred[None] = Deferred()

        def watcher(line: LogLine) -> None:
            if line.preview == preview and not finished.called:
                send(line)

        stop: Callable[[], None] = self.store.watch_logs(watcher)

        def done(_: object) -> None:
            stop()
            if not finished.called:
                finished.callback(None)

        request.notifyFinish().addBoth(done)
        await finished

    def metrics_text(self, request: Request) -> Answer:
        self.authorize(request)
        text = self.metrics.render(self.orchestrator.gauges()).encode()
        return Answer("ok", text, ((b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),))


def _arg(request: Request, name: bytes) -> str:
    args: Any = request.args or {}
    values = args.get(name) or [b""]
    return str(values[0].decode("utf-8", "replace"))


def _has_arg(request: Request, name: bytes) -> bool:
    args: Any = request.args or {}
    return name in args


def _after(request: Request) -> int:
    args: Any = request.args or {}
    raw = header(request, b"last-event-id") or (args.get(b"after") or [b"0"])[0].decode()
    try:
        return max(0, int(raw))
    except ValueError:
        raise RequestRefused("malformed", f"bad log position {raw!r}") from None
