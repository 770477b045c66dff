"""
The webhook endpoints: `POST /webhooks/github` and `POST /webhooks/gitlab`.

Answer fast and never wait for git or Docker: the body is checked (size,
signature or token), parsed into a typed event, de-duplicated by delivery id,
filtered by `[[repos]]`, and handed to the orchestrator, which only records
the event and schedules its jobs. Status codes (SPEC §4):

- 202 with a JSON body once the job is queued;
- 200 for `ping`, ignored events and redelivered delivery ids (a no-op);
- 401 bad or missing signature/token; 403 when the forge is not configured;
- 400 malformed payload or missing headers; 413 body over `max_body`.

Errors are raised as `WebhookError(status, reason)`; the control app turns
them into JSON answers.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from attrs import define, field
from twisted.logger import Logger

from prevu.config import Config
from prevu.control.app import json_response
from prevu.errors import WebhookError
from prevu.forge import github, gitlab, policy
from prevu.forge.events import ForgeEvent, Ignored, Ping
from prevu.orchestrator.engine import Receipt
from prevu.orchestrator.metrics import Metrics

MAX_WEBHOOK_BODY = 25 << 20
"""GitHub caps payloads at 25 MB; anything bigger is not a real delivery."""


class Applies(Protocol):
    """What the webhooks need of the orchestrator."""

    def apply(self, decision: policy.Decision) -> Receipt: ...


class Deliveries(Protocol):
    """What the webhooks need of the store."""

    def remember_delivery(self, delivery: str) -> bool: ...


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def read_body(request: Any, limit: int) -> bytes:
    """The raw request body, or WebhookError(413) when it is larger than `limit`."""
    length = _header(request, b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise WebhookError(413, f"body of {length} bytes is over the {limit} byte limit")
    content: Any = request.content
    if content is None:
        return b""
    content.seek(0)
    body: bytes = content.read(limit + 1)
    if len(body) > limit:
        raise WebhookError(413, f"body is over the {limit} byte limit")
    return body


@define
class Webhooks:
    """The two webhook handlers, delegated to from the control app."""

    config: Config
    orchestrator: Applies
    store: Deliveries
    metrics: Metrics = field(factory=Metrics)
    max_body: int = MAX_WEBHOOK_BODY
    log: Logger = field(factory=Logger)

    def github(self, request: Any) -> bytes:
        """POST /webhooks/github."""
        secret = self.config.github.webhook_secret
        if not secret:
            reason = "GitHub webhooks are off: set [github] webhook_secret"
            raise self._refuse("github", 403, reason)
        body = self._body(request, "github")
        if not github.verify_signature(secret, body, _header(request, b"x-hub-signature-256")):
            raise self._refuse("github", 401, "bad or missing X-Hub-Signature-256")
        event_name = _header(request, b"x-github-event")
        delivery = _header(request, b"x-github-delivery")
        if not event_name or not delivery:
            raise self._refuse("github", 400, "missing X-GitHub-Event or X-GitHub-Delivery")
        event = self._parse("github", lambda: github.parse(event_name, delivery, body))
        return self._handle(request, "github", event, body)

    def gitlab(self, request: Any) -> bytes:
        """POST /webhooks/gitlab."""
        token = self.config.gitlab.webhook_token
        if not token:
            raise self._refuse("gitlab", 403, "GitLab webhooks are off: set [gitlab] webhook_token")
        body = self._body(request, "gitlab")
        if not gitlab.verify_token(token, _header(request, b"x-gitlab-token")):
            raise self._refuse("gitlab", 401, "bad or missing X-Gitlab-Token")
        event_name = _header(request, b"x-gitlab-event")
        delivery = _header(request, b"x-gitlab-event-uuid") or _header(
            request, b"x-gitlab-webhook-uuid"
        )
        if not event_name or not delivery:
            raise self._refuse("gitlab", 400, "missing X-Gitlab-Event or X-Gitlab-Event-UUID")
        event = self._parse("gitlab", lambda: gitlab.parse(event_name, delivery, body))
        return self._handle(request, "gitlab", event, body)

    # --- steps ------------------------------------------------------------------

    def _refuse(self, forge: str, status: int, reason: str) -> WebhookError:
        self.metrics.inc("prevu_webhooks_total", forge=forge, result=str(status))
        self.log.warn(
            "{forge} webhook refused ({status}): {reason}",
            forge=forge,
            status=status,
            reason=reason,
        )
        return WebhookError(status, reason)

    def _body(self, request: Any, forge: str) -> bytes:
        try:
            return read_body(request, self.max_body)
        except WebhookError as error:
            raise self._refuse(forge, error.status, error.reason) from None

    def _parse(self, forge: str, parse: Any) -> ForgeEvent:
        try:
            event: ForgeEvent = parse()
        except WebhookError as error:
            raise self._refuse(forge, error.status, error.reason) from None
        return event

    def _answer(
        self, request: Any, forge: str, result: str, body: dict[str, Any], code: int
    ) -> bytes:
        self.metrics.inc("prevu_webhooks_total", forge=forge, result=result)
        return json_response(request, body, code)

    def _handle(self, request: Any, forge: str, event: ForgeEvent, raw: bytes) -> bytes:
        delivery = event.delivery
        if isinstance(event, Ping):
            body: dict[str, Any] = {"status": "pong", "delivery": delivery}
            return self._answer(request, forge, "ping", body, 200)
        if isinstance(event, Ignored):
            body = {"status": "ignored", "reason": event.reason, "delivery": delivery}
            return self._answer(request, forge, "ignored", body, 200)
        # The delivery id is not covered by GitHub's signature: a captured
        # delivery replayed under a new id is recognised by its body.
        digest = hashlib.sha256(raw).hexdigest()
        fresh_id = self.store.remember_delivery(f"{forge}:{delivery}")
        fresh_body = self.store.remember_delivery(f"{forge}:sha256:{digest}")
        if not (fresh_id and fresh_body):
            body = {"status": "duplicate", "reason": "already handled", "delivery": delivery}
            return self._answer(request, forge, "duplicate", body, 200)
        decision = policy.decide(self.config, event)
        receipt = self.orchestrator.apply(decision)
        if receipt.status == "ignored":
            body = {"status": "ignored", "reason": receipt.reason, "delivery": delivery}
            return self._answer(request, forge, "ignored", body, 200)
        self.log.info(
            "{forge} delivery {delivery} queued for preview {preview}",
            forge=forge,
            delivery=delivery,
            preview=receipt.preview,
        )
        body = {
            "status": "queued",
            "preview": receipt.preview,
            "url": receipt.url,
            "delivery": delivery,
        }
        return self._answer(request, forge, "queued", body, 202)
