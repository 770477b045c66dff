"""
The TLS package without an ACME server: ClientHello reading, interceptors, names,
the issuer's scheduling on a Clock (with an in-memory ACME backend), files mode,
SNI selection over loopback, and the status API.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from treq.testing import StubTreq
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory

from prevu.config import parse_config
from prevu.control.app import ControlApp
from prevu.proxy.hooks import RequestHead
from prevu.routing import Route, RouteRegistry, Upstream
from prevu.testing.tls import FakeAcmeBackend, InlineThreadPool, ThreadedClock
from prevu.tls.certs import CertificateBundle, alpn_challenge, self_signed
from prevu.tls.contexts import SniContexts
from prevu.tls.files import FilesCertificate
from prevu.tls.handshake import Incomplete, read_client_hello
from prevu.tls.http import AcmeChallengeInterceptor, Http01Tokens, HttpsRedirect
from prevu.tls.issuer import CertificateIssuer, certificate_names, renewal_point
from prevu.tls.responders import Http01Responder
from prevu.tls.status import CertificatesApi, metrics_lines
from prevu.tls.store import CertificateStore
from tests.support.pebble import fetch_certificate

NOW = 1_800_000_000.0


def client_hello(server_name: bytes | None, protocols: list[bytes]) -> bytes:
    """The bytes of a real ClientHello from OpenSSL."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    connection = SSL.Connection(context, None)
    if server_name:
        connection.set_tlsext_host_name(server_name)
    if protocols:
        connection.set_alpn_protos(protocols)
    connection.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        connection.do_handshake()
    return connection.bio_read(65536)


# --- reading the ClientHello ---------------------------------------------------


def test_client_hello_gives_server_name_and_alpn_offers() -> None:
    """The holding layer reads SNI and ALPN from a real ClientHello."""
    hello = read_client_hello(client_hello(b"Pr-1.Example.COM", [b"acme-tls/1", b"http/1.1"]))
    assert hello is not None
    assert hello.server_name == "pr-1.example.com"
    assert hello.protocols == (b"acme-tls/1", b"http/1.1")


def test_client_hello_without_sni_has_no_name() -> None:
    hello = read_client_hello(client_hello(None, []))
    assert hello is not None and hello.server_name is None and hello.protocols == ()


def test_partial_client_hello_asks_for_more() -> None:
    data = client_hello(b"a.example.com", [])
    for cut in (0, 3, 5, len(data) - 1):
        with pytest.raises(Incomplete):
            read_client_hello(data[:cut])


def test_plain_http_is_not_a_client_hello() -> None:
    assert read_client_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None


# --- interceptors ----------------------------------------------------------------


