"""
The command runner: carries out a `/preview` command after the webhook was
answered (issue 16).

`CommandRunner.submit` runs each command as one of the orchestrator's
background tasks: it parses the line (`prevu.forge.commands`), skips
comments written by prevu's own identity, asks the forge whether the
commenter may write to the repository (`ForgeApi.may_write`: GitHub's
collaborator permission, GitLab's project membership; never the webhook's
`author_association`), runs the verb from the one registry (`VERBS`) on
the orchestrator's facade, then acknowledges it: a reaction on the comment
(👍 done, 😕 refused) and a line in the pull request's sticky comment that
says what was done or why it was refused. The delivery's recorded outcome
(`GET /api/deliveries`) is filled in when it is done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from attrs import define, field
from twisted.logger import Logger

from prevu.adapters.github_api import ForgeApi, ForgeApiError
from prevu.forge.commands import VERBS, CommandError, Previews, Reply, Request, parse_command
from prevu.forge.events import Command


class Facade(Previews, Protocol):
    """The orchestrator as the runner sees it: the verbs' `Previews` plus look-ups and tasks."""

    def find_preview(self, forge: str, repo: str, number: int) -> str | None: ...

    def background(self, coroutine: Awaitable[None]) -> None: ...


class Replies(Protocol):
    """The feedback publisher of one forge (`prevu.feedback.publisher.Publisher`)."""

    def reply(self, forge: str, repo: str, number: int, preview: str, line: str) -> None: ...

    def shown(self, forge: str, repo: str, number: int) -> tuple[str, float] | None: ...


@define(eq=False)
class CommandRunner:
    """
    Runs commands of every forge: `apis` maps a forge's name to its API
    client (a forge without one cannot check permissions: its commands are
    refused), `replies` to its feedback publisher (optional), and `outcome`
    records `(forge, delivery, text)` in the delivery trail (`Store.fill_outcome`).
    """

    previews: Facade
    apis: Mapping[str, ForgeApi]
    replies: Mapping[str, Replies] = field(factory=dict)
    outcome: Callable[[str, str, str], None] = lambda forge, delivery, text: None
    log: Logger = field(factory=Logger)

    def submit(self, command: Command) -> None:
        """Run `command` in the background; returns at once (the webhook answers 202)."""
        self.previews.background(self._settle(command))

    async def _settle(self, command: Command) -> None:
        reply = await self.run(command)
        text = ("done: " if reply.ok else "refused: ") + reply.text
        self.outcome(command.forge, command.delivery, text[:500])

    async def run(self, command: Command) -> Reply:
        """Check, carry out and acknowledge one command; answers what was done."""
        api = self.apis.get(command.forge)
        if api is None:
            return Reply(False, f"no {command.forge} API credential: permissions cannot be checked")
        try:
            if command.commenter == await api.identity():
                return Reply(False, "written by prevu itself")
            reply = await self._carry_out(api, command)
        except ForgeApiError as error:
            self.log.warn("command {line} not run: {error}", line=command.line, error=str(error))
            return Reply(False, f"the forge did not answer: {error}")
        await self._acknowledge(api, command, reply)
        return reply

    async def _carry_out(self, api: ForgeApi, command: Command) -> Reply:
        try:
            parsed = parse_command(command.line)
        except CommandError as error:
            return Reply(False, str(error))
        verb = VERBS[parsed.verb]
        if verb.write and not await api.may_write(
            command.repo, command.commenter, command.commenter_id
        ):
            return Reply(
                False,
                f"{command.commenter} may not run `/preview {verb.name}`: it needs write "
                "access to the repository",
            )
        preview = self.previews.find_preview(command.forge, command.repo, command.number)
        if verb.preview and preview is None:
            return Reply(False, "this pull request has no preview")
        publisher = self.replies.get(command.forge)
        shown = publisher.shown(command.forge, command.repo, command.number) if publisher else None
        request = Request(preview, parsed.args, command.commenter, command.created_at, shown)
        reply = verb.act(self.previews, request)
        self.log.info(
            "{forge} {repo}#{number}: {commenter} ran /preview {verb}: {text}",
            forge=command.forge,
            repo=command.repo,
            number=command.number,
            commenter=command.commenter,
            verb=verb.name,
            text=reply.text,
        )
        return reply

    async def _acknowledge(self, api: ForgeApi, command: Command, reply: Reply) -> None:
        """A reaction on the comment and a line in the sticky comment (best-effort)."""
        publisher = self.replies.get(command.forge)
        if publisher is not None:
            preview = self.previews.find_preview(command.forge, command.repo, command.number)
            # No `@`: an edit of the sticky comment should not notify anyone again.
            line = f"{command.commenter} `{command.line[:80]}`: {reply.text}"
            publisher.reply(command.forge, command.repo, command.number, preview or "", line)
        if command.comment:
            try:
                await api.acknowledge(command.repo, command.number, command.comment, reply.ok)
            except ForgeApiError as error:
                self.log.warn("command not acknowledged: {error}", error=str(error))
