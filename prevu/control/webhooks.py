"""
The webhook endpoint, `POST /webhooks/<forge>`, for every forge of the registry.

Answer fast and never wait for git or Docker: the body is checked (size,
then the forge's signature or token), parsed by the forge into a typed event,
filtered by `[[repos]]` (a close never is), and handed to the orchestrator,
which only records the event and schedules its jobs. A delivery id or body
that was acted on before is a duplicate; one is remembered only AFTER it was
acted on, so an ignored delivery, or one answered 5xx, is processed again when
the forge redelivers it (GitHub's "Redeliver" is the user's recovery tool). What
differs between forges lives in `prevu/forge/<name>.py`; this module knows
none by name. Outcomes (the control app maps them to SPEC §4's codes):

- `accepted` (202) with a JSON body once the job is queued, or a `/preview`
  command handed to the command runner (its permission check and its run
  happen after the answer; the delivery's outcome is filled in then);
- `ok` (200) for pings, ignored events and redelivered ids or bodies (no-ops);
- `unauthenticated` (401) bad or missing signature/token; `forbidden` (403)
  when the forge's webhooks are not configured; `not_found` (404) for a forge
  prevu does not know or that has no webhooks;
- `malformed` (400) payload or missing headers; `too_large` (413) body over `max_body`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from attrs import define, field
from twisted.logger import Logger
from twisted.web.server import Request

from prevu.config import Config
from prevu.control.responses import STATUS, Answer, header, json_answer
from prevu.errors import RequestRefused
from prevu.forge import policy
from prevu.forge.base import Delivery, Forge
from prevu.forge.events import Command, ForgeEvent, Ignored, Ping, PullRequestEvent
from prevu.forge.registry import webhook_forge
from prevu.orchestrator.metrics import Metrics
from prevu.ports import Decision, DeliveryEntry, UnverifiedDelivery

MAX_WEBHOOK_BODY = 25 << 20
"""GitHub caps payloads at 25 MB; anything bigger is not a real delivery."""


class Receipt(Protocol):
    """What the orchestrator answers to a decision (`prevu.orchestrator.engine.Receipt`)."""

    @property
    def status(self) -> str: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def preview(self) -> str | None: ...

    @property
    def url(self) -> str | None: ...


class Applies(Protocol):
    """What the webhooks need of the orchestrator."""

    def apply(self, decision: policy.Decision) -> Receipt: ...


class Deliveries(Protocol):
    """What the webhooks need of the store."""

    def remember_delivery(self, delivery: str) -> bool: ...

    def seen_delivery(self, delivery: str) -> bool: ...

    def record_delivery(self, entry: DeliveryEntry) -> DeliveryEntry: ...

    def record_unverified(self, entry: UnverifiedDelivery) -> bool: ...


def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, or RequestRefused("too_large") when it is larger than `limit`."""
    length = header(request, b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise RequestRefused("too_large", f"body of {length} bytes is over the {limit} byte limit")
    content: Any = request.content
    if content is None:
        return b""
    content.seek(0)
    body: bytes = content.read(limit + 1)
    if len(body) > limit:
        raise RequestRefused("too_large", f"body is over the {limit} byte limit")
    return body


def _headers(request: Request) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in request.requestHeaders.getAllRawHeaders()
        if values
    }


