"""
`[tls] mode = "files"`: a certificate and key you bring, reloaded when they change.

The files are polled (modification time and size) every `interval` seconds
on the injected clock; a change installs a new context for the new
certificate. A pair that does not parse or does not match (the certificate
already replaced, the key not yet) is logged and retried at the next poll;
the previous certificate keeps being served meanwhile.
"""

from __future__ import annotations

import os
from typing import Any

from attrs import define
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from prevu.errors import CertificateError
from prevu.tls.certs import CertificateBundle
from prevu.tls.contexts import SniContexts
from prevu.tls.issuer import CertificateStatus

log = Logger()


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


@define(eq=False)
class FilesCertificate(Service):
    """Serves `cert_path`/`key_path` for its names and for clients without SNI."""

    clock: Any
    contexts: SniContexts
    cert_path: str
    key_path: str
    interval: float = 10.0
    bundle: CertificateBundle | None = None
    error: str | None = None
    _stamps: tuple[object, object] | None = None
    _loop: LoopingCall | None = None
    reloads: int = 0

    def startService(self) -> None:
        super().startService()
        self.check()
        loop = LoopingCall(self.check)
        loop.clock = self.clock
        loop.start(self.interval, now=False)
        self._loop = loop

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return None

    def check(self) -> None:
        """Reload the pair if either file changed since the last successful load."""
        stamps = (_stamp(self.cert_path), _stamp(self.key_path))
        if stamps == self._stamps:
            return
        try:
            with open(self.cert_path, "rb") as chain, open(self.key_path, "rb") as key:
                bundle = CertificateBundle.from_pem(chain.read(), key.read(), self.cert_path)
        except (OSError, CertificateError) as error:
            reason = error.strerror if isinstance(error, OSError) else error.reason
            if self.error != reason:
                log.error("cannot load {cert}: {reason}", cert=self.cert_path, reason=reason)
            self.error = reason
            return
        if self.bundle is not None:
            self.contexts.uninstall(self.bundle.names)
        self.contexts.install(bundle, no_sni=True)
        self.bundle = bundle
        self.error = None
        self._stamps = stamps
        self.reloads += 1
        log.info(
            "serving {cert} for {names}, valid until {not_after}",
            cert=self.cert_path,
            names=", ".join(bundle.names),
            not_after=bundle.not_after,
        )

    def order_counts(self) -> tuple[int, int]:
        """No ACME orders in files mode."""
        return 0, 0

    def statuses(self) -> list[CertificateStatus]:
        if self.bundle is None:
            return [CertificateStatus(name=self.cert_path, state="failed", error=self.error)]
        return [
            CertificateStatus(
                name=name,
                state="valid",
                not_after=self.bundle.not_after,
                error=self.error,
                fingerprint=self.bundle.fingerprint,
            )
            for name in self.bundle.names
        ]
