"""
HTTPS with ACME against a real ACME server: Debian's pebble, validating over loopback.

One pebble (with pebble-challtestsrv as its DNS server) serves the module;
each test runs its own prevu TLS stack (proxy on pebble's httpPort, TLS proxy
on its tlsPort) with its own state directory.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from attrs import define
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from prevu.config import Config, parse_config
from prevu.proxy.server import ProxyFactory, ProxySettings
from prevu.routing import Route, RouteRegistry, Upstream
from prevu.tls.service import TlsParts, build_tls
from tests.support.pebble import Pebble, fetch_certificate

# Needs Debian's pebble (apt-get install pebble, done by .ci/run); never skipped.
pytestmark = pytest.mark.slow

DOMAIN = "prevu.test"


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


def within(d: defer.Deferred[Any], seconds: float = 30.0) -> defer.Deferred[Any]:
    return d.addTimeout(seconds, reactor_())


async def sleep(seconds: float) -> None:
    await within(deferLater(reactor_(), seconds, lambda: None), seconds + 5)


@pytest.fixture(autouse=True)
def show_logs() -> Iterator[None]:
    """Print prevu's log events, so a failing test shows what the issuer did."""
    from twisted.logger import formatEvent, globalLogPublisher

    def observer(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("prevu"):
            print(
                event["log_level"].name, event["log_namespace"], formatEvent(event), file=sys.stderr
            )
            if "log_failure" in event:
                print(event["log_failure"].getTraceback(), file=sys.stderr)

    globalLogPublisher.addObserver(observer)
    yield
    globalLogPublisher.removeObserver(observer)


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    server = Pebble(str(tmp_path_factory.mktemp("pebble")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello from " + (request.getHeader(b"host") or b"?")


@define
class Stack:
    """One prevu TLS stack: routes, the two proxy ports, the TLS parts."""

    routes: RouteRegistry
    tls: TlsParts
    upstream: Upstream
    ports: list[Any]
    pool: ThreadPool

    def status(self, name: str) -> dict[str, Any] | None:
        for status in self.tls.status.statuses():
            if status.name == name:
                return status.to_json()
        return None

    def route(self, host: str) -> None:
        self.routes.put("previews", Route(host=host, upstream=self.upstream))

    async def stop(self) -> None:
        for port in self.ports:
            await within(defer.maybeDeferred(port.stopListening))
        await within(defer.maybeDeferred(self.tls.service.stopService))
        self.pool.stop()


def config_for(pebble: Pebble, state_dir: str, challenge: str, **acme: Any) -> Config:
    return parse_config(
        {
            "server": {
                "domain": DOMAIN,
                "http": f"tcp:{pebble.http_port}:interface=127.0.0.1",
                "https": f"tcp:{pebble.tls_port}:interface=127.0.0.1",
                "state_dir": state_dir,
            },
            "tls": {"mode": "acme"},
            "acme": {
                "directory": pebble.directory_url,
                "ca_bundle": pebble.ca_bundle,
                "challenge": challenge,
                "email": "ops@prevu.test",
                **acme,
            },
        }
    )


async def start_stack(config: Config, clock: Any = None, **issuer: Any) -> Stack:
    reactor = reactor_()
    pool = ThreadPool(minthreads=1, maxthreads=4, name="prevu-test")
    pool.start()
    routes = RouteRegistry()
    tls = build_tls(config, reactor, pool, routes, clock=clock)
    assert tls is not None
    if tls.issuer is not None:
        for key, value in issuer.items():
            setattr(tls.issuer, key, value)
    tls.service.startService()
    upstream_port = await within(
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Hello()))
    )
    upstream = Upstream("127.0.0.1", upstream_port.getHost().port)
    http = ProxyFactory(
        reactor, routes, ProxySettings.from_config(config), interceptors=tls.interceptors
    )
    https = tls.wrap(ProxyFactory(reactor, routes, ProxySettings.from_config(config, "https")))
    assert config.server.https is not None
    http_port = await within(
        TCP4ServerEndpoint(
            reactor, int(config.server.http.split(":")[1]), interface="127.0.0.1"
        ).listen(http)
    )
    https_port = await within(
        TCP4ServerEndpoint(
            reactor, int(config.server.https.split(":")[1]), interface="127.0.0.1"
        ).listen(https)
    )
    return Stack(routes, tls, upstream, [upstream_port, http_port, https_port], pool)


@pytest_twisted.async_yield_fixture
async def stacks() -> AsyncIterator[list[Stack]]:
    started: list[Stack] = []
    yield started
    for stack in started:
        await stack.stop()


async def wait_until(
    check: Callable[[], bool], seconds: float = 30.0, tick: Clock | None = None
) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {seconds}s")
        if tick is not None:
            tick.advance(0)
        await sleep(0.05)


def state_of(stack: Stack, name: str) -> str | None:
    status = stack.status(name)
    return status["state"] if status else None


async def served(pebble: Pebble, host: str, trusted: bool = True) -> x509.Certificate:
    """The certificate the https port presents for `host`, verified against pebble's root."""
    cafile = None
    if trusted:
        root = os.path.join(pebble.workdir, "root.pem")
        with open(root, "wb") as handle:
            handle.write(pebble.root_pem())
        cafile = root
    certificate: x509.Certificate = await within(
        deferToThread(fetch_certificate, pebble.tls_port, host, cafile)
    )
    return certificate


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def dns_names(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.DNSName)


async def https_get(pebble: Pebble, host: str, trusted: bool = True) -> bytes:
    """GET / over TLS by SNI, verifying against pebble's root unless `trusted` is False."""
    import socket
    import ssl

    def get() -> bytes:
        if trusted:
            root = os.path.join(pebble.workdir, "root.pem")
            with open(root, "wb") as handle:
                handle.write(pebble.root_pem())
            context = ssl.create_default_context(cafile=root)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection(("127.0.0.1", pebble.tls_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data

    result: bytes = await within(deferToThread(get))
    return result


@pytest_twisted.ensureDeferred
async def test_http01_issues_a_certificate_served_by_sni(
    pebble: Pebble, stacks: list[Stack], tmp_path: Any
) -> None:
    """HTTP-01: a new route gets a certificate from pebble, served for its name and trusted."""
    stack = await start_stack(config_for(pebble, str(tmp_path / "state"), "http-01"))
    stacks.append(stack)
    stack.route(f"pr-1.{DOMAIN}")
    await wait_until(lambda: state_of(stack, f"pr-1.{DOMAIN}") == "valid")
    certificate = await served(pebble, f"pr-1.{DOMAIN}")
    assert dns_names(certificate) == [f"pr-1.{DOMAIN}"]
    response = await https_get(pebble, f"pr-1.{DOMAIN}")
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(f"hello from pr-1.{DOMAIN}".encode())
    key_file = tmp_path / "state" / "tls" / "certificates" / f"pr-1.{DOMAIN}" / "privkey.pem"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "tls" / "account.key").st_mode) == 0o600


@pytest_twisted.ensureDeferred
async def test_tls_alpn01_issues_a_certificate(
    pebble: Pebble, stacks: list[Stack], tmp_path: Any
) -> None:
    """TLS-ALPN-01: the https port answers acme-tls/1 with the challenge certificate."""
    stack = await start_stack(config_for(pebble, str(tmp_path / "state"), "tls-alpn-01"))
    stacks.append(stack)
    stack.route(f"pr-2.{DOMAIN}")
    await wait_until(lambda: state_of(stack, f"pr-2.{DOMAIN}") == "valid")
    certificate = await served(pebble, f"pr-2.{DOMAIN}")
    assert dns_names(certificate) == [f"pr-2.{DOMAIN}"]


@pytest_twisted.ensureDeferred
async def test_dns01_issues_the_wildcard_through_the_exec_hook(
    pebble: Pebble, stacks: list[Stack], tmp_path: Any
) -> None:
    """DNS-01: the exec hook sets TXT records in challtestsrv; *.<domain> serves every preview."""
    hook = tmp_path / "dns-hook"
    log = tmp_path / "hook.log"
    hook.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, urllib.request\n"
        "action, name, value = sys.argv[1:4]\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "path, body = ('/set-txt', {'host': name, 'value': value}) if action == 'add' "
        "else ('/clear-txt', {'host': name})\n"
        f"url = 'http://127.0.0.1:{pebble.challtest_port}' + path\n"
        "request = urllib.request.Request(url, json.dumps(body).encode())\n"
        "urllib.request.urlopen(request, timeout=5)\n"
    )
    hook.chmod(0o755)
    config = config_for(pebble, str(tmp_path / "state"), "dns-01", dns_hook=str(hook))
    stack = await start_stack(config)
    stacks.append(stack)
    stack.route(f"pr-3.{DOMAIN}")
    await wait_until(lambda: state_of(stack, f"*.{DOMAIN}") == "valid")
    for host in (f"pr-3.{DOMAIN}", f"pr-99.{DOMAIN}"):
        certificate = await served(pebble, host)
        assert dns_names(certificate) == [f"*.{DOMAIN}"]
    actions = [line.split()[0] for line in log.read_text().splitlines()]
    assert actions == ["add", "remove"]
    assert log.read_text().split()[1] == f"_acme-challenge.{DOMAIN}."


