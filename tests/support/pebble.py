"""
A real ACME server for tests: Debian's `pebble` with `pebble-challtestsrv` as its DNS.

`pebble-challtestsrv` answers 127.0.0.1 for every name, so pebble validates
challenges against the prevu instance under test over loopback, on the
`http_port` and `tls_port` the test's prevu listens on. pebble's own API
certificate comes from a CA made here (`ca_bundle`). Both processes are
started and stopped by PID.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from typing import Any

from attrs import define, field
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for TCP and UDP on 127.0.0.1 right now."""
    while True:
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
            with socket.socket(socket.AF_INET, other) as second:
                try:
                    second.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_api_certificate(directory: str) -> tuple[str, str, str]:
    """A test CA and a certificate for 127.0.0.1/localhost signed by it: (ca, cert, key) paths."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prevu test CA for pebble")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(directory, n) for n in ("api-ca.pem", "api-cert.pem", "api-key.pem"))
    with open(paths[0], "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as handle:
        handle.write(_pem(key))
    return paths  # type: ignore[return-value]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@define
class Pebble:
    """pebble + pebble-challtestsrv, configured to validate against `http_port`/`tls_port`."""

    workdir: str
    http_port: int = field(factory=free_port)
    tls_port: int = field(factory=free_port)
    acme_port: int = field(factory=free_port)
    management_port: int = field(factory=free_port)
    dns_port: int = field(factory=free_port)
    challtest_port: int = field(factory=free_port)
    ca_bundle: str = ""
    #: Put into issued certificates as their OCSP URI (pebble answers nothing there).
    ocsp_url: str = ""
    _pebble: subprocess.Popen[bytes] | None = None
    _challtest: subprocess.Popen[bytes] | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_bundle)

    def start(self) -> None:
        """Start both servers (the DNS server first) and wait until they listen."""
        if not self.ca_bundle:
            self.ca_bundle, cert, key = make_api_certificate(self.workdir)
        else:
            cert, key = (os.path.join(self.workdir, n) for n in ("api-cert.pem", "api-key.pem"))
        if self._challtest is None:
            self._challtest = subprocess.Popen(
                [
                    "pebble-challtestsrv",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-dns01",
                    f"127.0.0.1:{self.dns_port}",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{self.challtest_port}",
                ],
                stdout=open(os.path.join(self.workdir, "challtestsrv.log"), "ab"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )
            wait_for_port(self.challtest_port)
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": cert,
                "privateKey": key,
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": self.ocsp_url,
                "externalAccountBindingRequired": False,
            }
        }
        config_path = os.path.join(self.workdir, "pebble-config.json")
        with open(config_path, "w") as handle:
            json.dump(config, handle)
        env = dict(
            os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0"
        )
        self._pebble = subprocess.Popen(
            ["pebble", "-config", config_path, "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            env=env,
            stdout=open(os.path.join(self.workdir, "pebble.log"), "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.acme_port)
        wait_for_port(self.management_port)

    def stop_pebble(self) -> None:
        """Stop pebble only (the ACME server goes down; DNS stays)."""
        if self._pebble is not None:
            self._pebble.send_signal(signal.SIGTERM)
            try:
                self._pebble.wait(5)
            except subprocess.TimeoutExpired:
                self._pebble.kill()
                self._pebble.wait(5)
            self._pebble = None

    def stop(self) -> None:
        self.stop_pebble()
        if self._challtest is not None:
            self._challtest.send_signal(signal.SIGTERM)
            try:
                self._challtest.wait(5)
            except subprocess.TimeoutExpired:
                self._challtest.kill()
                self._challtest.wait(5)
            self._challtest = None

    def root_pem(self) -> bytes:
        """pebble's current root CA (it makes a new one at each start)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=self._context(), timeout=5) as response:
            data: bytes = response.read()
            return data

    def directory(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.directory_url, context=self._context(), timeout=5) as r:
            result: dict[str, Any] = json.load(r)
            return result

    def challtest(self, path: str, body: dict[str, Any]) -> None:
        """POST to challtestsrv's management API (e.g. /set-txt, /clear-txt)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.challtest_port}{path}",
            data=json.dumps(body).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5):
            pass


def fetch_certificate(port: int, server_name: str, cafile: str | None) -> x509.Certificate:
    """Handshake with 127.0.0.1:`port` for `server_name` (verifying against `cafile` if given)."""
    if cafile is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)
