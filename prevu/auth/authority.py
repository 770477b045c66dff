"""
The one object the login pages and the proxy gate share: the signer, the
deployment's settings and the logouts not yet expired.

Sessions are stateless signed cookies; logging out adds the session's id to
`revoked` until its expiry, so that the host-only cookies other preview hosts
got through a handoff stop working too. `on_revoke` is told of every change so
that the composition root can keep `revoked` in `state_dir` across restarts
(prevu.auth.revocations).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping

from attrs import define, field

from prevu.auth.rules import AuthSettings
from prevu.auth.tokens import Session, Signer, decode_session
from prevu.config import Config


@define
class Authority:
    """Issues and checks sessions for one deployment."""

    settings: AuthSettings
    signer: Signer
    revoked: dict[str, float] = field(factory=dict)
    max_revoked: int = 100_000
    spent: dict[str, float] = field(factory=dict)  # handoff tokens used, until they expire
    on_revoke: Callable[[Mapping[str, float]], None] | None = None

    @classmethod
    def from_config(cls, config: Config, stored_secret: str | None = None) -> Authority:
        """
        From `[auth]`. Without a cookie_secret, `stored_secret` (the one prevu
        keeps in state_dir) signs; without either, a random one lives as long
        as the process.
        """
        secret = config.auth.cookie_secret or stored_secret or secrets.token_urlsafe(32)
        return cls(
            settings=AuthSettings.from_config(config),
            signer=Signer.from_secrets(secret, config.auth.cookie_secret_previous),
        )

    def new_session(self, user: str, now: float, repos: tuple[str, ...] | None = None) -> Session:
        """A session for `user` that ends `session_ttl` from now."""
        return Session(user=user, expires=now + self.settings.session_ttl, repos=repos)

    def session(self, values: Iterable[str], now: float) -> Session | None:
        """The first valid, unrevoked session among cookie values."""
        for value in values:
            session = decode_session(self.signer, value, now)
            if session is not None and session.sid not in self.revoked:
                return session
        return None

    def sessions(self, values: Iterable[str], now: float) -> list[Session]:
        """Every valid, unrevoked session among cookie values."""
        found = (decode_session(self.signer, value, now) for value in values)
        return [s for s in found if s is not None and s.sid not in self.revoked]

    def revoke(self, session: Session, now: float) -> None:
        """Log `session` out everywhere this process checks it."""
        if len(self.revoked) >= self.max_revoked:
            self.revoked = {sid: t for sid, t in self.revoked.items() if t > now}
        self.revoked[session.sid] = session.expires
        if self.on_revoke is not None:
            self.on_revoke({sid: t for sid, t in self.revoked.items() if t > now})

    def spend(self, token: str, expires: float, now: float) -> bool:
        """Use a one-time token (a login handoff); False when it was used before."""
        if token in self.spent:
            return False
        if len(self.spent) >= self.max_revoked:
            self.spent = {t: e for t, e in self.spent.items() if e > now}
        self.spent[token] = expires
        return True