@pytest_twisted.ensureDeferred
async def test_handshake_waits_for_a_certificate_being_issued(
    pebble: Pebble, stacks: list[Stack], tmp_path: Any
) -> None:
    """On-demand: a handshake that arrives while its name is issued waits and gets the new cert."""
    stack = await start_stack(config_for(pebble, str(tmp_path / "state"), "http-01"))
    stacks.append(stack)
    stack.route(f"pr-4.{DOMAIN}")
    assert state_of(stack, f"pr-4.{DOMAIN}") in ("pending", "issuing")
    certificate = await served(pebble, f"pr-4.{DOMAIN}")
    assert dns_names(certificate) == [f"pr-4.{DOMAIN}"]


@pytest_twisted.ensureDeferred
async def test_restart_serves_the_stored_certificate_without_a_new_order(
    pebble: Pebble, stacks: list[Stack], tmp_path: Any
) -> None:
    """Restart: the certificate is loaded from state_dir and served; no order is placed."""
    config = config_for(pebble, str(tmp_path / "state"), "http-01")
    first = await start_stack(config)
    first.route(f"pr-5.{DOMAIN}")
    await wait_until(lambda: state_of(first, f"pr-5.{DOMAIN}") == "valid")
    before = await served(pebble, f"pr-5.{DOMAIN}")
    await first.stop()

    second = await start_stack(config)
    stacks.append(second)
    assert second.tls.issuer is not None
    second.route(f"pr-5.{DOMAIN}")
    assert state_of(second, f"pr-5.{DOMAIN}") == "valid"
    after = await served(pebble, f"pr-5.{DOMAIN}", trusted=False)
    assert fingerprint(after) == fingerprint(before)
    assert second.tls.issuer.orders_started == 0