@define
class Webhooks:
    """The webhook handler of every forge, delegated to from the control app."""

    config: Config
    orchestrator: Applies
    store: Deliveries
    metrics: Metrics = field(factory=Metrics)
    max_body: int = MAX_WEBHOOK_BODY
    log: Logger = field(factory=Logger)
    clock: Callable[[], float] = time.time
    """Epoch seconds of the delivery records."""
    installations: Callable[[str, int], None] | None = None
    """Told (repo, installation id) of each verified GitHub App delivery (saves a look-up)."""
    commands: Callable[[Command], None] | None = None
    """Runs a `/preview` command in the background (`CommandRunner.submit`); None: refused."""

    def receive(self, request: Request, name: str) -> Answer:
        """POST /webhooks/<name>."""
        forge = webhook_forge(name)
        if forge is None:
            raise RequestRefused("not_found", f"no webhooks for {name!r}")
        label = forge.name
        try:
            secret = forge.webhook_secret(self.config)
            if not secret:
                raise RequestRefused("forbidden", forge.webhooks_off())
            delivery = Delivery(_headers(request), read_body(request, self.max_body))
            refused = forge.verify(secret, delivery)
            if refused is not None:
                self._unverified(request, label, delivery, refused)
                raise RequestRefused("unauthenticated", refused)
            event = forge.parse(delivery)
        except RequestRefused as error:
            raise self._refuse(label, error) from None
        if isinstance(event, PullRequestEvent):
            self._remember_installation(event)
        return self._handle(forge, event, delivery.body)

    # --- steps ------------------------------------------------------------------

    def _remember_installation(self, event: PullRequestEvent) -> None:
        """Hand a GitHub App delivery's installation on, so no look-up is needed for it."""
        if event.installation is not None and self.installations is not None:
            self.installations(event.repo, event.installation)

    def _unverified(self, request: Request, forge: str, delivery: Delivery, reason: str) -> None:
        """Keep a delivery that failed verification in its own bucket; its body is never parsed."""
        ids = ("x-github-delivery", "x-gitlab-event-uuid", "x-gitlab-webhook-uuid")
        delivery_id = next((delivery.headers[h] for h in ids if delivery.headers.get(h)), "")
        address = request.getClientAddress()
        peer = str(getattr(address, "host", "") or "")
        entry = UnverifiedDelivery(delivery_id[:200], forge, self.clock(), peer, reason)
        self.store.record_unverified(entry)

    def _record(
        self,
        forge: str,
        event: ForgeEvent,
        decision: Decision,
        reason: str | None = None,
        preview: str | None = None,
    ) -> None:
        """Add the delivery and its decision to the trail (`GET /api/deliveries`, `prevu why`)."""
        kind, action, repo, number, sha = "other", "", "", 0, ""
        if isinstance(event, PullRequestEvent):
            pr = event.pull_request
            kind, action = "pull_request", event.raw_action or event.action
            repo, number, sha = pr.repo, pr.number, pr.sha
        elif isinstance(event, Command):
            words = event.line.split()
            verb = words[1].lower()[:40] if len(words) > 1 else ""
            kind, action, repo, number = "comment", verb, event.repo, event.number
        elif isinstance(event, Ping):
            kind = "ping"
        entry = DeliveryEntry(
            event.delivery, forge, kind, action, repo, number, sha, self.clock(), decision,
            reason or "", preview or "",
        )  # fmt: skip
        self.store.record_delivery(entry)

    def _refuse(self, forge: str, error: RequestRefused) -> RequestRefused:
        # The metric keeps the status code as its label (docs/api.md), read from the one table.
        status = STATUS[error.problem]
        self.metrics.inc("prevu_webhooks_total", forge=forge, result=str(status))
        self.log.warn(
            "{forge} webhook refused ({status}): {reason}",
            forge=forge,
            status=status,
            reason=error.reason,
        )
        return error

    def _answer(self, forge: str, result: str, body: Mapping[str, Any], queued: bool) -> Answer:
        self.metrics.inc("prevu_webhooks_total", forge=forge, result=result)
        return json_answer("accepted" if queued else "ok", body)

    def _handle(self, forge: Forge, event: ForgeEvent, raw: bytes) -> Answer:
        name = forge.name
        delivery = event.delivery
        body: dict[str, Any]
        if isinstance(event, Ping):
            self._record(name, event, "ignored", "ping")
            body = {"status": "pong", "delivery": delivery}
            return self._answer(name, "ping", body, False)
        if isinstance(event, Ignored):
            self._record(name, event, "ignored", event.reason)
            body = {"status": "ignored", "reason": event.reason, "delivery": delivery}
            return self._answer(name, "ignored", body, False)
        # The delivery id is not covered by GitHub's signature: a captured
        # delivery replayed under a new id is recognised by its body.
        # Remembered only once acted on: an ignored delivery, or one that
        # failed before its decision (5xx), is processed again when redelivered.
        digest = hashlib.sha256(raw).hexdigest()
        keys = (f"{name}:{delivery}", f"{name}:sha256:{digest}")
        if any(self.store.seen_delivery(key) for key in keys):
            self._record(name, event, "duplicate", "already acted on")
            body = {"status": "duplicate", "reason": "already handled", "delivery": delivery}
            return self._answer(name, "duplicate", body, False)
        decision = policy.decide(self.config, event)
        if isinstance(decision, policy.Act):
            return self._command(name, decision.command, keys)
        try:
            receipt = self.orchestrator.apply(decision)
        except Exception as error:
            self._record(name, event, "failed", f"{type(error).__name__}: {error}")
            raise
        if receipt.status == "ignored":
            stale = (receipt.reason or "").startswith("stale")
            self._record(name, event, "stale" if stale else "ignored", receipt.reason)
            body = {"status": "ignored", "reason": receipt.reason, "delivery": delivery}
            return self._answer(name, "ignored", body, False)
        if isinstance(decision, policy.Deny):  # refused: processed again when redelivered
            self._record(name, event, "refused", decision.reason, receipt.preview)
        else:
            self._record(name, event, "queued", None, receipt.preview)
            for key in keys:
                self.store.remember_delivery(key)
        self.log.info(
            "{forge} delivery {delivery} queued for preview {preview}",
            forge=name,
            delivery=delivery,
            preview=receipt.preview,
        )
        body = {
            "status": "queued",
            "preview": receipt.preview,
            "url": receipt.url,
            "delivery": delivery,
        }
        return self._answer(name, "queued", body, True)

    def _command(self, name: str, command: Command, keys: tuple[str, ...]) -> Answer:
        """Hand a `/preview` command to the runner and answer 202 at once."""
        body: dict[str, Any]
        if self.commands is None:
            reason = f"/preview commands need the {name} API: set [{name}] token"
            self._record(name, command, "refused", reason)
            body = {"status": "refused", "reason": reason, "delivery": command.delivery}
            return self._answer(name, "refused", body, False)
        self._record(name, command, "queued", "command")
        for key in keys:
            self.store.remember_delivery(key)
        self.commands(command)
        self.log.info(
            "{forge} delivery {delivery}: {line} by {commenter} queued",
            forge=name,
            delivery=command.delivery,
            line=command.line,
            commenter=command.commenter,
        )
        body = {"status": "queued", "command": command.line, "delivery": command.delivery}
        return self._answer(name, "queued", body, True)