def head(
    target: bytes,
    scheme: str = "http",
    host: str = "pr-1.example.com",
    method: bytes = b"GET",
    client: str = "203.0.113.9",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> RequestHead:
    return RequestHead(
        method=method, target=target, host=host, scheme=scheme, client=client, headers=list(headers)
    )


def test_http01_token_is_answered_with_its_key_authorization() -> None:
    tokens = Http01Tokens()
    tokens.add("abc", "abc.thumb")
    interceptor = AcmeChallengeInterceptor(tokens)
    reply = interceptor.intercept(head(b"/.well-known/acme-challenge/abc"))
    assert reply is not None and reply.status == 200 and reply.body == b"abc.thumb"
    missing = interceptor.intercept(head(b"/.well-known/acme-challenge/nope"))
    assert missing is not None and missing.status == 404
    assert interceptor.intercept(head(b"/index.html")) is None


@pytest.mark.parametrize(
    ("port", "request_head", "location"),
    [
        (443, head(b"/a?b=1"), b"https://pr-1.example.com/a?b=1"),
        (8443, head(b"/", host="pr-1.example.com:8000"), b"https://pr-1.example.com:8443/"),
        (443, head(b"/", host="[::1]:80"), b"https://[::1]/"),
        (443, head(b"/x", method=b"POST"), b"https://pr-1.example.com/x"),
    ],
)
def test_plain_http_is_redirected_to_https(
    port: int, request_head: RequestHead, location: bytes
) -> None:
    reply = HttpsRedirect(https_port=port).intercept(request_head)
    assert reply is not None and reply.status == 308
    assert (b"location", location) in reply.headers


def test_redirect_spares_https_challenges_and_trusted_tls_proxies() -> None:
    import ipaddress

    redirect = HttpsRedirect(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    assert redirect.intercept(head(b"/", scheme="https")) is None
    assert redirect.intercept(head(b"/.well-known/acme-challenge/t")) is None
    forwarded = ((b"x-forwarded-proto", b"https"),)
    assert redirect.intercept(head(b"/", client="10.1.2.3", headers=forwarded)) is None
    assert redirect.intercept(head(b"/", client="198.51.100.1", headers=forwarded)) is not None


# --- which names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "wildcard", "names"),
    [
        (
            ["pr-1.p.example.com", "prevu.p.example.com"],
            False,
            {"pr-1.p.example.com", "prevu.p.example.com"},
        ),
        (["pr-1.p.example.com", "pr-2.p.example.com"], True, {"*.p.example.com"}),
        (
            ["staging.example.com", "pr-1.p.example.com"],
            True,
            {"staging.example.com", "*.p.example.com"},
        ),
        (["*.apps.example.com"], False, set()),
        (["*.apps.example.com"], True, {"*.apps.example.com"}),
        (["localhost", "pr-1.localhost", "127.0.0.1", "intranet"], False, set()),
    ],
)
def test_certificate_names_for_routed_hosts(
    hosts: list[str], wildcard: bool, names: set[str]
) -> None:
    assert certificate_names(hosts, "p.example.com", wildcard) == names


def test_renewal_point_is_renew_before_expiry_but_not_early_in_life() -> None:
    ninety_days = self_signed(("a.test",), NOW, 90 * 86400.0)
    assert renewal_point(ninety_days, 30 * 86400.0) == ninety_days.not_after - 30 * 86400.0
    six_days = self_signed(("a.test",), NOW, 6 * 86400.0)
    assert renewal_point(six_days, 30 * 86400.0) == six_days.not_before + 4 * 86400.0


def test_alpn_challenge_certificate_carries_the_critical_acme_identifier() -> None:
    import hashlib

    from cryptography import x509

    from prevu.tls.certs import ACME_IDENTIFIER_OID

    bundle = alpn_challenge("pr-1.example.com", "token.thumb", NOW)
    extension = bundle.leaf.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert extension.critical
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumb").digest()
    assert bundle.names == ("pr-1.example.com",)


def test_chain_with_a_foreign_key_is_refused() -> None:
    from prevu.errors import CertificateError

    one, other = self_signed(("a.test",), NOW), self_signed(("a.test",), NOW)
    with pytest.raises(CertificateError, match="does not match"):
        CertificateBundle.from_pem(one.chain_pem, other.key_pem)


# --- the issuer on a Clock --------------------------------------------------------


def make_issuer(
    tmp_path: Any, **options: Any
) -> tuple[CertificateIssuer, FakeAcmeBackend, ThreadedClock]:
    clock = ThreadedClock()
    clock.advance(NOW)
    backend = FakeAcmeBackend(clock)
    contexts = SniContexts(default=self_signed(("default.invalid",), NOW))
    issuer = CertificateIssuer(
        clock=clock,
        reactor=clock,
        pool=InlineThreadPool(),  # type: ignore[arg-type]
        store=CertificateStore.under(str(tmp_path)),
        contexts=contexts,
        responder=Http01Responder(Http01Tokens()),
        client_factory=lambda key: backend,
        domain="p.example.com",
        **options,
    )
    return issuer, backend, clock


def states(issuer: CertificateIssuer) -> dict[str, str]:
    return {s.name: s.state for s in issuer.statuses()}


def test_routed_host_gets_a_certificate_stored_0600_and_served(tmp_path: Any) -> None:
    issuer, backend, _ = make_issuer(tmp_path)
    routes = RouteRegistry()
    routes.listen(issuer.routes_changed)
    issuer.startService()
    routes.put("previews", Route("pr-1.p.example.com", Upstream("127.0.0.1", 1)))
    assert states(issuer) == {"pr-1.p.example.com": "valid"}
    assert backend.begun == [("pr-1.p.example.com",)]
    assert issuer.contexts.bundle_for("pr-1.p.example.com") is not None
    key = tmp_path / "tls" / "certificates" / "pr-1.p.example.com" / "privkey.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_orders_per_hour_cap_delays_the_next_order(tmp_path: Any) -> None:
    issuer, backend, clock = make_issuer(tmp_path, orders_per_hour=2)
    issuer.startService()
    issuer.want(["a.example.com", "b.example.com", "c.example.com"])
    assert states(issuer) == {
        "a.example.com": "valid",
        "b.example.com": "valid",
        "c.example.com": "pending",
    }
    clock.advance(3599)
    assert states(issuer)["c.example.com"] == "pending"
    clock.advance(1)
    assert states(issuer)["c.example.com"] == "valid"
    assert len(backend.begun) == 3


def test_failures_back_off_exponentially_and_recover(tmp_path: Any) -> None:
    issuer, backend, clock = make_issuer(tmp_path, backoff=60.0)
    backend.failing = True
    issuer.startService()
    issuer.want(["a.example.com"])
    (status,) = issuer.statuses()
    assert (status.state, status.failures, status.next_attempt) == ("failed", 1, NOW + 60)
    assert status.error is not None and "connection refused" in status.error
    clock.advance(60)
    (status,) = issuer.statuses()
    assert (status.failures, status.next_attempt) == (2, NOW + 60 + 120)
    backend.failing = False
    clock.advance(119)
    assert states(issuer) == {"a.example.com": "failed"}
    clock.advance(1)
    assert states(issuer) == {"a.example.com": "valid"}
    assert backend.resets == 2


def test_renewal_at_renew_before_expiry(tmp_path: Any) -> None:
    issuer, backend, clock = make_issuer(tmp_path, renew_before=30 * 86400.0)
    issuer.startService()
    issuer.want(["a.example.com"])
    clock.advance(0)  # the renewal-info check
    (status,) = issuer.statuses()
    assert status.renew_at == pytest.approx(status.not_after - 30 * 86400.0)
    clock.advance(status.renew_at - clock.seconds() - 1)
    assert len(backend.begun) == 1
    clock.advance(1)
    assert len(backend.begun) == 2
    (renewed,) = issuer.statuses()
    assert renewed.state == "valid" and renewed.fingerprint != status.fingerprint


def test_ari_suggested_time_moves_the_renewal(tmp_path: Any) -> None:
    issuer, backend, clock = make_issuer(tmp_path)
    backend.suggested = NOW + 5 * 86400.0
    issuer.startService()
    issuer.want(["a.example.com"])
    clock.advance(0)
    (status,) = issuer.statuses()
    assert status.renew_at == NOW + 5 * 86400.0
    clock.advance(5 * 86400.0)
    assert len(backend.begun) == 2


def test_handshake_waits_for_a_pending_name_then_times_out(tmp_path: Any) -> None:
    issuer, _, clock = make_issuer(tmp_path, orders_per_hour=1, handshake_wait=10.0)
    issuer.startService()
    issuer.want(["a.example.com", "b.example.com"])
    assert issuer.wait_for("a.example.com") is None  # already has its certificate
    assert issuer.wait_for("unknown.example.com") is None
    waiting = issuer.wait_for("b.example.com")
    assert waiting is not None and not waiting.called
    clock.advance(10)
    assert waiting.called


def test_unrouted_names_are_no_longer_renewed(tmp_path: Any) -> None:
    issuer, backend, clock = make_issuer(tmp_path)
    issuer.startService()
    issuer.want(["a.example.com"])
    issuer.want([])
    assert states(issuer) == {"a.example.com": "unused"}
    clock.advance(365 * 86400.0)
    assert len(backend.begun) == 1


def test_restart_loads_stored_certificates_without_ordering(tmp_path: Any) -> None:
    first, _, _ = make_issuer(tmp_path)
    first.startService()
    first.want(["a.example.com"])
    second, backend, _ = make_issuer(tmp_path)
    second.want(["a.example.com"])
    second.startService()
    assert states(second) == {"a.example.com": "valid"}
    assert backend.begun == []
    assert second.contexts.bundle_for("a.example.com") is not None


# --- files mode ---------------------------------------------------------------------


def write_pair(tmp_path: Any, bundle: CertificateBundle) -> tuple[str, str]:
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_bytes(bundle.chain_pem)
    key.write_bytes(bundle.key_pem)
    return str(cert), str(key)


def test_files_mode_reloads_a_changed_certificate(tmp_path: Any) -> None:
    clock = ThreadedClock()
    first = self_signed(("*.p.example.com",), NOW)
    cert, key = write_pair(tmp_path, first)
    contexts = SniContexts(default=self_signed(("default.invalid",), NOW))
    files = FilesCertificate(clock=clock, contexts=contexts, cert_path=cert, key_path=key)
    files.startService()
    assert contexts.bundle_for("pr-1.p.example.com") == first
    second = self_signed(("*.p.example.com", "p.example.com"), NOW)
    (tmp_path / "fullchain.pem").write_bytes(second.chain_pem)
    clock.advance(10)
    # Certificate replaced, key not yet: the old pair keeps being served.
    assert contexts.bundle_for("pr-1.p.example.com") == first
    assert files.error is not None
    (tmp_path / "privkey.pem").write_bytes(second.key_pem)
    clock.advance(10)
    assert contexts.bundle_for("pr-1.p.example.com") == second
    assert contexts.bundle_for("p.example.com") == second
    assert [s.state for s in files.statuses()] == ["valid", "valid"]
    files.stopService()


# --- SNI over loopback --------------------------------------------------------------


class Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_sni_selects_each_certificate_and_the_default(tmp_path: Any) -> None:
    """Each name gets its own certificate, wildcards match one label, others get the default."""
    from twisted.internet import reactor

    contexts = SniContexts(default=self_signed(("default.invalid",), time.time()))
    contexts.install(self_signed(("one.example.com",), time.time()))
    contexts.install(self_signed(("*.two.example.com",), time.time()))
    factory = TLSMemoryBIOFactory(contexts.server_options(), False, Factory.forProtocol(Hello))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        expected = {
            "one.example.com": "one.example.com",
            "pr-1.two.example.com": "*.two.example.com",
            "a.b.two.example.com": "default.invalid",
            "other.example.com": "default.invalid",
        }
        for host, name in expected.items():
            certificate = await deferToThread(fetch_certificate, port.getHost().port, host, None)
            assert certificate.subject.rfc4514_string() == f"CN={name}"
        contexts.install(self_signed(("one.example.com",), time.time(), 30 * 86400.0))
        renewed = await deferToThread(
            fetch_certificate, port.getHost().port, "one.example.com", None
        )
        assert renewed.not_valid_after_utc.timestamp() < time.time() + 31 * 86400
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls_below_1_2_is_refused_and_alpn_is_http11(tmp_path: Any) -> None:
    import socket
    import ssl

    from twisted.internet import reactor

    contexts = SniContexts(default=self_signed(("default.invalid",), time.time()))
    factory = TLSMemoryBIOFactory(contexts.server_options(), False, Factory.forProtocol(Hello))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    number = port.getHost().port

    def handshake(maximum: ssl.TLSVersion) -> tuple[str | None, str | None]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
        context.set_ciphers("ALL:@SECLEVEL=0")
        context.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", number), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="x.example.com") as tls,
        ):
            return tls.version(), tls.selected_alpn_protocol()

    try:
        assert await deferToThread(handshake, ssl.TLSVersion.TLSv1_3) == ("TLSv1.3", "http/1.1")
        assert await deferToThread(handshake, ssl.TLSVersion.TLSv1_2) == ("TLSv1.2", "http/1.1")
        with pytest.raises(ssl.SSLError):
            await deferToThread(handshake, ssl.TLSVersion.TLSv1_1)
    finally:
        await port.stopListening()


