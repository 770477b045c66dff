"""
The ACME v2 client: certbot's `acme.ClientV2`, whose calls block.

Every method here blocks on the network and is meant to run in prevu's own
thread pool (`deferToThreadPool`); the issuer on the reactor thread drives it
step by step so that challenge responders (which live on the reactor thread)
are in place before a challenge is answered.

Two gaps in `acme` 5.x are filled here:

- it has no TLS-ALPN-01 challenge classes, so challenges are read from their
  JSON (`type`, `token`, `url`) rather than from typed objects;
- a `ChallengeResponse` with no fields is an empty mapping, hence falsy, and
  `ClientNetwork` posts a falsy payload as an empty body (POST-as-GET), which
  never triggers validation. `ChallengeAnswer` is truthy, so `{}` is posted.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

from acme import challenges, client, errors, messages
from acme.crypto_util import make_csr
from attrs import define, frozen
from cryptography.hazmat.primitives.asymmetric import ec
from josepy import b64 as jose_b64
from josepy import jwa, jwk

from prevu.errors import CertificateError
from prevu.tls.certs import load_private_key, private_key_pem

USER_AGENT = "prevu (+https://github.com/prevu) acme-python"

HTTP_01 = "http-01"
TLS_ALPN_01 = "tls-alpn-01"
DNS_01 = "dns-01"


class ChallengeAnswer(challenges.ChallengeResponse):
    """The `{}` payload that tells the server to validate a challenge (RFC 8555 §7.5.1)."""

    typ = "prevu-answer"

    def __bool__(self) -> bool:
        # Empty josepy objects are falsy and would be posted as an empty body.
        return True


def b64(data: bytes) -> str:
    """Unpadded base64url, as ACME uses everywhere."""
    return jose_b64.b64encode(data).decode("ascii")


@frozen
class Challenge:
    """One challenge prevu answers: what to publish and where."""

    identifier: str
    wildcard: bool
    type: str
    token: str
    url: str
    key_authorization: str

    @property
    def name(self) -> str:
        """The certificate name this proves (`*.x` for a wildcard authorization)."""
        return f"*.{self.identifier}" if self.wildcard else self.identifier

    @property
    def dns_name(self) -> str:
        """The TXT record name for DNS-01, fully qualified."""
        return f"_acme-challenge.{self.identifier}."

    @property
    def dns_value(self) -> str:
        """The TXT record value for DNS-01: base64url(SHA-256(key authorization))."""
        return b64(hashlib.sha256(self.key_authorization.encode("ascii")).digest())


@frozen
class PendingOrder:
    """An order with the challenges still to be answered."""

    resource: messages.OrderResource
    challenges: tuple[Challenge, ...]
    key_pem: bytes


def new_account_key() -> bytes:
    """A fresh account key (ECDSA P-256, signed with ES256)."""
    return private_key_pem(ec.generate_private_key(ec.SECP256R1()))


@define
class AcmeClient:
    """A blocking ACME v2 client for one directory and one account key."""

    directory_url: str
    account_key_pem: bytes
    email: str | None = None
    verify: bool | str = True
    timeout: int = 30
    _client: client.ClientV2 | None = None

    def _jwk(self) -> jwk.JWK:
        key = load_private_key(self.account_key_pem, "account key")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return jwk.JWKEC(key=key)
        return jwk.JWKRSA(key=key)

    def connect(self) -> client.ClientV2:
        """Fetch the directory and find or create the account (blocking)."""
        if self._client is not None:
            return self._client
        account_key = self._jwk()
        alg = jwa.ES256 if isinstance(account_key, jwk.JWKEC) else jwa.RS256
        # requests takes a CA bundle path as well as a bool.
        verify: Any = self.verify
        net = client.ClientNetwork(
            account_key, alg=alg, verify_ssl=verify, user_agent=USER_AGENT, timeout=self.timeout
        )
        directory = client.ClientV2.get_directory(self.directory_url, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self.email, terms_of_service_agreed=True
        )
        try:
            acme.new_account(registration)
        except errors.ConflictError as existing:
            acme.query_registration(messages.RegistrationResource(uri=existing.location))
        self._client = acme
        return acme

    def reset(self) -> None:
        """Forget the connection (after an error), so the next call starts afresh."""
        self._client = None

    def key_authorization(self, token: str) -> str:
        thumbprint = self._jwk().public_key().thumbprint()  # SHA-256, RFC 7638
        return f"{token}.{b64(thumbprint)}"

    def begin(self, names: tuple[str, ...], kind: str) -> PendingOrder:
        """Create an order for `names` and pick a `kind` challenge per pending authorization."""
        acme = self.connect()
        key_pem = private_key_pem(ec.generate_private_key(ec.SECP256R1()))
        order = acme.new_order(make_csr(key_pem, list(names)))
        picked: list[Challenge] = []
        for authorization in order.authorizations:
            body = authorization.body
            if body.status == messages.STATUS_VALID:
                continue
            identifier = body.identifier.value
            wildcard = bool(body.wildcard)
            for challenge_body in body.challenges:
                data: dict[str, Any] = challenge_body.to_json()
                if data.get("type") == kind:
                    token = str(data["token"])
                    picked.append(
                        Challenge(
                            identifier=identifier,
                            wildcard=wildcard,
                            type=kind,
                            token=token,
                            url=str(data["url"]),
                            key_authorization=self.key_authorization(token),
                        )
                    )
                    break
            else:
                offered = ", ".join(c.to_json().get("type", "?") for c in body.challenges)
                raise CertificateError(identifier, f"server offers no {kind} challenge ({offered})")
        return PendingOrder(resource=order, challenges=tuple(picked), key_pem=key_pem)

    def answer(self, challenge: Challenge) -> None:
        """Tell the server the challenge is ready to be validated."""
        acme = self.connect()
        body = messages.ChallengeBody.from_json(
            {
                "type": challenge.type,
                "url": challenge.url,
                "status": "pending",
                "token": challenge.token,
            }
        )
        acme.answer_challenge(body, ChallengeAnswer())

    def finish(self, order: PendingOrder, within: float) -> bytes:
        """Wait for validation, finalize, and return the full chain PEM."""
        acme = self.connect()
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=within)
        finished = acme.poll_and_finalize(order.resource, deadline)
        if not finished.fullchain_pem:
            raise CertificateError(
                ",".join(order.resource.body.identifiers[0].value), "no certificate"
            )
        return finished.fullchain_pem.encode("ascii")

    def renewal_info(self, chain_pem: bytes) -> tuple[float | None, float]:
        """ARI: (suggested renewal time or None when not offered, when to ask again), as epochs."""
        acme = self.connect()
        try:
            when, again = acme.renewal_time(chain_pem)
        except errors.ARIError as error:
            return None, error.retry_after.timestamp()
        return (when.timestamp() if when is not None else None), again.timestamp()
