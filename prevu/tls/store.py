"""
Certificates and the ACME account key on disk, under `<state_dir>/tls/`.

    tls/account.key                      the ACME account key (PEM)
    tls/certificates/<name>/fullchain.pem
    tls/certificates/<name>/privkey.pem  one directory per certificate (`*.x` as `_wildcard.x`)

Files are written mode 0600 (directories 0700), to a temporary name first and
renamed into place, so a crash never leaves half a key. The methods block:
call them from a thread, or at start before the reactor runs.
"""

from __future__ import annotations

import os
import re

from attrs import frozen
from twisted.logger import Logger

from prevu.errors import CertificateError
from prevu.tls.certs import CertificateBundle

log = Logger()

_SAFE = re.compile(r"^[a-z0-9.-]+$")


def directory_name(name: str) -> str:
    """The directory for certificate `name`; rejects anything that is not a DNS name."""
    name = name.lower()
    stored = "_wildcard." + name[2:] if name.startswith("*.") else name
    plain = stored.removeprefix("_wildcard.")
    if not _SAFE.match(plain) or ".." in plain or plain.startswith("."):
        raise CertificateError(name, "not a DNS name that can be stored")
    return stored


def certificate_name(directory: str) -> str:
    """The certificate name stored in `directory` (inverse of `directory_name`)."""
    if directory.startswith("_wildcard."):
        return "*." + directory.removeprefix("_wildcard.")
    return directory


def write_private(path: str, data: bytes) -> None:
    """Write `data` to `path` with mode 0600, atomically."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temporary = f"{path}.tmp.{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


@frozen
class CertificateStore:
    """The `tls/` directory under `state_dir`."""

    root: str

    @classmethod
    def under(cls, state_dir: str) -> CertificateStore:
        return cls(os.path.join(state_dir, "tls"))

    @property
    def account_key_path(self) -> str:
        return os.path.join(self.root, "account.key")

    def _paths(self, name: str) -> tuple[str, str]:
        base = os.path.join(self.root, "certificates", directory_name(name))
        return os.path.join(base, "fullchain.pem"), os.path.join(base, "privkey.pem")

    def load_account_key(self) -> bytes | None:
        """The account key PEM, or None before the first registration."""
        try:
            with open(self.account_key_path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def save_account_key(self, pem: bytes) -> None:
        write_private(self.account_key_path, pem)

    def save(self, name: str, bundle: CertificateBundle) -> None:
        """Store `bundle` as certificate `name` (key first, so a chain never lacks its key)."""
        chain_path, key_path = self._paths(name)
        write_private(key_path, bundle.key_pem)
        write_private(chain_path, bundle.chain_pem)

    def load(self, name: str) -> CertificateBundle | None:
        """Certificate `name`, or None when it is not stored."""
        chain_path, key_path = self._paths(name)
        try:
            with open(chain_path, "rb") as chain, open(key_path, "rb") as key:
                return CertificateBundle.from_pem(chain.read(), key.read(), name)
        except FileNotFoundError:
            return None

    def load_all(self) -> dict[str, CertificateBundle]:
        """Every stored certificate by name; unreadable ones are logged and skipped."""
        found: dict[str, CertificateBundle] = {}
        base = os.path.join(self.root, "certificates")
        try:
            entries = sorted(os.listdir(base))
        except FileNotFoundError:
            return found
        for entry in entries:
            name = certificate_name(entry)
            try:
                bundle = self.load(name)
            except (CertificateError, OSError) as error:
                log.warn("skipping stored certificate {name}: {error}", name=name, error=error)
                continue
            if bundle is not None:
                found[name] = bundle
        return found
