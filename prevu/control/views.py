"""
What the dashboard shows, computed from records and log lines: pure functions.

The dashboard's templates (`prevu/control/templates/`) render only what these
functions return: rows of the list (`row`), the list split by filter and by
`[previews] history` (`arrange`), a preview's deployments read back from its
system log lines (`deployments`), the forge's page of a pull request
(`pr_url`) and short human durations (`short_duration`). Pure core: stdlib and
attrs only, `now` comes in as an argument (seconds since the epoch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from attrs import evolve, frozen

from prevu.ports import LogLine, PreviewRecord

Filter = Literal["all", "running", "failed"]
FILTERS: tuple[Filter, ...] = ("all", "running", "failed")
"""The list's filters (`?status=`): every preview, those serving, those that failed."""

SERVING = ("running", "sleeping")
"""Statuses whose URL answers with the application (the list links them)."""

IN_FLIGHT = ("queued", "building", "starting")
"""Statuses while a deploy is under way."""

FETCHING = re.compile(r"^fetching \S+ at (?P<sha>[0-9a-f]{7,64})$")
STATUS = re.compile(r"^status (?P<status>[a-z]+)(?:: (?P<detail>.*))?$", re.DOTALL)

Result = Literal["in progress", "succeeded", "failed", "superseded", "stopped"]


@frozen
class Deploy:
    """
    One deployment attempt of a preview, read back from its system log lines:
    the commit `sha`, when it `started` (seconds since the epoch), how long it
    took until its `result` (`duration`, seconds; None while in progress),
    and the `reason` of a failure.
    """

    sha: str
    started: float
    duration: float | None = None
    result: Result = "in progress"
    reason: str = ""


def deployments(lines: Iterable[LogLine]) -> list[Deploy]:
    """
    The deployments in a preview's log lines, oldest first.

    A deployment starts at the orchestrator's `fetching <ref> at <sha>` line
    and ends at the next `status running` (succeeded), `status failed: why`
    (failed), `status stopped` (stopped) or the next fetch (superseded). Only
    `system` lines are read; lines trimmed from the store are not known.
    """
    found: list[Deploy] = []
    for line in lines:
        if line.stream != "system":
            continue
        fetching = FETCHING.match(line.line)
        if fetching is not None:
            if found and found[-1].result == "in progress":
                found[-1] = _ended(found[-1], line.at, "superseded", "a newer deploy started")
            found.append(Deploy(sha=fetching["sha"], started=line.at))
            continue
        status = STATUS.match(line.line)
        if status is None or not found or found[-1].result != "in progress":
            continue
        match status["status"]:
            case "running":
                found[-1] = _ended(found[-1], line.at, "succeeded", "")
            case "failed":
                found[-1] = _ended(found[-1], line.at, "failed", status["detail"] or "")
            case "stopped":
                found[-1] = _ended(found[-1], line.at, "stopped", status["detail"] or "")
    return found


def _ended(deploy: Deploy, at: float, result: Result, reason: str) -> Deploy:
    return evolve(deploy, duration=max(0.0, at - deploy.started), result=result, reason=reason)


def new_lines(before: Sequence[str], after: Sequence[str]) -> list[str]:
    """
    The lines of `after`, a later tail of the same output as `before`, that
    came after it: `after` past the longest end of `before` it starts with.
    Best effort over tails (what scrolled out between two reads is not
    known; identical lines can hide each other); no overlap: all of `after`.
    """
    for size in range(min(len(before), len(after)), 0, -1):
        if list(before[-size:]) == list(after[:size]):
            return list(after[size:])
    return list(after)


def short_duration(seconds: float | None) -> str:
    """`seconds` as `42s`, `3m 5s`, `2h 10m` or `4d 1h`; an empty string for None."""
    if seconds is None:
        return ""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def iso(seconds: float) -> str:
    """`seconds` since the epoch as an ISO 8601 UTC time (`2026-12-06T03:04:05Z`), or ''."""
    if not seconds:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pr_url(forge: str, repo: str, number: int, github_api: str, gitlab_url: str) -> str | None:
    """
    The forge's web page of pull request `number` of `repo`, or None (a
    `prevu up` preview has no pull request). GitHub's web host is its API
    host without `api.` (github.com) or without `/api/v3` (Enterprise Server,
    https://docs.github.com/en/enterprise-server/rest); GitLab's merge
    requests live at `<url>/<repo>/-/merge_requests/<n>`.
    """
    if number <= 0:
        return None
    if forge == "github":
        web = github_api.rstrip("/")
        if web.endswith("/api/v3"):
            web = web[: -len("/api/v3")]
        web = web.replace("://api.", "://", 1)
        return f"{web}/{repo}/pull/{number}"
    if forge == "gitlab":
        return f"{gitlab_url.rstrip('/')}/{repo}/-/merge_requests/{number}"
    return None


def row(
    record: PreviewRecord, now: float, last: Deploy | None, pr_link: str | None
) -> dict[str, Any]:
    """
    One line of the list as plain values for the template and the live
    updates (the same keys in both): id, repo, number, pr_url, branch, sha
    (12 characters), status, note (the failure or the state's detail), url,
    serving (whether the URL answers), age and updated (short durations up
    to `now`), created (ISO time), duration (of the last deploy `last`, once
    it ended; empty while one is under way).
    """
    finished = last.duration if last is not None else None
    if last is not None and finished is None and record.status not in IN_FLIGHT:
        # The record is stored just before its `status` line is logged: it ended then.
        finished = max(0.0, record.updated_at - last.started)
    return {
        "id": record.id,
        "repo": record.repo,
        "number": record.number,
        "pr_url": pr_link,
        "branch": record.branch,
        "sha": record.sha[:12],
        "status": record.status,
        "note": record.error or record.data.get("detail") or "",
        "url": record.url,
        "serving": record.status in SERVING,
        "closed": record.closed,
        "age": short_duration(now - record.created_at) if record.created_at else "",
        "created": iso(record.created_at),
        "updated": short_duration(now - record.updated_at) if record.updated_at else "",
        "duration": short_duration(finished),
    }


def parse_filter(value: str) -> Filter:
    """The filter named by `?status=` (anything unknown is `all`)."""
    for known in FILTERS:
        if value == known:
            return known
    return "all"


def shown(record: PreviewRecord, wanted: Filter) -> bool:
    """Whether `record` passes filter `wanted`."""
    if wanted == "running":
        return record.status in SERVING
    if wanted == "failed":
        return record.status == "failed"
    return True


def arrange(
    records: Sequence[PreviewRecord], now: float, history: float, wanted: Filter
) -> tuple[list[PreviewRecord], list[PreviewRecord]]:
    """
    The list's (current, history) records, newest first: previews closed and
    stopped longer than `history` seconds before `now` go to the history;
    the filter applies to the current ones only.
    """
    current: list[PreviewRecord] = []
    old: list[PreviewRecord] = []
    for record in sorted(records, key=lambda r: r.created_at, reverse=True):
        gone = record.closed and record.status == "stopped"
        if gone and now - record.updated_at > history:
            old.append(record)
        elif shown(record, wanted):
            current.append(record)
    return current, old


def counts(records: Iterable[PreviewRecord]) -> Mapping[str, int]:
    """How many previews each filter shows (for the filter links)."""
    found = list(records)
    return {name: sum(1 for r in found if shown(r, name)) for name in FILTERS}
