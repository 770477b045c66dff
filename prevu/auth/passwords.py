"""
Password hashes for the users file, and the users file itself.

Hashes are scrypt (stdlib `hashlib.scrypt`) with a random 16-byte salt, in a
self-describing string so that the cost can be raised later without breaking
old lines::

    scrypt$n=32768,r=8,p=1$<salt, base64>$<hash, base64>

`Users.check` verifies unknown names against a dummy hash, so a wrong user
name costs as much time as a wrong password and answers the same.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

from attrs import field, frozen

from prevu.errors import ConfigError

SCHEME = "scrypt"
DEFAULT_N = 1 << 15
DEFAULT_R = 8
DEFAULT_P = 1
MAX_N = 1 << 20
SALT_BYTES = 16
KEY_BYTES = 32
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


@frozen
class PasswordHash:
    """A parsed scrypt hash: parameters, salt and derived key."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def __attrs_post_init__(self) -> None:
        if self.n < 2 or self.n > MAX_N or self.n & (self.n - 1):
            raise ValueError(f"scrypt n must be a power of two up to {MAX_N}, got {self.n}")
        if not 1 <= self.r <= 32 or not 1 <= self.p <= 16:
            raise ValueError(f"scrypt r/p out of range: r={self.r} p={self.p}")
        if len(self.salt) < 8 or len(self.key) < 16:
            raise ValueError("scrypt salt or key too short")

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Read the string form; raises ValueError with a readable reason."""
        parts = text.strip().split("$")
        if len(parts) != 4 or parts[0] != SCHEME:
            raise ValueError("not a prevu password hash (expected scrypt$n=…,r=…,p=…$salt$hash)")
        try:
            params = dict(item.split("=", 1) for item in parts[1].split(","))
            n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
            salt = base64.b64decode(parts[2], validate=True)
            key = base64.b64decode(parts[3], validate=True)
        except (ValueError, KeyError, binascii.Error):
            raise ValueError("malformed scrypt parameters, salt or hash") from None
        return cls(n=n, r=r, p=p, salt=salt, key=key)

    def __str__(self) -> str:
        salt = base64.b64encode(self.salt).decode()
        key = base64.b64encode(self.key).decode()
        return f"{SCHEME}$n={self.n},r={self.r},p={self.p}${salt}${key}"

    def derive(self, password: str) -> bytes:
        """scrypt of `password` with this hash's salt and parameters."""
        return hashlib.scrypt(
            password.encode("utf-8"),
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=256 * self.n * self.r + (1 << 20),
            dklen=len(self.key),
        )

    def matches(self, password: str) -> bool:
        """Whether `password` gives this hash (constant-time comparison)."""
        return hmac.compare_digest(self.derive(password), self.key)


def hash_password(password: str, n: int = DEFAULT_N, salt: bytes | None = None) -> str:
    """The users-file string for `password`, with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    empty = PasswordHash(n=n, r=DEFAULT_R, p=DEFAULT_P, salt=salt, key=b"\0" * KEY_BYTES)
    key = empty.derive(password)
    return str(PasswordHash(n=n, r=DEFAULT_R, p=DEFAULT_P, salt=salt, key=key))


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches the users-file string `encoded`."""
    return PasswordHash.parse(encoded).matches(password)


def _dummy_hash(n: int = DEFAULT_N) -> PasswordHash:
    return PasswordHash.parse(hash_password(secrets.token_urlsafe(16), n=n))


@frozen
class Users:
    """The users file: names and their password hashes."""

    hashes: Mapping[str, PasswordHash] = field(factory=dict)
    dummy: PasswordHash = field(factory=_dummy_hash)

    def check(self, name: str, password: str) -> bool:
        """
        Whether `name` exists and `password` is its password.

        Unknown names are checked against a dummy hash of the same cost, so
        the time taken does not tell whether a user exists.
        """
        stored = self.hashes.get(name)
        target = stored if stored is not None else self.dummy
        matched = target.matches(password)
        return matched and stored is not None

    def __len__(self) -> int:
        return len(self.hashes)


def parse_users(text: str, path: str = "<users>") -> Users:
    """
    Parse a users file: ``name:hash`` lines, blank lines and ``#`` comments.

    Raises ConfigError naming the file, the line and the reason.
    """
    hashes: dict[str, PasswordHash] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        name, colon, encoded = line.partition(":")
        name = name.strip()
        if not colon:
            raise ConfigError(path, where, "expected name:hash")
        if not USER_NAME.match(name):
            raise ConfigError(
                path, where, f"invalid user name {name!r} (letters, digits, . _ @ + - only)"
            )
        if name in hashes:
            raise ConfigError(path, where, f"user {name!r} is listed twice")
        try:
            hashes[name] = PasswordHash.parse(encoded)
        except ValueError as error:
            reason = f"{error}; make one with `prevu hash-password`"
            raise ConfigError(path, where, reason) from None
    # The dummy costs what the users' hashes cost, so timing cannot tell them apart.
    cost = max((h.n for h in hashes.values()), default=DEFAULT_N)
    return Users(hashes=hashes, dummy=_dummy_hash(cost))
