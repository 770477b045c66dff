"""
The HTTP side that GitHub's and GitLab's API clients share, on treq (I/O edge).

`ForgeHttp` is one forge's connection pool and its request loop: a JSON call
bounded by a timeout (`send_json`), retried on 5xx, 429 and rate-limit 403s
(`retryable`), waiting what the forge says (`retry_delay`: `Retry-After`, else
the reset of an exhausted rate limit, GitHub's `X-RateLimit-*` or GitLab's
`RateLimit-*`) or, when it says nothing, what the backoff policy answers, on
the injected clock. What differs between forges is given to it: the forge's
name and how its error bodies say why (in errors and log lines), the request
headers of each attempt (GitHub's may need a fresh installation token), and
whether a refused credential is renewed once (GitHub Apps).

Errors:

    ForgeApiError       the forge refused a call that retrying will not change
    └── ForgeUnavailable    the retries ran out (down, rate limited): try later

Neither carries a header, a token or a JWT.

No retry library is used: none of prevu's dependencies offers one for
coroutines on the reactor (Twisted's `ClientService` backoff retries only
connections), and the loop's rules (a create's `recover` before re-sending,
the forge's own delay, one immediate re-send with a renewed token) would be
hooks around such a library rather than fewer lines.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import define, field, frozen
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from prevu.backoff import BackoffPolicy
from prevu.errors import PrevuError

Headers = dict[bytes | str, list[bytes | str]]
"""Request headers as treq takes them: name → values."""


@frozen(auto_exc=True)
class ForgeApiError(PrevuError):
    """The forge refused a call (`status` 0: no answer at all). Carries no credential."""

    method: str
    path: str
    status: int
    reason: str
    forge: str = "GitHub"

    def __str__(self) -> str:
        answer = self.status or "no answer"
        return f"{self.forge} {self.method} {self.path}: {answer} {self.reason}"


class ForgeUnavailable(ForgeApiError):
    """The forge did not answer usefully after every retry (down, rate limited): try later."""


async def send_json(
    http: HTTPClient,
    reactor: Any,
    timeout: float,
    method: str,
    url: str,
    headers: Headers,
    body: Any,
) -> tuple[int, Any, Any]:
    """
    One forge API call (GitHub's and GitLab's clients): `body` sent as JSON
    when not None, the request and the reading of the answer each bounded by
    `timeout` seconds (`reactor` runs the timers). Answers (status code,
    response headers, the decoded JSON body or None when empty or not JSON).

    :raises twisted.internet.defer.TimeoutError: past `timeout`.
    :raises Exception: what treq raises for a connection that fails.
    """
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers[b"content-type"] = [b"application/json"]
    requested: Deferred[Any] = http.request(method, url, headers=headers, data=data)
    requested.addTimeout(timeout, reactor)
    response = await requested
    content: Deferred[bytes] = response.content()
    content.addTimeout(timeout, reactor)
    raw = await content
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = None
    return int(response.code), response.headers, decoded


def retry_delay(headers: Any, body: Any, status: int, now: float) -> float | None:
    """
    Seconds the forge asks to wait (None: no say), for a retryable answer:
    `Retry-After`, else the reset of an exhausted rate limit (GitHub's
    `X-RateLimit-*`, GitLab's `RateLimit-*`: both epoch seconds).
    """
    after = headers.getRawHeaders(b"retry-after") or []
    if after:
        try:
            return max(0.0, float(after[0].decode()))
        except ValueError:
            pass
    remaining = (
        headers.getRawHeaders(b"x-ratelimit-remaining")
        or headers.getRawHeaders(b"ratelimit-remaining")
        or []
    )
    reset = (
        headers.getRawHeaders(b"x-ratelimit-reset")
        or headers.getRawHeaders(b"ratelimit-reset")
        or []
    )
    if remaining and remaining[0] == b"0" and reset:
        try:
            return max(0.0, float(reset[0].decode()) - now)
        except ValueError:
            pass
    return None


def retryable(status: int, headers: Any, body: Any) -> bool:
    """True for an answer worth retrying: 5xx, 429, and GitHub's rate-limit 403s."""
    if status >= 500 or status == 429:
        return True
    if status == 403:
        message = str(body.get("message", "")).lower() if isinstance(body, dict) else ""
        remaining = headers.getRawHeaders(b"x-ratelimit-remaining") or []
        return (
            "rate limit" in message
            or bool(headers.getRawHeaders(b"retry-after"))
            or (bool(remaining) and remaining[0] == b"0")
        )
    return False


@define
class ForgeHttp:
    """
    One forge's API over HTTP: a persistent pool (4 connections a host) and
    `call`, the request loop with retries.

    @ivar reactor: makes connections and bounds each request (`timeout` seconds).
    @ivar clock: times the waits between attempts (a `Clock` in tests).
    @ivar forge: the forge's name in errors and log lines (`GitHub`, `GitLab`).
    @ivar base: the API's URL, to which a call's path is appended.
    @ivar reason: why an error body says the call failed (at most 200 characters, or "").
    @ivar backoff: seconds before the n-th retry when the forge does not say.
    @ivar attempts: attempts of a call before `ForgeUnavailable` (>= 1).
    @ivar log: where each retry is logged (the client's logger).
    """

    reactor: Any
    clock: Any
    forge: str
    base: str
    reason: Callable[[Any], str]
    backoff: BackoffPolicy
    attempts: int
    timeout: float
    log: Logger
    _http: HTTPClient = field(init=False)

    def __attrs_post_init__(self) -> None:
        pool = HTTPConnectionPool(self.reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        agent: Any = Agent(self.reactor, pool=pool)  # an IAgent (zope, not a Protocol)
        self._http = HTTPClient(agent)

    async def call(
        self,
        method: str,
        path: str,
        body: Any,
        headers: Callable[[], Awaitable[Headers]],
        *,
        ok: tuple[int, ...] = (200,),
        absent: tuple[int, ...] = (),
        recover: Callable[[], Awaitable[Any]] | None = None,
        renew: Callable[[int], bool] | None = None,
    ) -> tuple[int, Any]:
        """
        One API call with retries; answers (status, decoded JSON or None).

        :param headers: the request headers of each attempt, a new dict each
            time; awaited before sending, outside the retries (what it raises
            is raised).
        :param ok: the statuses of success.
        :param absent: statuses returned rather than raised (404 on a lookup).
        :param recover: before each re-send, looks for what a failed attempt
            may have made anyway; a value other than None is answered as
            (200, value).
        :param renew: given the status of a refused first attempt, renews the
            credential and answers True to re-send at once (counts as a failure).
        :raises ForgeApiError: an answer that retrying will not change.
        :raises ForgeUnavailable: no useful answer after `attempts` attempts.
        """
        failures = 0
        while True:
            if failures and recover is not None:
                found = await recover()
                if found is not None:
                    return 200, found
            sent = await headers()
            try:
                status, answered, decoded = await send_json(
                    self._http, self.reactor, self.timeout, method, self.base + path, sent, body
                )
            except Exception as error:  # connection refused, reset, timeout: retry
                failures += 1
                if failures >= self.attempts:
                    raise ForgeUnavailable(
                        method, path, 0, type(error).__name__, self.forge
                    ) from None
                await self._wait(self.backoff(failures))
                continue
            if status in ok or status in absent:
                return status, decoded
            if failures == 0 and renew is not None and renew(status):
                failures += 1
                continue
            if not retryable(status, answered, decoded):
                raise ForgeApiError(method, path, status, self.reason(decoded), self.forge)
            failures += 1
            if failures >= self.attempts:
                raise ForgeUnavailable(method, path, status, self.reason(decoded), self.forge)
            said = retry_delay(answered, decoded, status, self.clock.seconds())
            delay = said if said is not None else self.backoff(failures)
            self.log.warn(
                "{forge} {method} {path} answered {status}; retry {failures} in {delay:.1f}s",
                forge=self.forge,
                method=method,
                path=path,
                status=status,
                failures=failures,
                delay=delay,
            )
            await self._wait(delay)

    async def _wait(self, delay: float) -> None:
        await deferLater(self.clock, delay, lambda: None)
