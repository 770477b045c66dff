"""
JSON log lines for twistd: `twistd --logger prevu.logs.json_observer -n prevu`.

twistd's `--logger` takes the dotted name of a zero-argument callable that
returns the initial log observer (`twisted.application.app.AppLogger`);
`json_observer` is one. It writes one JSON object per line to the standard
output twistd started with (journald, `docker logs` and log shippers read it
there), with these keys:

- `time`: ISO 8601 UTC with milliseconds (`2026-01-02T03:04:05.678Z`);
- `level`: `debug`, `info`, `warn`, `error` or `critical`;
- `namespace`: the logger's namespace (`prevu.orchestrator.engine`);
- `message`: the event formatted as twistd's text log would show it;
- the event's own fields (`preview`, `url`, ...) that are JSON values
  (strings, numbers, booleans, null); other values are given as `repr`;
- `failure`: the traceback, when the event carries one.

Documented in docs/deploy.md ("JSON logs").
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

_SKIP = frozenset({"message", "format", "time", "system", "isError", "failure", "why"})


def event_json(event: Mapping[str, Any]) -> str:
    """One Twisted log event as one line of JSON (no newline); see the module docstring."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _iso(event.get("log_time")),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(dict(event)),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIP or key in record:
            continue
        record[key] = value if _plain(value) else repr(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:  # a broken failure must not lose the line
            record["failure"] = repr(failure)
    return json.dumps(record, ensure_ascii=False, default=repr)


def _plain(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _iso(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


@implementer(ILogObserver)
class JsonLineObserver:
    """Writes each event as one JSON line to `stream` and flushes it."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: Mapping[str, Any]) -> None:
        self.stream.write(event_json(event) + "\n")
        self.stream.flush()


def json_observer() -> JsonLineObserver:
    """twistd's `--logger`: JSON lines on the standard output twistd started with."""
    return JsonLineObserver(sys.stdout)
