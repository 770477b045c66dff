"""
The issuing service: which names need a certificate, and getting them one.

It listens to the route table: every routed host (a preview, a `[[routes]]`
host, the control host of `public_url`) needs a certificate, or, with DNS-01,
hosts directly under `domain` share the wildcard `*.<domain>`. Names are
issued one order at a time, at most `orders_per_hour` orders per sliding
hour. A failed order is retried with exponential backoff; nothing here ever
raises into the reactor, so the proxy keeps serving (the default certificate
for names without one). Each certificate is renewed `renew_before` its
expiry, or when the server's ACME renewal info (ARI) suggests, on timers of
the injected clock.

Blocking work (the ACME client, the disk) runs on prevu's thread pool; all
state lives on the reactor thread.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from prevu.backoff import BackoffPolicy, exponential
from prevu.routing import RouteTable
from prevu.tls.acme import DNS_01, Challenge, PendingOrder, new_account_key
from prevu.tls.certs import CertificateBundle, covers
from prevu.tls.contexts import SniContexts
from prevu.tls.responders import ChallengeResponder
from prevu.tls.store import CertificateStore

log = Logger()

State = Literal["pending", "issuing", "valid", "renewing", "failed", "unused"]


class AcmeBackend(Protocol):
    """The blocking ACME client the issuer drives from threads (`prevu.tls.acme.AcmeClient`)."""

    def begin(self, names: tuple[str, ...], kind: str) -> PendingOrder: ...

    def answer(self, challenge: Challenge) -> None: ...

    def finish(self, order: PendingOrder, within: float) -> bytes: ...

    def renewal_info(self, chain_pem: bytes) -> tuple[float | None, float]: ...

    def reset(self) -> None: ...


def issuable(host: str) -> bool:
    """Whether a public CA could issue for `host` (not an IP, not localhost, has a dot)."""
    name = host[2:] if host.startswith("*.") else host
    if "." not in name or name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


def certificate_names(hosts: Iterable[str], domain: str, wildcard: bool) -> set[str]:
    """
    The certificate names that serve `hosts`.

    With `wildcard` (DNS-01), a host one label under `domain` is served by
    `*.<domain>`, and wildcard routes get wildcard certificates; without it,
    wildcard routes cannot be served by ACME (HTTP-01 and TLS-ALPN-01 cannot
    prove a wildcard) and are skipped.
    """
    names: set[str] = set()
    shared = f"*.{domain}"
    for host in hosts:
        host = host.lower().rstrip(".")
        if not issuable(host):
            continue
        if host.startswith("*."):
            if wildcard:
                names.add(host)
        elif wildcard and covers(shared, host):
            names.add(shared)
        else:
            names.add(host)
    return names


def renewal_point(bundle: CertificateBundle, renew_before: float) -> float:
    """When to renew `bundle`: `renew_before` its expiry, but not in its first third of life."""
    lifetime = bundle.not_after - bundle.not_before
    return max(bundle.not_after - renew_before, bundle.not_before + lifetime / 3 * 2)


@frozen
class CertificateStatus:
    """What the API and the metrics say about one certificate name."""

    name: str
    state: State
    not_after: float | None = None
    renew_at: float | None = None
    next_attempt: float | None = None
    failures: int = 0
    error: str | None = None
    fingerprint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.name,
            "state": self.state,
            "not_after": self.not_after,
            "renew_at": self.renew_at,
            "next_attempt": self.next_attempt,
            "failures": self.failures,
            "error": self.error,
            "fingerprint": self.fingerprint,
        }


def _cancel_timer(result: object, timer: DelayedCall) -> None:
    if timer.active():
        timer.cancel()


@define
class _Entry:
    name: str
    state: State = "pending"
    bundle: CertificateBundle | None = None
    failures: int = 0
    error: str | None = None
    next_attempt: float | None = None
    renew_at: float | None = None
    ari_at: float | None = None
    obtained_at: float = 0.0
    timer: DelayedCall | None = None
    waiters: list[Deferred[None]] = field(factory=list)

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


@define(eq=False)
class CertificateIssuer(Service):
    """
    Orders, stores, installs and renews ACME certificates for the routed hosts.

    `clock` schedules everything (a `Clock` in tests); `reactor` and `pool`
    run the blocking ACME client. Also the `HandshakeGate` of the https port:
    `wait_for` lets a handshake wait (bounded) for a certificate in flight.
    """

    clock: Any
    reactor: Any
    pool: ThreadPool
    store: CertificateStore
    contexts: SniContexts
    responder: ChallengeResponder
    client_factory: Callable[[bytes], AcmeBackend]
    domain: str
    renew_before: float = 30 * 86400.0
    orders_per_hour: int = 20
    handshake_wait: float = 10.0
    order_timeout: float = 120.0
    backoff: float = 60.0
    max_backoff: float = 6 * 3600.0
    retry: BackoffPolicy | None = None
    """The retry policy; None means `exponential(backoff, 2, max_backoff)` (prevu.backoff)."""
    ari_recheck: float = 6 * 3600.0
    _entries: dict[str, _Entry] = field(factory=dict)
    _queue: deque[str] = field(factory=deque)
    _orders: deque[float] = field(factory=deque)
    _busy: bool = False
    _pump_timer: DelayedCall | None = None
    _client: AcmeBackend | None = None
    _wanted: set[str] = field(factory=set)
    _loaded: bool = False
    orders_started: int = 0
    orders_failed: int = 0

    @property
    def wildcard(self) -> bool:
        return self.responder.kind == DNS_01

    # --- lifecycle ------------------------------------------------------------

    def load(self) -> None:
        """Install the stored certificates (blocking; once, before the reactor serves)."""
        if self._loaded:
            return
        self._loaded = True
        for name, bundle in self.store.load_all().items():
            self.contexts.install(bundle)
            self._entries[name] = _Entry(
                name=name, state="unused", bundle=bundle, obtained_at=bundle.not_before
            )
            log.info(
                "loaded certificate {name} valid until {not_after}",
                name=name,
                not_after=bundle.not_after,
            )

    def startService(self) -> None:
        super().startService()
        self.load()
        self.want(self._wanted)

    def stopService(self) -> Any:
        super().stopService()
        for entry in self._entries.values():
            entry.cancel_timer()
            self._release(entry)
        if self._pump_timer is not None and self._pump_timer.active():
            self._pump_timer.cancel()
        return None

    # --- which names ------------------------------------------------------------

    def routes_changed(self, table: RouteTable) -> None:
        """RouteRegistry listener: want a certificate for every routed host."""
        self.want(certificate_names((route.host for route in table), self.domain, self.wildcard))

    def want(self, names: Iterable[str]) -> None:
        """Make `names` exactly the set of certificates kept issued and renewed."""
        wanted = set(names)
        self._wanted = wanted
        if not self.running:
            return
        for name in sorted(wanted):
            entry = self._entries.get(name)
            if entry is None:
                entry = self._entries[name] = _Entry(name=name)
                log.info("certificate for {name} needed", name=name)
                self._enqueue(entry)
            elif entry.state == "unused":
                self._schedule_renewal(entry) if entry.bundle else self._enqueue(entry)
        for name, entry in self._entries.items():
            if name not in wanted and entry.state != "unused":
                entry.cancel_timer()
                if name in self._queue:
                    self._queue.remove(name)
                if entry.state not in ("issuing", "renewing"):
                    entry.state = "unused"
                self._release(entry)

    # --- on-demand handshakes ----------------------------------------------------

    def wait_for(self, host: str) -> Deferred[None] | None:
        """HandshakeGate: wait (bounded) when `host`'s certificate is queued or being issued."""
        host = host.lower()
        if self.contexts.bundle_for(host) is not None:
            return None
        for entry in self._entries.values():
            if entry.state in ("pending", "issuing") and covers(entry.name, host):
                waiter: Deferred[None] = Deferred()
                entry.waiters.append(waiter)
                timer = self.clock.callLater(self.handshake_wait, self._time_out, entry, waiter)
                waiter.addBoth(_cancel_timer, timer)
                log.debug("handshake for {host} waits for {name}", host=host, name=entry.name)
                return waiter
        return None

    def _time_out(self, entry: _Entry, waiter: Deferred[None]) -> None:
        if waiter in entry.waiters:
            entry.waiters.remove(waiter)
            waiter.callback(None)

    def _release(self, entry: _Entry) -> None:
        waiters, entry.waiters = entry.waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # --- scheduling ----------------------------------------------------------------

    def _enqueue(self, entry: _Entry) -> None:
        entry.cancel_timer()
        if entry.state not in ("issuing", "renewing"):
            entry.state = "renewing" if entry.bundle is not None else "pending"
        if entry.name not in self._queue:
            self._queue.append(entry.name)
        self._pump()

    def _pump(self) -> None:
        if self._busy or not self._queue or not self.running:
            return
        now = self.clock.seconds()
        while self._orders and self._orders[0] <= now - 3600:
            self._orders.popleft()
        if len(self._orders) >= self.orders_per_hour:
            at = self._orders[0] + 3600
            log.warn(
                "order cap of {cap}/hour reached; next order at {at}",
                cap=self.orders_per_hour,
                at=at,
            )
            for name in self._queue:
                self._entries[name].next_attempt = at
            if self._pump_timer is None or not self._pump_timer.active():
                self._pump_timer = self.clock.callLater(at - now, self._pump)
            return
        name = self._queue.popleft()
        entry = self._entries[name]
        self._busy = True
        self._orders.append(now)
        Deferred.fromCoroutine(self._issue(entry)).addBoth(self._done)

    def _done(self, result: object) -> None:
        self._busy = False
        self._pump()

    def _schedule(self, entry: _Entry, at: float, action: Callable[[_Entry], None]) -> None:
        entry.cancel_timer()
        entry.timer = self.clock.callLater(max(0.0, at - self.clock.seconds()), action, entry)

    def _schedule_renewal(self, entry: _Entry) -> None:
        assert entry.bundle is not None
        entry.state = "valid"
        entry.error = None
        entry.next_attempt = None
        default = renewal_point(entry.bundle, self.renew_before)
        if entry.renew_at is None or entry.ari_at is None:
            entry.renew_at = default
        at = entry.renew_at
        if entry.ari_at is not None:
            at = min(at, entry.ari_at)
        elif self.clock.seconds() < at:
            # Ask for renewal info soon (and in a thread): it may move the renewal earlier.
            at = min(at, self.clock.seconds())
        self._schedule(entry, at, self._renewal_due)

    def _renewal_due(self, entry: _Entry) -> None:
        entry.timer = None
        if entry.renew_at is not None and self.clock.seconds() >= entry.renew_at:
            log.info("renewing {name}", name=entry.name)
            self._enqueue(entry)
            return
        Deferred.fromCoroutine(self._check_renewal_info(entry))

    async def _check_renewal_info(self, entry: _Entry) -> None:
        bundle = entry.bundle
        assert bundle is not None
        default = renewal_point(bundle, self.renew_before)
        try:
            client = await self._backend()
            suggested, again = await self._in_thread(client.renewal_info, bundle.chain_pem)
        except Exception as error:  # any failure: keep the default renewal point
            log.info("no renewal info for {name}: {error}", name=entry.name, error=error)
            suggested, again = None, self.clock.seconds() + self.ari_recheck
        if entry.bundle is not bundle or entry.state != "valid":
            return
        if suggested is not None and suggested <= entry.obtained_at:
            # A window that closed before this certificate was obtained is about its predecessor.
            suggested = None
        entry.renew_at = suggested if suggested is not None else default
        entry.ari_at = max(again, self.clock.seconds() + 60.0)
        if suggested is not None:
            log.info("ARI: renew {name} at {at}", name=entry.name, at=suggested)
        self._schedule_renewal(entry)

    # --- issuing --------------------------------------------------------------

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return await deferToThreadPool(self.reactor, self.pool, function, *args)

    async def _backend(self) -> AcmeBackend:
        if self._client is None:
            key = await self._in_thread(self._account_key)
            self._client = self.client_factory(key)
        return self._client

    def _account_key(self) -> bytes:
        key = self.store.load_account_key()
        if key is None:
            key = new_account_key()
            self.store.save_account_key(key)
        return key

    async def _issue(self, entry: _Entry) -> None:
        renewing = entry.bundle is not None
        entry.state = "renewing" if renewing else "issuing"
        self.orders_started += 1
        names = (entry.name,)
        log.info(
            "ordering a certificate for {name} ({kind})", name=entry.name, kind=self.responder.kind
        )
        started = self.clock.seconds()
        try:
            client = await self._backend()
            order: PendingOrder = await self._in_thread(client.begin, names, self.responder.kind)
            published: list[Challenge] = []
            try:
                for challenge in order.challenges:
                    await self.responder.publish(challenge)
                    published.append(challenge)
                for challenge in order.challenges:
                    await self._in_thread(client.answer, challenge)
                chain = await self._in_thread(client.finish, order, self.order_timeout)
            finally:
                for challenge in published:
                    try:
                        await self.responder.withdraw(challenge)
                    except Exception as error:
                        log.warn(
                            "could not withdraw {kind} for {name}: {error}",
                            kind=challenge.type,
                            name=challenge.name,
                            error=error,
                        )
            bundle = CertificateBundle.from_pem(chain, order.key_pem, entry.name)
            await self._in_thread(self.store.save, entry.name, bundle)
        except Exception as error:  # never into the reactor: log, back off, retry
            self._failed(entry, error)
            return
        self.contexts.install(bundle)
        entry.bundle = bundle
        entry.obtained_at = self.clock.seconds()
        entry.failures = 0
        entry.renew_at = None
        entry.ari_at = None
        log.info(
            "certificate for {name} issued in {seconds:.1f}s, valid until {not_after}",
            name=entry.name,
            seconds=self.clock.seconds() - started,
            not_after=bundle.not_after,
        )
        self._release(entry)
        if entry.name in self._wanted:
            self._schedule_renewal(entry)
        else:
            entry.state = "unused"

    def _failed(self, entry: _Entry, error: Exception) -> None:
        self.orders_failed += 1
        if self._client is not None:
            self._client.reset()
        entry.failures += 1
        entry.error = f"{type(error).__name__}: {error}"[:500]
        policy = self.retry or exponential(self.backoff, 2.0, max(self.max_backoff, self.backoff))
        delay = policy(entry.failures)
        entry.next_attempt = self.clock.seconds() + delay
        entry.state = "failed"
        log.warn(
            "certificate for {name} failed (attempt {attempt}), retry in {delay:.0f}s: {error}",
            name=entry.name,
            attempt=entry.failures,
            delay=delay,
            error=entry.error,
        )
        self._release(entry)
        if entry.name in self._wanted:
            self._schedule(entry, entry.next_attempt, self._enqueue)
        else:
            entry.state = "unused"

    # --- status -----------------------------------------------------------------

    def order_counts(self) -> tuple[int, int]:
        """ACME orders (started, failed) since start."""
        return self.orders_started, self.orders_failed

    def statuses(self) -> list[CertificateStatus]:
        """One status per certificate name, sorted by name."""
        result = []
        for name in sorted(self._entries):
            entry = self._entries[name]
            bundle = entry.bundle
            result.append(
                CertificateStatus(
                    name=name,
                    state=entry.state,
                    not_after=bundle.not_after if bundle else None,
                    renew_at=entry.renew_at if entry.state in ("valid", "renewing") else None,
                    next_attempt=entry.next_attempt,
                    failures=entry.failures,
                    error=entry.error,
                    fingerprint=bundle.fingerprint if bundle else None,
                )
            )
        return result
