"""
Signed, expiring tokens: sessions, login handoffs, share links, CSRF, bypass.

Every token is ``v1.<payload>.<mac>``: the payload is base64url JSON, the mac
is HMAC-SHA256 over ``v1.<payload>`` with a key derived from the secret *and
the token's purpose* (``HMAC(secret, "prevu:" + purpose)``), so a share link
can never pass as a session or a CSRF token as a share link. Signing uses the
current `cookie_secret`; checking accepts it and every `cookie_secret_previous`
(rotation). Nothing is stored server-side; `now` is always an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import field, frozen

VERSION = "v1"
MAX_TOKEN = 4096

PURPOSE_SESSION = "session"
PURPOSE_HANDOFF = "handoff"
PURPOSE_SHARE = "share"
PURPOSE_CSRF = "csrf"
PURPOSE_BYPASS = "bypass"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict: one spelling per value, so a token cannot be varied (`=`, stray bytes)."""
    data = base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))
    if _b64encode(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _non_empty(instance: Any, attribute: Any, value: Sequence[bytes]) -> None:
    if not value or not all(value):
        raise ValueError("a Signer needs at least one non-empty secret")


@frozen
class Signer:
    """Signs with the first secret, accepts any of them."""

    secrets: tuple[bytes, ...] = field(validator=_non_empty)

    @classmethod
    def from_secrets(cls, current: str, previous: Sequence[str] = ()) -> Signer:
        """A signer for `cookie_secret` and `cookie_secret_previous`."""
        return cls(tuple(s.encode("utf-8") for s in (current, *previous)))

    def _key(self, secret: bytes, purpose: str) -> bytes:
        return hmac.new(secret, b"prevu:" + purpose.encode(), hashlib.sha256).digest()

    def _mac(self, secret: bytes, purpose: str, message: bytes) -> bytes:
        return hmac.new(self._key(secret, purpose), message, hashlib.sha256).digest()

    def sign(self, purpose: str, payload: Mapping[str, Any]) -> str:
        """A token carrying `payload` for `purpose`."""
        body = _b64encode(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        message = f"{VERSION}.{body}".encode("ascii")
        return f"{VERSION}.{body}.{_b64encode(self._mac(self.secrets[0], purpose, message))}"

    def unsign(self, purpose: str, token: str, now: float) -> dict[str, Any] | None:
        """
        The payload of a valid, unexpired token for `purpose`, else None.

        A payload's ``e`` field is its expiry (seconds since the epoch).
        """
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            return None
        version, body, mac_text = token.split(".")
        if version != VERSION:
            return None
        try:
            mac = _b64decode(mac_text)
        except (binascii.Error, ValueError):
            return None
        message = f"{version}.{body}".encode("ascii", "replace")
        if not any(
            hmac.compare_digest(self._mac(secret, purpose, message), mac) for secret in self.secrets
        ):
            return None
        try:
            payload = json.loads(_b64decode(body))
        except (binascii.Error, ValueError):
            return None
        if not isinstance(payload, dict):
            return None
        expiry = payload.get("e")
        if not isinstance(expiry, int | float) or isinstance(expiry, bool) or expiry <= now:
            return None
        return payload

    def digest(self, purpose: str, subject: str) -> str:
        """A stable token for `subject` (hex), made with the current secret."""
        return self._mac(self.secrets[0], purpose, subject.encode("utf-8")).hex()

    def check_digest(self, purpose: str, subject: str, token: str) -> bool:
        """Whether `token` is `digest(purpose, subject)` under any accepted secret."""
        given = token.strip().lower().encode("ascii", "replace")
        return any(
            hmac.compare_digest(self._mac(secret, purpose, subject.encode()).hex().encode(), given)
            for secret in self.secrets
        )


# --- sessions -----------------------------------------------------------------


@frozen
class Session:
    """
    A logged-in reviewer: who, until when, and (for GitHub repo readers) which repos.

    `repos` None means every private route; a tuple limits the session to
    previews of those repositories. `sid` identifies the login for logout.
    """

    user: str
    expires: float
    sid: str = field(factory=lambda: secrets.token_urlsafe(12))
    repos: tuple[str, ...] | None = None

    def allows_repo(self, repo: str | None) -> bool:
        """Whether this session may open a route of `repo`."""
        if self.repos is None:
            return True
        return repo is not None and repo.lower() in {r.lower() for r in self.repos}

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"u": self.user, "e": int(self.expires), "s": self.sid}
        if self.repos is not None:
            data["r"] = list(self.repos)
        return data

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Session | None:
        user, sid, repos = data.get("u"), data.get("s"), data.get("r")
        if not isinstance(user, str) or not user or not isinstance(sid, str):
            return None
        if repos is not None and not (
            isinstance(repos, list) and all(isinstance(r, str) for r in repos)
        ):
            return None
        return cls(
            user=user,
            expires=float(data["e"]),
            sid=sid,
            repos=None if repos is None else tuple(repos),
        )


def encode_session(signer: Signer, session: Session) -> str:
    """The `prevu_session` cookie value for `session`."""
    return signer.sign(PURPOSE_SESSION, session.payload())


def decode_session(signer: Signer, token: str, now: float) -> Session | None:
    """The session in a cookie value, or None if tampered, expired or not a session."""
    payload = signer.unsign(PURPOSE_SESSION, token, now)
    return None if payload is None else Session.from_payload(payload)


# --- handoff: carries a login from the control host to one preview host --------


HANDOFF_TTL = 60.0  # seconds a login handoff token is valid (and remembered once spent)


def encode_handoff(
    signer: Signer, session: Session, host: str, now: float, ttl: float = HANDOFF_TTL
) -> str:
    """A short-lived token that lets `host` set its own cookie for `session`."""
    payload = session.payload()
    payload["x"] = payload["e"]
    payload["e"] = int(min(now + ttl, session.expires))
    payload["h"] = host.lower()
    payload["n"] = secrets.token_urlsafe(9)  # each handoff is spent once (Authority.spend)
    return signer.sign(PURPOSE_HANDOFF, payload)


def decode_handoff(signer: Signer, token: str, host: str, now: float) -> Session | None:
    """The session a handoff token carries, if valid for `host` at `now`."""
    payload = signer.unsign(PURPOSE_HANDOFF, token, now)
    if payload is None or payload.get("h") != host.lower():
        return None
    expires = payload.get("x")
    if not isinstance(expires, int | float):
        return None
    return Session.from_payload({**payload, "e": expires})


# --- share links --------------------------------------------------------------


@frozen
class Share:
    """Anyone holding this may open `host` until `expires`."""

    host: str
    expires: float


def encode_share(signer: Signer, share: Share) -> str:
    """The token of a share link."""
    return signer.sign(PURPOSE_SHARE, {"h": share.host.lower(), "e": int(share.expires)})


def decode_share(signer: Signer, token: str, host: str, now: float) -> Share | None:
    """The share a token grants for `host` at `now`, or None."""
    payload = signer.unsign(PURPOSE_SHARE, token, now)
    if payload is None or payload.get("h") != host.lower():
        return None
    return Share(host=host.lower(), expires=float(payload["e"]))


# --- CSRF ----------------------------------------------------------------------


def new_nonce() -> str:
    """A random value for the pre-session `prevu_csrf` cookie."""
    return secrets.token_urlsafe(18)


def encode_csrf(signer: Signer, nonce: str, now: float, ttl: float = 3600) -> str:
    """A form token bound to the pre-session cookie `nonce`, valid for `ttl`."""
    return signer.sign(PURPOSE_CSRF, {"n": nonce, "e": int(now + ttl)})


def check_csrf(signer: Signer, token: str, nonce: str | None, now: float) -> bool:
    """Whether a submitted form token is genuine, unexpired and bound to `nonce`."""
    if not nonce:
        return False
    payload = signer.unsign(PURPOSE_CSRF, token, now)
    if payload is None or not isinstance(payload.get("n"), str):
        return False
    return hmac.compare_digest(payload["n"].encode(), nonce.encode())


# --- bypass tokens ---------------------------------------------------------------


def bypass_subject(repo: str | None, host: str) -> str:
    """What a bypass token is for: the repository, or the host of a route without one."""
    return f"repo:{repo.lower()}" if repo else f"host:{host.lower()}"


def bypass_token(signer: Signer, repo: str | None = None, host: str = "") -> str:
    """The `X-Prevu-Bypass` value for a repository (or a host of a fixed route)."""
    return signer.digest(PURPOSE_BYPASS, bypass_subject(repo, host))


def check_bypass(signer: Signer, token: str, repo: str | None, host: str) -> bool:
    """Whether `token` is the bypass token of `repo` (or of `host` if no repo)."""
    return signer.check_digest(PURPOSE_BYPASS, bypass_subject(repo, host), token)
