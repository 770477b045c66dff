"""
Watching a preview from the CLI: its log lines as they arrive, until it settles.

`prevu up`, `prevu redeploy` and `prevu logs -f` follow the API's log stream
(`GET /api/previews/{id}/logs` with `Accept: text/event-stream`, SSE: `id:`
is the line's sequence number, `event:` its stream, `data:` the text
`<ISO time> [<stream>] <line>`) on a thread of its own, while the calling
thread polls `GET /api/previews/{id}` once a second. When the status settles
(not queued, building or starting), the stream is stopped and the lines it
had not shown yet are read once more from the stored log
(`?stored&after=<last id>`), so every line is printed exactly once.

A command-line tool run once: blocking `http.client` and one thread are
right here (no reactor).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import IO, Any

from attrs import define, field, frozen

ACTIVE = frozenset({"queued", "building", "starting"})
"""Statuses of a preview that is still on its way (SPEC §4 statuses)."""

TAIL = 15
"""Log lines shown again with the reason when a preview fails."""


@frozen
class LogEvent:
    """One log line of the stream: its sequence number and `<time> [<stream>] <line>` text."""

    seq: int
    text: str


def parse_events(lines: Iterator[bytes]) -> Iterator[LogEvent]:
    """
    Server-Sent Events (https://html.spec.whatwg.org/multipage/server-sent-events.html)
    read line by line: one LogEvent per event with an `id:` and `data:`;
    comments (`: ...`) and events without data are skipped.
    """
    seq: int | None = None
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if seq is not None and data:
                yield LogEvent(seq, "\n".join(data))
            seq, data = None, []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id" and value.isdigit():
            seq = int(value)
        elif name == "data":
            data.append(value)


def line_time(text: str) -> datetime | None:
    """The time a log line's text starts with (`2026-01-02T03:04:05.123456Z [build] ...`)."""
    stamp = text.partition(" ")[0]
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def brief(text: str) -> str:
    """A log line's text without its leading time: `[build] #5 DONE 0.1s`."""
    return text.partition(" ")[2] if line_time(text) is not None else text


_NOISE = re.compile(r"\[build\] (#\d+ sha256:[0-9a-f]+)?$")


def noise(text: str) -> bool:
    """
    Build lines that say nothing to a person watching: BuildKit's plain
    progress repeats each step's digest (`#4 sha256:...`) and separates steps
    with blank lines. `prevu logs` still shows them.
    """
    return _NOISE.search(brief(text)) is not None


@define
class Follower:
    """
    Follows the log stream of one preview on a daemon thread, handing each
    line from `after` on to `show`; `stop()` ends it and returns the last
    sequence number shown. `since` skips lines older than that time (the
    lines of earlier deployments of the same preview).
    """

    url: str
    token: str | None
    preview: str
    show: Callable[[LogEvent], None]
    after: int = 0
    since: datetime | None = None
    _lock: threading.Lock = field(factory=threading.Lock)
    _stopped: bool = False
    _connection: http.client.HTTPConnection | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the stream on a daemon thread; failures there end the stream quietly."""
        self._thread = threading.Thread(target=self._run, name="prevu-logs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in parse_events(self._lines()):
                with self._lock:
                    if self._stopped:
                        return
                    self.after = max(self.after, event.seq)
                    if self.since is None or (line_time(event.text) or self.since) >= self.since:
                        self.show(event)
        except (OSError, http.client.HTTPException):
            return  # the polling thread still sees the status; stored lines are read at the end

    def _lines(self) -> Iterator[bytes]:
        parts = urllib.parse.urlsplit(self.url)
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = kind(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        with self._lock:
            if self._stopped:
                return
            self._connection = connection
        headers = {"Accept": "text/event-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        path = f"{parts.path}/api/previews/{self.preview}/logs?after={self.after}"
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        with self._lock:
            stopped = self._stopped  # stop() came before the socket existed to shut down
        if stopped or response.status != 200:
            connection.close()
            return
        if connection.sock is not None:
            connection.sock.settimeout(None)  # a build step may print nothing for minutes
        yield from response

    def stop(self) -> int:
        """Stop showing lines, close the stream; the last sequence number shown."""
        with self._lock:
            self._stopped = True
            connection = self._connection
        if connection is not None and connection.sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing to stop
                connection.sock.shutdown(socket.SHUT_RDWR)
        return self.after


def _indented(text: str) -> str:
    return text.replace("\n", "\n  ")


Call = Callable[[str, str], Any]
"""`call(method, path)`: one API request, the decoded JSON (prevu.client.call)."""
Text = Callable[[str], str]
"""`text(path)`: one API request, the answer as text (plain-text logs)."""


def watch(
    preview: dict[str, Any],
    call: Call,
    text: Text,
    follower: Follower,
    out: IO[str] | None = None,
    timeout: float = 900.0,
    interval: float = 1.0,
) -> int:
    """
    Follow `preview` until it settles: 0 when it runs (or sleeps), 1 when it
    failed or was stopped (the reason and the last TAIL log lines printed),
    or 1 after `timeout` seconds still on its way.
    """
    out = out or sys.stdout
    name = preview["id"]
    follower.start()
    deadline = time.monotonic() + timeout
    try:
        while preview["status"] in ACTIVE:
            if time.monotonic() > deadline:
                print(f"{name}: still {preview['status']} after {timeout:g}s", file=out)
                return 1
            time.sleep(interval)
            preview = call("GET", f"/api/previews/{name}")
    finally:
        after = follower.stop()
    rest = text(f"/api/previews/{name}/logs?stored&after={after}")
    for line in rest.splitlines():
        if follower.since is None or (line_time(line) or follower.since) >= follower.since:
            follower.show(LogEvent(after, line))
    status = preview["status"]
    if status in ("running", "sleeping"):
        print(f"{name}: {status} at {preview['url']}", file=out)
        return 0
    reason = preview.get("error") or preview.get("detail") or "no reason recorded"
    print(f"{name}: {status}: {_indented(reason)}", file=out)
    lines = [line for line in text(f"/api/previews/{name}/logs").splitlines() if not noise(line)]
    if lines[-TAIL:]:
        print(f"last {len(lines[-TAIL:])} log lines:", file=out)
        for line in lines[-TAIL:]:
            print(f"  {brief(line)}", file=out)
    # redeploy builds the same commit: a retry for outside causes, not for a bug in it
    print(
        f"all of it: prevu logs {name}; the same commit again: prevu redeploy {name};"
        " a fix: commit it, then prevu up (or push)",
        file=out,
    )
    return 1
