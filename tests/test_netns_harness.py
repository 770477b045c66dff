"""The namespace harness (tests/support/netns_dockerd.py) itself: a LAN of two test hosts."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support.netns_dockerd import Bridge, Netns

pytestmark = pytest.mark.docker
SERVER = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'lan ok')\n"
    "http.server.HTTPServer(('198.18.0.1', 8080), H).serve_forever()\n"
)


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def test_two_namespaces_on_a_bridge_reach_each_other_and_leave_nothing() -> None:
    """A bridge joins two namespaces; one serves HTTP to the other; close removes all three."""
    bridge = Bridge.create()
    a, b = Netns.create("prevu-a"), Netns.create("prevu-b")
    server = None
    try:
        bridge.attach(a, "198.18.0.1/24")
        bridge.attach(b, "198.18.0.2/24")
        server = a.popen([sys.executable, "-I", "-c", SERVER])
        deadline = time.monotonic() + 10
        answer = b.http("http://198.18.0.1:8080/", timeout=1.0)
        while answer[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            answer = b.http("http://198.18.0.1:8080/", timeout=1.0)
        assert answer == (200, "lan ok")
        assert a.http("http://127.0.0.1:8080/", timeout=1.0)[0] == 0, "bound to the LAN only"
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        for netns in (a, b):
            netns.close()
        bridge.close()
    assert not {a.name, b.name, bridge.hub.name} & namespaces()