# --- status -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_certificates_api_needs_the_token_and_lists_names(tmp_path: Any) -> None:
    issuer, _, _ = make_issuer(tmp_path)
    issuer.startService()
    issuer.want(["a.example.com"])
    config = parse_config({"server": {"api_token": "s3cret"}})
    api = CertificatesApi(mode="acme", source=issuer, api_token="s3cret")
    treq = StubTreq(ControlApp(config=config, certificates=api).resource())
    refused = await treq.get("http://control/api/certificates")
    assert refused.code == 401
    answer = await treq.get(
        "http://control/api/certificates", headers={"Authorization": "Bearer s3cret"}
    )
    assert answer.code == 200
    body = await answer.json()
    assert body["mode"] == "acme"
    assert [(c["host"], c["state"]) for c in body["certificates"]] == [("a.example.com", "valid")]
    assert body["certificates"][0]["not_after"] > NOW


@pytest_twisted.ensureDeferred
async def test_certificates_api_is_off_without_an_api_token(tmp_path: Any) -> None:
    config = parse_config({})
    treq = StubTreq(ControlApp(config=config).resource())
    answer = await treq.get("http://control/api/certificates", headers={"Authorization": "Bearer "})
    assert answer.code == 403


def test_metrics_text_is_empty_when_tls_is_off() -> None:
    assert CertificatesApi.for_tls(parse_config({}), None).metrics_text() == b""


def test_metrics_lines_give_expiry_and_state_per_name(tmp_path: Any) -> None:
    issuer, _, _ = make_issuer(tmp_path)
    issuer.startService()
    issuer.want(["a.example.com"])
    lines = metrics_lines(issuer.statuses(), issuer.order_counts())
    (status,) = issuer.statuses()
    assert (
        f'prevu_certificate_expiry_timestamp_seconds{{host="a.example.com"}} {status.not_after:.0f}'
        in lines
    )
    assert 'prevu_certificate_state{host="a.example.com",state="valid"} 1' in lines
    assert 'prevu_acme_orders_total{result="started"} 1' in lines
