"""
DNS-01 over RFC 2136: TSIG-signed updates to a real BIND `named` (Debian's bind9).

named runs in the foreground on a free loopback port with one zone,
`prevu.test`, whose update policy lets the test's TSIG key change TXT records.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rdatatype
import pytest
import pytest_twisted
from twisted.python.threadpool import ThreadPool

from prevu.config import Rfc2136Config
from prevu.errors import CertificateError
from prevu.tls.dns import Rfc2136DnsProvider
from tests.support.pebble import free_port, wait_for_port

SECRET = base64.b64encode(b"prevu-test-tsig-secret-32-bytes!").decode()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    work = tmp_path_factory.mktemp("named")
    port = free_port()
    (work / "prevu.test.zone").write_text(
        "$TTL 60\n"
        "@ IN SOA ns.prevu.test. admin.prevu.test. 1 60 60 600 60\n"
        "@ IN NS ns.prevu.test.\n"
        "ns IN A 127.0.0.1\n"
    )
    (work / "named.conf").write_text(
        f"""
options {{
    directory "{work}";
    pid-file "{work}/named.pid";
    session-keyfile "{work}/session.key";
    managed-keys-directory "{work}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
}};
controls {{ }};
key "prevu-test." {{ algorithm hmac-sha256; secret "{SECRET}"; }};
zone "prevu.test" {{
    type primary;
    file "{work}/prevu.test.zone";
    update-policy {{ grant prevu-test. zonesub TXT; }};
}};
"""
    )
    process = subprocess.Popen(
        ["named", "-g", "-n", "1", "-c", str(work / "named.conf")],
        stdout=open(work / "named.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    threads = ThreadPool(minthreads=1, maxthreads=2, name="prevu-test-dns")
    threads.start()
    yield threads
    threads.stop()


def txt(port: int, name: str) -> list[str]:
    answer = dns.query.tcp(
        dns.message.make_query(name, dns.rdatatype.TXT), "127.0.0.1", port=port, timeout=5
    )
    return [b"".join(record.strings).decode() for rrset in answer.answer for record in rrset]


def provider(port: int, pool: ThreadPool, secret: str = SECRET) -> Rfc2136DnsProvider:
    from twisted.internet import reactor

    config = Rfc2136Config(server=f"127.0.0.1:{port}", key_name="prevu-test.", key_secret=secret)
    return Rfc2136DnsProvider(reactor=reactor, pool=pool, config=config)


@pytest_twisted.ensureDeferred
async def test_rfc2136_adds_and_removes_the_txt_record(named: int, pool: ThreadPool) -> None:
    """A TSIG-signed update puts the DNS-01 TXT value in the zone, and takes it out."""
    dns01 = provider(named, pool)
    name = "_acme-challenge.prevu.test."
    await dns01.add(name, "value-one")
    await dns01.add(name, "value-two")
    assert sorted(txt(named, name)) == ["value-one", "value-two"]
    await dns01.remove(name, "value-one")
    assert txt(named, name) == ["value-two"]
    await dns01.remove(name, "value-two")
    assert txt(named, name) == []


@pytest_twisted.ensureDeferred
async def test_rfc2136_with_a_wrong_key_is_an_error(named: int, pool: ThreadPool) -> None:
    """A refused update is a CertificateError naming the record."""
    wrong = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(CertificateError, match="RFC 2136 add") as raised:
        await provider(named, pool, wrong).add("_acme-challenge.pr-1.prevu.test.", "x")
    assert raised.value.host == "_acme-challenge.pr-1.prevu.test."
    assert txt(named, "_acme-challenge.pr-1.prevu.test.") == []


def test_zone_is_found_from_the_soa(named: int, pool: ThreadPool) -> None:
    assert provider(named, pool).zone_of("_acme-challenge.a.b.prevu.test.") == "prevu.test."
