"""
`/preview` commands in pull request comments: where a comment holds one, and
the one registry of verbs (issue 16, SPEC §6).

Pure core. `find_command(body)` answers the first line that starts with
`/preview` outside quotes and code, read the way GitHub and GitLab render
Markdown (CommonMark, https://spec.commonmark.org/0.31.2/):

- fenced code blocks (a line opening with three or more backticks or tildes,
  up to three spaces indented, until a closing fence of the same character
  at least as long) and indented code (four spaces or a tab) are code;
- a line opening with `>` (up to three spaces indented) is a block quote;
- inline code cannot hold a command: a command line *starts* with `/preview`.

`VERBS` is the one registry: each `Verb` names its arguments, whether it
needs write access, its one-line help and what it does (`act`, on the
orchestrator's facade `Previews`, answering the `Reply` shown on the pull
request). Adding a verb is one entry here. `parse_command` checks
the arguments and answers a `Parsed` command or a `CommandError` whose text
is the reply. Who may run a verb is asked of the forge by the runner
(`prevu.feedback.commands`), never read from the webhook.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from attrs import frozen

from prevu.units import parse_duration

PREFIX = "/preview"
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_QUOTE = re.compile(r"^ {0,3}>")
_SHA_PREFIX = re.compile(r"^[0-9a-f]{7,40}$")

WRITE_ROLES = frozenset({"admin", "maintain", "write"})
"""GitHub `role_name`s that may run commands (collaborator permission endpoint)."""
DEVELOPER = 30
"""GitLab's Developer access level; at least this may run commands (members API)."""


class CommandError(ValueError):
    """A `/preview` line prevu cannot run; `str(error)` is the reply shown to the commenter."""


class Previews(Protocol):
    """
    What verbs need of the orchestrator (its facade,
    `prevu.orchestrator.engine.Orchestrator`). Reactor thread; never blocks.
    """

    def redeploy(self, preview: str) -> bool: ...

    def destroy(self, preview: str, reason: str = ...) -> bool: ...

    def reset(self, preview: str) -> bool: ...

    def keep(self, preview: str) -> float | None: ...

    def extend(self, preview: str, seconds: float) -> float | None: ...

    def awaiting(self, preview: str) -> str | None: ...

    def approve_commit(self, preview: str, sha: str, by: str) -> str | None: ...


@frozen
class Request:
    """
    One command to carry out: the pull request's `preview` id (None when it
    has none), the verb's checked `args`, who wrote it and when
    (`created_at`, epoch seconds, None when the forge did not say), and the
    head the sticky comment `shown` then (sha, since when), if any.
    """

    preview: str | None
    args: tuple[str, ...]
    commenter: str
    created_at: float | None = None
    shown: tuple[str, float] | None = None


@frozen
class Reply:
    """What a command did: `ok` (acknowledged 👍) or refused (😕), and the line shown."""

    ok: bool
    text: str


@frozen
class Verb:
    """
    One `/preview` verb: `usage` as shown by `help` (arguments in angle
    brackets, optional ones in square brackets), `summary` its help line,
    `write` whether the commenter needs write access (GitHub admin, maintain
    or write; GitLab Developer or above), `check(args)` the arguments' check
    (raises CommandError) and `act(previews, request)` what it does.
    `preview` says whether it needs the pull request's preview to exist.
    """

    name: str
    usage: str
    summary: str
    act: Callable[[Previews, Request], Reply]
    write: bool = True
    check: Callable[[tuple[str, ...]], None] = lambda args: _no_arguments(args)
    preview: bool = True


def _no_arguments(args: tuple[str, ...]) -> None:
    if args:
        raise CommandError(f"takes no argument (got {' '.join(args)!r})")


def _duration(args: tuple[str, ...]) -> None:
    if len(args) != 1:
        raise CommandError("needs one duration, such as `/preview extend 3d`")
    try:
        seconds = parse_duration(args[0])
    except ValueError as error:
        raise CommandError(str(error)) from None
    if seconds <= 0:
        raise CommandError("the duration must be more than 0")


def _sha_prefix(args: tuple[str, ...]) -> None:
    if len(args) > 1:
        raise CommandError("takes at most one commit SHA")
    if args and not _SHA_PREFIX.match(args[0].lower()):
        raise CommandError(f"{args[0]!r} is not a commit SHA (7 to 40 hex digits)")


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _redeploy(previews: Previews, request: Request) -> Reply:
    assert request.preview is not None
    previews.redeploy(request.preview)
    return Reply(True, "redeploying the current commit")


def _destroy(previews: Previews, request: Request) -> Reply:
    assert request.preview is not None
    previews.destroy(request.preview, f"destroyed by {request.commenter} (/preview destroy)")
    return Reply(True, "removing the preview; a new push brings it back")


def _reset(previews: Previews, request: Request) -> Reply:
    assert request.preview is not None
    if not previews.reset(request.preview):
        return Reply(False, "cannot reset: the preview is closed or was never deployed")
    return Reply(True, "resetting: data dropped, the same commit starts again (on_push, then seed)")


