#!/usr/bin/env python3
"""
The CPU cost of the proxy's own Python per request, without sockets: a
complement to bench/proxy.py whose wrk figures move by ±20 % on a shared
machine, too much to see a change of a few per cent.

One client connection and one pooled upstream connection of prevu's real
`ProxyFactory`, on Twisted's doubles (`MemoryReactorClock`, `StringTransport`):
each request is fed to the client side, its forwarded head taken from the
upstream transport, a 100-byte response fed back, and the answer taken from
the client transport. CPU per request is `time.process_time()` over the
measured requests. Everything else (kernel, event loop) is left out, so read
the figures side by side (`--source` runs another checkout's `prevu/`, in a
fresh interpreter each time, interleaved round after round), not as the
proxy's full cost.

`--noindex` measures the route with `X-Robots-Tag: noindex` as well (on code
whose `Route` has the `noindex` field).

Run it with the project's venv:
`.venv/bin/python bench/proxy_memory.py --source /path/a --source /path/b --rounds 7`
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUEST = b"GET /small.bin HTTP/1.1\r\nHost: app.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
BROWSER = (
    b"GET /small.bin HTTP/1.1\r\nHost: app.test\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Referer: http://app.test/\r\nCookie: theme=dark; lang=en\r\n"
    b"Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-User: ?1\r\nUpgrade-Insecure-Requests: 1\r\nCache-Control: max-age=0\r\n"
    b"Connection: keep-alive\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: 100\r\nConnection: keep-alive\r\n\r\n" + b"x" * 100
)


def measure(requests: int, noindex: bool, browser: bool) -> float:
    """CPU µs per request of the proxy's Python (runs in this interpreter)."""
    import gc
    import time

    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from prevu.proxy.server import ProxyFactory, ProxySettings
    from prevu.routing import Route, RouteRegistry, Upstream

    reactor = MemoryReactorClock()
    routes = RouteRegistry()
    extra = {"noindex": True} if noindex else {}
    routes.put("previews", Route("app.test", Upstream("10.9.9.9", 8080), **extra))
    factory = ProxyFactory(reactor, routes, ProxySettings())
    client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert client is not None
    client_transport = StringTransport()
    client.makeConnection(client_transport)
    request = BROWSER if browser else REQUEST
    client.dataReceived(request)
    upstream = reactor.tcpClients[0][2].buildProtocol(None)
    upstream_transport = StringTransport()
    upstream.makeConnection(upstream_transport)
    upstream.dataReceived(RESPONSE)
    answer = client_transport.value()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"x" * 100), answer
    assert (b"X-Robots-Tag: noindex\r\n" in answer) == noindex, answer
    client_transport.clear()
    upstream_transport.clear()
    feed_client, feed_upstream = client.dataReceived, upstream.dataReceived
    for _ in range(2000):  # warm-up
        feed_client(request)
        feed_upstream(RESPONSE)
        upstream_transport.clear()
        client_transport.clear()
    gc.collect()
    gc.freeze()
    start = time.process_time()
    for _ in range(requests):
        feed_client(request)
        feed_upstream(RESPONSE)
        upstream_transport.clear()
        client_transport.clear()
    used = time.process_time() - start
    assert len(reactor.tcpClients) == 1, "the upstream connection was not reused"
    return used / requests * 1e6


def run(source: str, requests: int, noindex: bool, browser: bool) -> float:
    """`measure` in a fresh interpreter importing prevu from `source`."""
    env = dict(os.environ, PYTHONPATH=source)
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--requests",
            str(requests),
            *(["--noindex"] if noindex else []),
            *(["--browser"] if browser else []),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{source}: {result.stderr[-2000:]}")
    return float(result.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", help="checkout holding prevu/ (repeatable)")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--noindex", action="store_true", help="also the noindex route")
    parser.add_argument("--browser", action="store_true", help="a 14-header browser request")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure(args.requests, args.noindex, args.browser))
        return
    sources = args.source or [str(REPO)]
    variants = [(source, False) for source in sources]
    if args.noindex:
        variants += [(source, True) for source in sources]
    figures: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for source, noindex in variants:
            name = f"{source}{' noindex' if noindex else ''}"
            try:
                value = run(source, args.requests, noindex, args.browser)
            except SystemExit as error:
                print(f"  {name}: skipped ({str(error).splitlines()[-1]})")
                continue
            figures.setdefault(name, []).append(value)
            print(f"  round {round_ + 1} {name}: {value:.2f} µs/req", flush=True)
    print(f"\n{'code':<50} {'median µs/req':>14}  runs")
    for name, values in figures.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:<50} {statistics.median(values):>14.2f}  {runs}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
