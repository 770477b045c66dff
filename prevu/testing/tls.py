"""
Fakes for the TLS package: an in-memory ACME backend, and a thread pool that runs inline.

`FakeAcmeBackend` implements `prevu.tls.issuer.AcmeBackend` with self-signed
certificates, so issuer tests (order cap, backoff, ARI, on-demand waiting)
run on a `Clock` without threads or network. The real client is tested
against pebble in tests/test_tls_pebble.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from acme import messages
from attrs import define, field
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from prevu.errors import CertificateError
from prevu.tls.acme import HTTP_01, Challenge, PendingOrder
from prevu.tls.certs import new_private_key, private_key_pem, self_signed


class InlineThreadPool:
    """A ThreadPool stand-in that runs each call at once, on the calling thread."""

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None],
        function: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        try:
            result = function(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ThreadedClock(Clock):
    """A Clock that is also the reactor `deferToThreadPool` calls back through."""

    def callFromThread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)


@define
class FakeAcmeBackend:
    """An ACME server in memory: issues self-signed certificates valid `lifetime` seconds."""

    clock: Clock
    lifetime: float = 90 * 86400.0
    kind: str = HTTP_01
    failing: bool = False
    suggested: float | None = None
    begun: list[tuple[str, ...]] = field(factory=list)
    answered: list[Challenge] = field(factory=list)
    resets: int = 0

    def begin(self, names: tuple[str, ...], kind: str) -> PendingOrder:
        if self.failing:
            raise CertificateError(names[0], "connection refused (fake)")
        self.begun.append(names)
        challenges = tuple(
            Challenge(
                identifier=name.removeprefix("*."),
                wildcard=name.startswith("*."),
                type=kind,
                token=f"token-{len(self.begun)}-{index}",
                url=f"https://acme.test/chall/{index}",
                key_authorization=f"token-{len(self.begun)}-{index}.thumbprint",
            )
            for index, name in enumerate(names)
        )
        return PendingOrder(
            resource=messages.OrderResource(uri="https://acme.test/order/1"),
            challenges=challenges,
            key_pem=private_key_pem(new_private_key()),
        )

    def answer(self, challenge: Challenge) -> None:
        self.answered.append(challenge)

    def finish(self, order: PendingOrder, within: float) -> bytes:
        key = load_pem_private_key(order.key_pem, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        names = tuple(c.name for c in order.challenges)
        return self_signed(names, self.clock.seconds(), self.lifetime, key).chain_pem

    def renewal_info(self, chain_pem: bytes) -> tuple[float | None, float]:
        return self.suggested, self.clock.seconds() + 6 * 3600

    def reset(self) -> None:
        self.resets += 1