def _keep(previews: Previews, request: Request) -> Reply:
    assert request.preview is not None
    previews.keep(request.preview)
    return Reply(True, "kept: never removed for being idle")


def _extend(previews: Previews, request: Request) -> Reply:
    assert request.preview is not None
    until = previews.extend(request.preview, parse_duration(request.args[0]))
    return Reply(until is not None, f"kept until at least {_stamp(until or 0.0)}")


def _approve(previews: Previews, request: Request) -> Reply:
    """
    Approval pinned to what the maintainer saw (issue 16): with a SHA, only
    that commit; without one, only the head the sticky comment showed when
    the command was written (its `created_at` at or after the comment's last
    change of head); otherwise the reply asks for the SHA.
    """
    assert request.preview is not None
    awaiting = previews.awaiting(request.preview)
    if awaiting is None:
        return Reply(False, "nothing awaits approval")
    if request.args:
        named = request.args[0]
        if not awaiting.startswith(named):
            return Reply(
                False,
                f"commit {named[:12]} does not await approval; the head awaiting is "
                f"{awaiting[:7]}: review it and comment `/preview approve {awaiting[:7]}`",
            )
    else:
        shown = request.shown
        written = request.created_at
        if shown is None or shown[0] != awaiting or written is None or written < shown[1]:
            return Reply(
                False,
                f"the head changed since this pull request showed it: review {awaiting[:7]} "
                f"and comment `/preview approve {awaiting[:7]}`",
            )
    refused = previews.approve_commit(request.preview, awaiting, request.commenter)
    if refused is not None:
        return Reply(False, refused)
    return Reply(True, f"approved {awaiting[:7]}: building its preview")


def _help(previews: Previews, request: Request) -> Reply:
    return Reply(True, help_text())


VERBS: Mapping[str, Verb] = {
    verb.name: verb
    for verb in (
        Verb("redeploy", "/preview redeploy", "build and start the current commit again",
             _redeploy),
        Verb("destroy", "/preview destroy", "remove the preview (a new push brings it back)",
             _destroy),
        Verb("reset", "/preview reset",
             "drop the preview's data (volumes) and start it again: on_push, then seed", _reset),
        Verb("keep", "/preview keep", "never remove the preview for being idle", _keep),
        Verb("extend", "/preview extend <duration>",
             "keep the preview at least this much longer (`3d`, `12h`)", _extend,
             check=_duration),
        Verb("approve", "/preview approve [<sha>]",
             "start the preview of a fork's commit (the one shown, or the one named)", _approve,
             check=_sha_prefix),
        Verb("help", "/preview help", "list the commands", _help, write=False, preview=False),
    )
}  # fmt: skip
"""The one registry of `/preview` verbs, in the order `help` lists them."""


@frozen
class Parsed:
    """A command line whose verb is known and whose arguments are valid."""

    verb: str
    args: tuple[str, ...] = ()


def command_lines(body: str) -> list[str]:
    """Every line of `body` that starts with `/preview` outside code and quotes, stripped."""
    found: list[str] = []
    fence: str | None = None
    for line in body.splitlines():
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        if line.startswith(("    ", "\t")) or _QUOTE.match(line):
            continue
        text = line.strip()
        words = text.split()
        if words and words[0].lower() == PREFIX:
            found.append(text)
    return found


def find_command(body: str) -> str | None:
    """The first command line of `body` (see `command_lines`), or None."""
    lines = command_lines(body)
    return lines[0] if lines else None


def parse_command(line: str) -> Parsed:
    """
    The verb and arguments of a command line (`/preview extend 3d`).

    :raises CommandError: no verb, an unknown verb, or bad arguments; its
        text says so and points at `/preview help`.
    """
    words = line.split()
    if len(words) < 2:
        raise CommandError("no command given; `/preview help` lists them")
    name, args = words[1].lower(), tuple(words[2:])
    verb = VERBS.get(name)
    if verb is None:
        raise CommandError(f"unknown command `{name[:40]}`; `/preview help` lists them")
    try:
        verb.check(args)
    except CommandError as error:
        raise CommandError(f"`/preview {name}` {error}") from None
    return Parsed(name, tuple(arg.lower() if name == "approve" else arg for arg in args))


def help_text() -> str:
    """The reply to `/preview help`: one line per verb, from the registry."""
    lines = [f"`{verb.usage}`: {verb.summary}" for verb in VERBS.values()]
    return "Commands: " + "; ".join(lines) + "."


def may_write_github(role_name: str | None) -> bool:
    """True for a GitHub collaborator `role_name` with write access (admin, maintain, write)."""
    return (role_name or "").lower() in WRITE_ROLES


def may_write_gitlab(access_level: int | None) -> bool:
    """True for a GitLab member `access_level` of Developer (30) or above."""
    return access_level is not None and access_level >= DEVELOPER
