"""
SNI: one pyOpenSSL context per certificate, chosen by the name the client asks for.

A pyOpenSSL `Context` cannot be changed once a connection has used it, so a
new or renewed certificate gets a new context and the name is pointed at it;
connections already open keep the old one. The selection runs in the
servername callback that Twisted's `CertificateOptions(contextForServerName=...)`
installs on the default context.

ALPN: `http/1.1` for clients; `acme-tls/1` when an ACME server validates a
TLS-ALPN-01 challenge, in which case the connection's certificate is switched
to the challenge certificate inside the ALPN callback (OpenSSL picks the
certificate after ALPN, so this works even for a name that already has a real
certificate, as during a renewal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from attrs import define, field
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger

from prevu.tls.certs import CertificateBundle

ALPN_HTTP = b"http/1.1"
ALPN_ACME = b"acme-tls/1"

#: TLS 1.2 suites with forward secrecy and AEAD only (Mozilla "intermediate");
#: TLS 1.3 suites are OpenSSL's defaults, which are all fine.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

log = Logger()

ProtocolSelector = Callable[[SSL.Connection, list[bytes]], Any]


def certificate_options(
    bundle: CertificateBundle,
    server_name: Callable[[bytes | None], SSL.Context | None] | None = None,
) -> CertificateOptions:
    """Twisted's options for `bundle`: TLS 1.2+, modern ciphers, optional SNI callback."""
    options: Any = CertificateOptions
    return options(  # type: ignore[no-any-return]
        # cryptography objects: pyOpenSSL deprecates its own X509/PKey wrappers.
        privateKey=bundle.key,
        certificate=bundle.leaf,
        extraCertChain=list(bundle.chain[1:]),
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        contextForServerName=server_name,
    )


def make_context(
    bundle: CertificateBundle,
    select_protocol: ProtocolSelector,
    server_name: Callable[[bytes | None], SSL.Context | None] | None = None,
) -> SSL.Context:
    """A fresh, never-used context serving `bundle`."""
    context = certificate_options(bundle, server_name).getContext()
    context.set_alpn_select_callback(select_protocol)
    return context


def _suffix(name: str) -> str | None:
    return name[2:] if name.startswith("*.") else None


@define
class SniContexts:
    """
    The certificates the https port serves, by name.

    `default` answers names nobody has a certificate for (a self-signed
    certificate made at start); `no_sni` answers clients that send no name
    (the files-mode certificate when there is one). Called on the reactor
    thread only, like the handshakes it serves.
    """

    default: CertificateBundle
    _exact: dict[str, SSL.Context] = field(factory=dict)
    _wildcard: dict[str, SSL.Context] = field(factory=dict)
    _bundles: dict[str, CertificateBundle] = field(factory=dict)
    _challenges: dict[str, CertificateBundle] = field(factory=dict)
    _no_sni: SSL.Context | None = None
    _options: CertificateOptions | None = None

    def install(self, bundle: CertificateBundle, no_sni: bool = False) -> None:
        """Serve `bundle` for each of its names from the next handshake on."""
        context = make_context(bundle, self.select_protocol)
        for name in bundle.names:
            suffix = _suffix(name)
            if suffix is None:
                self._exact[name] = context
            else:
                self._wildcard[suffix] = context
            self._bundles[name] = bundle
        if no_sni:
            self._no_sni = context

    def uninstall(self, names: Sequence[str]) -> None:
        """Stop serving a certificate for `names` (they fall back to the default)."""
        for name in names:
            suffix = _suffix(name)
            if suffix is None:
                self._exact.pop(name, None)
            else:
                self._wildcard.pop(suffix, None)
            self._bundles.pop(name, None)

    def bundle_for(self, host: str) -> CertificateBundle | None:
        """The certificate a handshake for `host` gets, or None for the default."""
        host = host.lower().rstrip(".")
        if host in self._bundles:
            return self._bundles[host]
        _, _, rest = host.partition(".")
        return self._bundles.get(f"*.{rest}") if rest else None

    def context_for(self, server_name: bytes | None) -> SSL.Context | None:
        """The servername callback: the context for `server_name`, None for the default."""
        if server_name is None:
            return self._no_sni
        host = server_name.decode("ascii", "replace").lower().rstrip(".")
        context = self._exact.get(host)
        if context is None:
            _, _, rest = host.partition(".")
            context = self._wildcard.get(rest) if rest else None
        return context

    def set_challenge(self, host: str, bundle: CertificateBundle) -> None:
        """Answer TLS-ALPN-01 for `host` with `bundle` until `clear_challenge`."""
        self._challenges[host.lower()] = bundle

    def clear_challenge(self, host: str) -> None:
        """Stop answering TLS-ALPN-01 for `host`."""
        self._challenges.pop(host.lower(), None)

    def select_protocol(self, connection: SSL.Connection, offered: list[bytes]) -> Any:
        """The ALPN callback of every context: http/1.1, or acme-tls/1 with a challenge cert."""
        if ALPN_ACME in offered:
            name = connection.get_servername()
            challenge = (
                self._challenges.get(name.decode("ascii", "replace").lower()) if name else None
            )
            if challenge is not None:
                connection.use_certificate(challenge.leaf)
                connection.use_privatekey(cast(Any, challenge.key))
                log.info("answering TLS-ALPN-01 for {host}", host=name)
                return ALPN_ACME
        if ALPN_HTTP in offered:
            return ALPN_HTTP
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def server_options(self) -> IOpenSSLServerConnectionCreator:
        """What `TLSMemoryBIOFactory` needs: the default context with the SNI callback on it."""
        if self._options is None:
            options = certificate_options(self.default, self.context_for)
            options.getContext().set_alpn_select_callback(self.select_protocol)
            self._options = options
        return self._options  # type: ignore[return-value]
