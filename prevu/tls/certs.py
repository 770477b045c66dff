"""
Certificates as values: PEM in, a validated `CertificateBundle` out.

No I/O and no clock: callers pass `now` (seconds since the epoch). Keys are
ECDSA P-256, which every current client accepts and which keeps handshakes
small.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from prevu.errors import CertificateError

#: id-pe-acmeIdentifier, RFC 8737 §3: the extension a TLS-ALPN-01 certificate carries.
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """`key` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes, name: str = "key") -> CertificateIssuerPrivateKeyTypes:
    """Parse a PEM private key usable for a server certificate (EC or RSA)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise CertificateError(name, f"cannot read private key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(name, f"unsupported key type {type(key).__name__}")
    return key


def covers(pattern: str, host: str) -> bool:
    """Whether certificate name `pattern` (exact or `*.suffix`) is valid for `host`."""
    pattern = pattern.lower()
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def _epoch(moment: datetime.datetime) -> float:
    return moment.timestamp()


def _names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in common)
    return tuple(name.lower() for name in san.value.get_values_for_type(x509.DNSName))


@frozen
class CertificateBundle:
    """
    A certificate chain and its private key, parsed and checked to match.

    Build it with `CertificateBundle.from_pem`; the parsed fields are derived
    from the PEM, so a bundle whose key does not fit its certificate cannot
    exist.
    """

    chain_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    names: tuple[str, ...]
    not_before: float
    not_after: float
    chain: tuple[x509.Certificate, ...] = field(eq=False, repr=False)
    key: CertificateIssuerPrivateKeyTypes = field(eq=False, repr=False)

    @classmethod
    def from_pem(
        cls, chain_pem: bytes, key_pem: bytes, name: str = "certificate"
    ) -> CertificateBundle:
        """Parse a PEM chain (leaf first) and its key; raise CertificateError if they do not fit."""
        try:
            chain = tuple(x509.load_pem_x509_certificates(chain_pem))
        except ValueError as error:
            raise CertificateError(name, f"cannot read certificate: {error}") from None
        if not chain:
            raise CertificateError(name, "no certificate in PEM data")
        key = load_private_key(key_pem, name)
        leaf = chain[0]
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        certified = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if public != certified:
            raise CertificateError(name, "the private key does not match the certificate")
        return cls(
            chain_pem=chain_pem,
            key_pem=key_pem,
            names=_names(leaf),
            not_before=_epoch(leaf.not_valid_before_utc),
            not_after=_epoch(leaf.not_valid_after_utc),
            chain=chain,
            key=key,
        )

    @property
    def leaf(self) -> x509.Certificate:
        """The server's own certificate."""
        return self.chain[0]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf certificate, hex: tells two issuances apart."""
        return self.leaf.fingerprint(hashes.SHA256()).hex()

    def covers(self, host: str) -> bool:
        """Whether this certificate is valid for `host` by name (not by date)."""
        return any(covers(name, host) for name in self.names)


def _build(
    names: tuple[str, ...],
    key: ec.EllipticCurvePrivateKey,
    now: float,
    lifetime: float,
    extra: tuple[x509.ExtensionType, ...] = (),
    critical_extra: bool = False,
) -> CertificateBundle:
    start = datetime.datetime.fromtimestamp(now - 3600, datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(seconds=lifetime))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    for extension in extra:
        builder = builder.add_extension(extension, critical=critical_extra)
    certificate = builder.sign(key, hashes.SHA256())
    return CertificateBundle.from_pem(
        certificate.public_bytes(serialization.Encoding.PEM), private_key_pem(key), names[0]
    )


def self_signed(
    names: tuple[str, ...],
    now: float,
    lifetime: float = 365 * 86400.0,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> CertificateBundle:
    """A self-signed certificate for `names`: the default for names prevu has no certificate for."""
    return _build(names, key or new_private_key(), now, lifetime)


def alpn_challenge(name: str, key_authorization: str, now: float) -> CertificateBundle:
    """
    The TLS-ALPN-01 validation certificate for `name` (RFC 8737 §3).

    It carries the critical acmeIdentifier extension whose value is the DER
    OCTET STRING of SHA-256(key authorization).
    """
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # DER OCTET STRING: tag 0x04, length 32, the digest.
    value = x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest)
    return _build((name,), new_private_key(), now, 7 * 86400.0, (value,), critical_extra=True)