@pytest_twisted.ensureDeferred
async def test_renewal_when_the_clock_passes_the_renewal_point(
    pebble: Pebble, stacks: list[Stack], tmp_path: Any
) -> None:
    """Renewal: advancing the Clock past renew_at orders and serves a new certificate."""
    clock = Clock()
    clock.advance(time.time())
    stack = await start_stack(config_for(pebble, str(tmp_path / "state"), "http-01"), clock=clock)
    stacks.append(stack)
    name = f"pr-6.{DOMAIN}"
    stack.route(name)
    await wait_until(lambda: state_of(stack, name) == "valid", tick=clock)
    first = stack.status(name)
    assert first is not None
    await wait_until(lambda: (stack.status(name) or {}).get("renew_at") is not None, tick=clock)
    renew_at = (stack.status(name) or {})["renew_at"]
    clock.advance(renew_at - clock.seconds() - 60)
    assert (stack.status(name) or {})["fingerprint"] == first["fingerprint"]
    clock.advance(61)
    await wait_until(
        lambda: (
            (stack.status(name) or {}).get("fingerprint") != first["fingerprint"]
            and state_of(stack, name) == "valid"
        ),
        tick=clock,
    )
    renewed = await served(pebble, name)
    assert fingerprint(renewed) == (stack.status(name) or {})["fingerprint"] != first["fingerprint"]
    assert stack.tls.issuer is not None and stack.tls.issuer.orders_started == 2


@pytest_twisted.ensureDeferred
async def test_pebble_down_keeps_serving_and_retries(
    pebble: Pebble, stacks: list[Stack], tmp_path: Any
) -> None:
    """ACME server down: the proxy keeps serving (default certificate) and the order is retried."""
    clock = Clock()
    clock.advance(time.time())
    pebble.stop_pebble()
    try:
        stack = await start_stack(
            config_for(pebble, str(tmp_path / "state"), "http-01"), clock=clock, backoff=30.0
        )
        stacks.append(stack)
        name = f"pr-7.{DOMAIN}"
        stack.route(name)
        await wait_until(lambda: state_of(stack, name) == "failed", tick=clock)
        status = stack.status(name) or {}
        assert status["failures"] == 1
        assert status["next_attempt"] == pytest.approx(clock.seconds() + 30.0, abs=5)
        default = await served(pebble, name, trusted=False)
        assert dns_names(default) == ["prevu-default.invalid"]
        response = await https_get_untrusted(pebble, name)
        assert response.endswith(f"hello from {name}".encode())
        clock.advance(31)
        await wait_until(lambda: (stack.status(name) or {}).get("failures") == 2, tick=clock)
    finally:
        pebble.start()
    clock.advance(61)
    await wait_until(lambda: state_of(stack, name) == "valid", tick=clock)
    certificate = await served(pebble, name)
    assert dns_names(certificate) == [name]


async def https_get_untrusted(pebble: Pebble, host: str) -> bytes:
    return await https_get(pebble, host, trusted=False)
