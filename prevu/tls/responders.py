"""
Challenge responders: make a challenge answerable, then stop answering it.

The same shape as txacme's `IResponder`: one object per challenge type, with
`publish` before the challenge is answered and `withdraw` after validation
(successful or not). All run on the reactor thread.
"""

from __future__ import annotations

from typing import Any, Protocol

from attrs import frozen

from prevu.tls.acme import DNS_01, HTTP_01, TLS_ALPN_01, Challenge
from prevu.tls.certs import alpn_challenge
from prevu.tls.contexts import SniContexts
from prevu.tls.dns import DnsProvider
from prevu.tls.http import Http01Tokens


class ChallengeResponder(Protocol):
    """Publishes the proof for one challenge type."""

    @property
    def kind(self) -> str:
        """The ACME challenge type, e.g. "http-01"."""

    async def publish(self, challenge: Challenge) -> None:
        """Make `challenge` answerable."""

    async def withdraw(self, challenge: Challenge) -> None:
        """Stop answering `challenge`."""


@frozen
class Http01Responder:
    """HTTP-01: the proxy's AcmeChallengeInterceptor serves the token."""

    tokens: Http01Tokens
    kind: str = HTTP_01

    async def publish(self, challenge: Challenge) -> None:
        self.tokens.add(challenge.token, challenge.key_authorization)

    async def withdraw(self, challenge: Challenge) -> None:
        self.tokens.remove(challenge.token)


@frozen
class TlsAlpn01Responder:
    """TLS-ALPN-01: the https port presents a challenge certificate to `acme-tls/1` clients."""

    contexts: SniContexts
    clock: Any
    kind: str = TLS_ALPN_01

    async def publish(self, challenge: Challenge) -> None:
        bundle = alpn_challenge(
            challenge.identifier, challenge.key_authorization, self.clock.seconds()
        )
        self.contexts.set_challenge(challenge.identifier, bundle)

    async def withdraw(self, challenge: Challenge) -> None:
        self.contexts.clear_challenge(challenge.identifier)


@frozen
class Dns01Responder:
    """DNS-01: a TXT record through a DNS provider."""

    provider: DnsProvider
    kind: str = DNS_01

    async def publish(self, challenge: Challenge) -> None:
        await self.provider.add(challenge.dns_name, challenge.dns_value)

    async def withdraw(self, challenge: Challenge) -> None:
        await self.provider.remove(challenge.dns_name, challenge.dns_value)
