"""
The feedback publisher: reacts to every preview record the orchestrator
writes and makes the pull request show it, converging on what is wanted.

`on_record` (called on the reactor thread by `Orchestrator.watch`) only
computes the new view (`prevu.feedback.view`) and notes what is wanted; it
never waits for the forge (GitHub, GitLab), so a webhook's answer and a
preview's deployment never depend on it. A worker per pull request then publishes the
difference between wanted and published: the sticky comment (created once,
edited only when its body changes, which the visible-state rule keeps rare),
commit statuses and deployment statuses, and the answers to `/preview`
commands (`reply`) in the comment. When the forge fails after the API
client's own retries, the worker tries again later with the backoff policy;
wanted and published are kept in `FeedbackMemory`, so a restart republishes
whatever was not yet shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from prevu.adapters.github_api import ForgeApi, ForgeApiError
from prevu.backoff import BackoffPolicy, exponential
from prevu.feedback import comment as cm
from prevu.feedback import view as vw
from prevu.feedback.memory import FeedbackMemory, PrFeedback, key_of
from prevu.masking import Masker
from prevu.ports import PreviewRecord

TAIL_LINES = 20
REPLIES_KEPT = 5


@define(eq=False)
class Publisher:
    """
    Publishes the feedback `kinds` ("comment", "status", "deployment") of
    the previews of `forge` (GitHub, GitLab) through `api`; the publishers of
    several forges share one `memory`. `read_tail(preview, n)` answers the last
    `n` log lines; `mask` hides secrets in them; `comment_logs(repo)` answers
    the `[[repos]] comment_logs` setting (None: only for private repositories).
    """

    api: ForgeApi
    clock: Any
    memory: FeedbackMemory
    public_url: str
    kinds: tuple[str, ...] = ("comment", "status", "deployment")
    read_tail: Callable[[str, int], list[str]] = lambda preview, count: []
    mask: Masker = lambda line: line
    comment_logs: Callable[[str], bool | None] = lambda repo: None
    retry: BackoffPolicy = field(factory=lambda: exponential(2.0, 2.0, 300.0))
    forge: str = "github"
    log: Logger = field(factory=Logger)
    _running: set[str] = field(factory=set, init=False)
    _dirty: set[str] = field(factory=set, init=False)
    _failures: dict[str, int] = field(factory=dict, init=False)
    _timers: dict[str, Any] = field(factory=dict, init=False)
    _saving: Any = field(default=None, init=False)
    save_delay: float = 0.2
    """Seconds writes to the memory file are gathered for (one write per burst)."""
    keep_closed: float = 7 * 86400.0
    """Seconds a closed pull request's entry is kept once all is published (then pruned)."""

    # --- wanted --------------------------------------------------------------------

    def on_record(self, record: PreviewRecord) -> None:
        """Note what `record` means for its pull request; publish soon. Never raises."""
        if record.forge != self.forge or not self.kinds:
            return
        try:
            self._want(record)
        except Exception:
            self.log.failure("feedback for {preview} not computed", preview=record.id)

    def _want(self, record: PreviewRecord) -> None:
        key = key_of(record.forge, record.repo, record.number)
        item = self.memory.items.get(key)
        if item is None:
            item = PrFeedback(record.forge, record.repo, record.number, record.id)
            self.memory.items[key] = item
        item.preview = record.id  # a command's reply may have come before the preview
        before = item.view
        view = vw.next_view(record, before, self.clock.seconds())
        item.view = view
        if before is not None and before.shown() == view.shown():
            return
        links = cm.Links.for_preview(self.public_url, record.id)
        if view.state in ("failed", "held"):
            item.tail = [self.mask(line) for line in self.read_tail(record.id, TAIL_LINES)]
        if view.sha:
            self._want_commit(item, view, links, before)
        item.remove_environment = view.state in ("removed", "expired")
        if not item.remove_environment:
            if item.environment_removed:
                # Reopened: the environment was deleted (GitHub) or stopped
                # (GitLab); its deployments are looked up or made again.
                item.deployment_ids.clear()
            item.environment_removed = False
        item.closed_at = self.clock.seconds() if item.remove_environment else None
        self.kick(key)

    def _want_commit(
        self, item: PrFeedback, view: vw.View, links: cm.Links, before: vw.View | None
    ) -> None:
        state, description = vw.commit_status(view)
        target = (
            view.url
            if view.state == "running"
            else links.logs
            if state == "failure"
            else links.page
        )
        item.statuses[view.sha] = [state, description, target]
        if view.superseded:
            old_state, old_description = vw.superseded_status(view.sha)
            item.statuses[view.superseded] = [old_state, old_description, links.page]
        if before is not None and before.sha != view.sha:
            for sha in list(item.deployments):
                if sha != view.sha:
                    item.deployments[sha] = "inactive"
        deployment = vw.deployment_state(view)
        if deployment is not None and (deployment != "inactive" or view.sha in item.deployments):
            item.deployments[view.sha] = deployment
        serving = view.serving
        if view.state == "held" and serving in item.deployments and serving != view.sha:
            # The head was not deployed: the commit still served is the active deployment
            # again (it was made inactive when the head started building).
            item.deployments[serving] = "success"

    def reply(self, forge: str, repo: str, number: int, preview: str, line: str) -> None:
        """
        Show `line` (the answer to a `/preview` command) in the pull request's
        comment, among the last `REPLIES_KEPT`; publish soon. Never raises.
        """
        if forge != self.forge or "comment" not in self.kinds:
            return
        key = key_of(forge, repo, number)
        item = self.memory.items.get(key)
        if item is None:
            item = self.memory.items[key] = PrFeedback(forge, repo, number, preview)
        item.replies = [*item.replies, self.mask(line)][-REPLIES_KEPT:]
        self.kick(key)

    def shown(self, forge: str, repo: str, number: int) -> tuple[str, float] | None:
        """The head the published comment shows and since when (epoch seconds), or None."""
        item = self.memory.items.get(key_of(forge, repo, number))
        if item is None or not item.shown_sha or item.shown_at is None:
            return None
        return item.shown_sha, item.shown_at

    # --- published ------------------------------------------------------------------

    def start(self) -> None:
        """Republish what the memory says was wanted but not shown (after a restart)."""
        for key, item in list(self.memory.items.items()):
            if item.forge == self.forge:  # one memory is shared by every forge's publisher
                self.kick(key)

    def stop(self) -> None:
        """Cancel pending retries and write the memory now (shutdown)."""
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._saving is not None and self._saving.active():
            self._saving.cancel()
        self._save()

    def _save_soon(self) -> None:
        # The file holds every pull request: write it once per burst of changes,
        # not once per call. A crash loses at most `save_delay` seconds of it, and
        # the marker lookup finds a comment whose id was lost.
        if self._saving is None or not self._saving.active():
            self._saving = self.clock.callLater(self.save_delay, self._save)

    def _prune(self) -> None:
        """Forget pull requests closed more than `keep_closed` ago whose feedback is all out."""
        cutoff = self.clock.seconds() - self.keep_closed
        for key, item in list(self.memory.items.items()):
            busy = key in self._running or key in self._dirty or key in self._timers
            if item.closed_at is not None and item.closed_at < cutoff and not busy:
                del self.memory.items[key]

    def _save(self) -> None:
        self._saving = None
        self._prune()
        try:
            self.memory.save()
        except OSError as error:
            self.log.warn("feedback memory not saved: {error}", error=str(error))

    def kick(self, key: str) -> None:
        """Publish `key`'s difference soon (on the next reactor turn)."""
        self._dirty.add(key)
        if key in self._running:
            return
        timer = self._timers.pop(key, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._running.add(key)
        self.clock.callLater(0, lambda: ensureDeferred(self._worker(key)))

    def idle(self) -> bool:
        """True when nothing is being published (tests wait for this)."""
        return not self._running

    async def _worker(self, key: str) -> None:
        try:
            while key in self._dirty:
                self._dirty.discard(key)
                item = self.memory.items.get(key)
                if item is None:
                    continue
                self._save_soon()
                await self._publish(item)
            self._failures.pop(key, None)
        except ForgeApiError as error:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = self.retry(failures)
            self.log.warn(
                "feedback for {key} not published ({error}); retry {failures} in {delay:.0f}s",
                key=key,
                error=str(error),
                failures=failures,
                delay=delay,
            )
            self._dirty.add(key)
            self._timers[key] = self.clock.callLater(delay, self.kick, key)
        except Exception:
            self.log.failure("feedback for {key} failed", key=key)
        finally:
            self._running.discard(key)
            self._save_soon()

    async def _publish(self, item: PrFeedback) -> None:
        if item.view is None:
            if item.replies and "comment" in self.kinds:
                await self._comment(item)
            return
        # Each kind on its own: a credential without one permission still gets the others.
        failed: ForgeApiError | None = None
        for kind, publish in (
            ("comment", self._comment),
            ("status", self._statuses),
            ("deployment", self._deployments),
        ):
            if kind not in self.kinds:
                continue
            try:
                await publish(item)
            except ForgeApiError as error:
                failed = failed or error
        if failed is not None:
            raise failed

    async def _statuses(self, item: PrFeedback) -> None:
        for sha, wanted in list(item.statuses.items()):
            if item.statuses_published.get(sha) != wanted:
                state, description, target = wanted
                await self.api.set_status(
                    item.repo, sha, state, description, target, vw.STATUS_CONTEXT
                )
                item.statuses_published[sha] = wanted

    async def _comment(self, item: PrFeedback) -> None:
        view = item.view
        links = cm.Links.for_preview(self.public_url, item.preview)
        tail: list[str] | None = None
        if view is not None and view.state in ("failed", "held") and item.tail:
            show = self.comment_logs(item.repo)
            if show is None:
                show = await self.api.repository_private(item.repo)
            tail = item.tail if show else None
        mark = cm.marker(item.forge, item.repo, item.number)
        body = cm.render(view, links, mark, tail, item.replies)
        if body == item.body:
            return

        async def find() -> int | None:
            me = await self.api.identity()
            for found in await self.api.comments(item.repo, item.number):
                if found.author == me and mark in found.body:
                    return found.id
            return None

        if item.comment is None:
            item.comment = await find()
        edit = self.api.edit_comment
        if item.comment is not None and await edit(item.repo, item.number, item.comment, body):
            what = "edited"
        else:
            # `find` before a re-send: a create that failed may have made it (502 after create).
            item.comment = await self.api.create_comment(item.repo, item.number, body, find)
            what = "created"
        item.body = body
        if view is not None and view.sha != item.shown_sha:
            item.shown_sha, item.shown_at = view.sha, self.clock.seconds()
        self._save_soon()
        self.log.info(
            "comment {what} on {repo}#{number}: {state}",
            what=what,
            repo=item.repo,
            number=item.number,
            state=view.state if view is not None else "commands",
        )

    async def _deployments(self, item: PrFeedback) -> None:
        assert item.view is not None
        environment = vw.environment(item.number)
        links = cm.Links.for_preview(self.public_url, item.preview)
        for sha, state in list(item.deployments.items()):
            if item.deployments_published.get(sha) == state:
                continue
            deployment = item.deployment_ids.get(sha)
            if deployment is None:
                deployment = await self.api.find_deployment(item.repo, sha, environment)
            if deployment is None:
                if state == "inactive":
                    item.deployments_published[sha] = state
                    continue
                deployment = await self.api.create_deployment(item.repo, sha, environment)
            item.deployment_ids[sha] = deployment
            self._save_soon()
            url = item.view.url if state == "success" else ""
            await self.api.set_deployment_status(
                item.repo, deployment, state, url, links.logs, f"prevu: {state}"
            )
            item.deployments_published[sha] = state
        if item.remove_environment and not item.environment_removed:
            deleted = await self.api.delete_environment(item.repo, environment)
            if not deleted:
                self.log.info(
                    "environment {environment} of {repo} kept: the credential may not delete it",
                    environment=environment,
                    repo=item.repo,
                )
            item.environment_removed = True
