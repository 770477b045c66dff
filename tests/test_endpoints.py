"""prevu.endpoints: Twisted endpoint strings parsed once, without Twisted."""

from __future__ import annotations

import subprocess
import sys

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from prevu.endpoints import (
    Address,
    endpoint_port,
    loopback_address,
    parse_endpoint,
    with_backlog,
)
from prevu.errors import EndpointError

VALID = [
    "tcp:8000",
    "tcp:8000:interface=127.0.0.1",
    "tcp:port=81:backlog=10",
    "tcp6:8443:interface=\\:\\:1",
    "tcp:0",
    "unix:/run/prevu.sock",
    "unix:address=/run/prevu.sock:mode=660",
]
READS_FILES = ["systemd:domain=INET:index=0", "ssl:443:privateKey=key.pem:certKey=cert.pem"]
"""Twisted's parsers read the environment or key files for these; prevu only checks the form."""
INVALID = [
    "tcp:port",
    "tcp:notaport",
    "bogus:1",
    "tcp",
    "tcp:80:interface=a:backlog=1:extra",
    "tcp:80:colour=blue",
    "tcp:70000",
    "unix",
    "tcp:80:port=81",
]


@pytest.mark.parametrize("description", VALID)
def test_valid_descriptions_parse_as_twisted_accepts_them(description: str) -> None:
    """What prevu accepts, Twisted's serverFromString accepts too (nothing listens)."""
    parse_endpoint(description)
    serverFromString(MemoryReactor(), description)


@pytest.mark.parametrize("description", READS_FILES)
def test_descriptions_whose_files_twisted_reads_parse(description: str) -> None:
    """systemd and ssl descriptions parse; their files are read when prevu listens."""
    assert parse_endpoint(description).kind == description.split(":")[0]


@pytest.mark.parametrize("description", INVALID)
def test_invalid_descriptions_raise_endpoint_error(description: str) -> None:
    """A description Twisted would refuse is an EndpointError with a reason."""
    with pytest.raises(EndpointError) as caught:
        parse_endpoint(description)
    assert caught.value.description == description and caught.value.reason


@pytest.mark.parametrize(
    ("description", "kind", "port", "interface", "backlog"),
    [
        ("tcp:8000:interface=127.0.0.1", "tcp", 8000, "127.0.0.1", None),
        ("tcp:port=81:backlog=10", "tcp", 81, "", 10),
        ("tcp6:8443", "tcp6", 8443, "::", None),
        ("tcp6:8443:interface=\\:\\:1", "tcp6", 8443, "::1", None),
        ("unix:/run/prevu.sock", "unix", None, "", None),
    ],
)
def test_fields(
    description: str, kind: str, port: int | None, interface: str, backlog: int | None
) -> None:
    """Kind, port, interface (unescaped) and backlog come out of one parse."""
    endpoint = parse_endpoint(description)
    assert (endpoint.kind, endpoint.port, endpoint.interface, endpoint.backlog) == (
        kind,
        port,
        interface,
        backlog,
    )


def test_endpoint_port() -> None:
    """The proxy's port for URLs: None for unix sockets, missing or invalid strings."""
    assert endpoint_port("tcp:8000:interface=127.0.0.1") == 8000
    assert endpoint_port("tcp:port=81") == 81
    assert endpoint_port("unix:/run/prevu.sock") is None
    assert endpoint_port(None) is None
    assert endpoint_port("tcp:nope") is None


@pytest.mark.parametrize(
    ("description", "address"),
    [
        ("tcp:8001:interface=127.0.0.1", Address("127.0.0.1", 8001)),
        ("tcp:8001", Address("127.0.0.1", 8001)),
        ("tcp:8001:interface=0.0.0.0", Address("127.0.0.1", 8001)),
        ("tcp6:8001", Address("::1", 8001)),
        ("tcp6:8001:interface=\\:\\:", Address("::1", 8001)),
        ("tcp:8001:interface=10.0.0.5", Address("10.0.0.5", 8001)),
        ("unix:/run/prevu.sock", None),
        ("ssl:443", None),
        ("tcp:0", None),
    ],
)
def test_loopback_address(description: str, address: Address | None) -> None:
    """Where a local client reaches a listener: wildcards become loopback."""
    assert loopback_address(description) == address


def test_with_backlog_keeps_a_given_one_and_skips_unix() -> None:
    """Only TCP descriptions without a backlog get one."""
    assert with_backlog("tcp6:80") == "tcp6:80:backlog=1024"
    assert with_backlog("tcp:80", 64) == "tcp:80:backlog=64"
    assert with_backlog("tcp:80:backlog=10") == "tcp:80:backlog=10"
    assert with_backlog("unix:/run/prevu.sock") == "unix:/run/prevu.sock"


def test_prevu_cli_does_not_import_the_server() -> None:
    """`prevu ls` parses the control endpoint without Docker, acme, Klein or Twisted."""
    code = (
        "import sys, prevu.cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('docker', 'acme', 'klein', 'twisted', 'treq', 'josepy') or m == 'prevu.service')\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
