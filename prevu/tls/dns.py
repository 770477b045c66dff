"""
DNS-01 providers: put `_acme-challenge` TXT records in DNS, and take them out.

    DnsProvider          the interface (async add/remove of one TXT value)
    ExecDnsProvider      runs `dns_hook add|remove NAME VALUE` (like lego's exec provider)
    Rfc2136DnsProvider   RFC 2136 dynamic updates signed with TSIG (dnspython), in a thread

NAME is the fully qualified record name with its trailing dot, e.g.
`_acme-challenge.preview.example.com.`; VALUE is the TXT string.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from prevu.config import Rfc2136Config
from prevu.errors import CertificateError

log = Logger()


class DnsProvider(Protocol):
    """Where DNS-01 TXT records go."""

    async def add(self, name: str, value: str) -> None:
        """Publish TXT `value` at `name` (FQDN with trailing dot)."""

    async def remove(self, name: str, value: str) -> None:
        """Withdraw TXT `value` at `name`."""


class _Collect(ProcessProtocol):
    def __init__(self, done: Deferred[tuple[int, bytes]]) -> None:
        self.done = done
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data[-4096:]

    def errReceived(self, data: bytes) -> None:
        self.output += data[-4096:]

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.done.callback((code if code is not None else -1, self.output[-4096:]))


@frozen
class ExecDnsProvider:
    """Calls `hook add|remove NAME VALUE`; exit status 0 means done."""

    reactor: Any
    hook: str
    timeout: float = 120.0

    async def add(self, name: str, value: str) -> None:
        await self._run("add", name, value)

    async def remove(self, name: str, value: str) -> None:
        await self._run("remove", name, value)

    async def _run(self, action: str, name: str, value: str) -> None:
        done: Deferred[tuple[int, bytes]] = Deferred()
        protocol = _Collect(done)
        process = self.reactor.spawnProcess(
            protocol, self.hook, [self.hook, action, name, value], env=dict(os.environ)
        )

        def kill() -> None:
            log.warn("dns_hook {action} {name} timed out; killing it", action=action, name=name)
            process.signalProcess("KILL")

        timer = self.reactor.callLater(self.timeout, kill)
        code, output = await done
        if timer.active():
            timer.cancel()
        if code != 0:
            text = output.decode("utf-8", "replace").strip()
            raise CertificateError(name, f"dns_hook {action} exited {code}: {text}")
        log.info("dns_hook {action} {name}", action=action, name=name)


def _split_server(server: str) -> tuple[str, int]:
    if server.startswith("["):
        host, _, port = server[1:].partition("]:")
        return host, int(port or 53)
    if server.count(":") == 1:
        host, port = server.split(":")
        return host, int(port)
    return server, 53


@frozen
class Rfc2136DnsProvider:
    """RFC 2136 dynamic updates with a TSIG key, sent over TCP from prevu's thread pool."""

    reactor: Any
    pool: ThreadPool
    config: Rfc2136Config
    ttl: int = 60
    timeout: float = 30.0

    async def add(self, name: str, value: str) -> None:
        await deferToThreadPool(self.reactor, self.pool, self.update, "add", name, value)

    async def remove(self, name: str, value: str) -> None:
        await deferToThreadPool(self.reactor, self.pool, self.update, "delete", name, value)

    def zone_of(self, name: str) -> str:
        """The zone holding `name`: the owner of the SOA the server returns for it (blocking)."""
        import dns.message
        import dns.name
        import dns.query
        import dns.rdatatype

        host, port = _split_server(self.config.server)
        query = dns.message.make_query(name, dns.rdatatype.SOA)
        answer = dns.query.tcp(query, host, port=port, timeout=self.timeout)
        for section in (answer.answer, answer.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return str(rrset.name)
        raise CertificateError(name, f"{self.config.server} returned no SOA for {name}")

    def update(self, action: str, name: str, value: str) -> None:
        """Add or delete one TXT value at `name` (blocking)."""
        import dns.exception
        import dns.name
        import dns.query
        import dns.rcode
        import dns.tsigkeyring
        import dns.update

        host, port = _split_server(self.config.server)
        zone = self.zone_of(name)
        keyring = dns.tsigkeyring.from_text({self.config.key_name: self.config.key_secret})
        update = dns.update.Update(
            zone,
            keyring=keyring,
            keyname=dns.name.from_text(self.config.key_name),
            keyalgorithm=self.config.key_algorithm,
        )
        relative = dns.name.from_text(name).relativize(dns.name.from_text(zone))
        if action == "add":
            update.add(relative, self.ttl, "TXT", f'"{value}"')
        else:
            update.delete(relative, "TXT", f'"{value}"')
        try:
            response = dns.query.tcp(update, host, port=port, timeout=self.timeout)
        except (dns.exception.DNSException, OSError) as error:
            reason = f"{type(error).__name__}: {error}"
            raise CertificateError(name, f"RFC 2136 {action} failed: {reason}") from None
        if response.rcode() != dns.rcode.NOERROR:
            raise CertificateError(
                name, f"RFC 2136 {action} refused: {dns.rcode.to_text(response.rcode())}"
            )
        log.info("rfc2136 {action} {name} in zone {zone}", action=action, name=name, zone=zone)
