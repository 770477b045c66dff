"""
testssl.sh against prevu's https port, with a certificate really issued by ACME.

Starts Debian's pebble (tests/support/pebble.py), runs `twistd -n prevu` with
`[tls] mode = "acme"` whose control host (of `public_url`) gets a certificate
by HTTP-01 at start, waits until that certificate is served, then runs

    testssl --quiet --warnings off --ip 127.0.0.1 --add-ca <pebble root> \
            --jsonfile bench/out/testssl.json https://prevu.prevu.test:<https port>/

and prints the findings by severity. Exits 1 if any finding is HIGH or
CRITICAL. Run from the repository root with the venv active:

    python bench/testssl.py            # or: sh bench/testssl.sh
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.pebble import Pebble, fetch_certificate

HOST = "prevu.prevu.test"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="prevu-testssl-")
    # Like a public CA, give issued certificates a revocation URI (testssl rates its absence HIGH).
    pebble = Pebble(work, ocsp_url="http://127.0.0.1:9/ocsp")
    pebble.start()
    server = None
    try:
        control_port = _free()
        config = os.path.join(work, "prevu.toml")
        with open(config, "w") as handle:
            handle.write(
                f"""
[server]
domain = "prevu.test"
http = "tcp:{pebble.http_port}:interface=127.0.0.1"
https = "tcp:{pebble.tls_port}:interface=127.0.0.1"
control = "tcp:{control_port}:interface=127.0.0.1"
public_url = "https://{HOST}:{pebble.tls_port}"
state_dir = "{work}/state"
api_token = "bench"

[tls]
mode = "acme"

[acme]
directory = "{pebble.directory_url}"
ca_bundle = "{pebble.ca_bundle}"
challenge = "http-01"
"""
            )
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        log = open(os.path.join(OUT, "testssl-prevu.log"), "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "prevu", "--config", config],
            stdout=log,
            stderr=subprocess.STDOUT,
            # The dropin in ./twisted/plugins is found through the repository on the path.
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
        root = os.path.join(work, "root.pem")
        with open(root, "wb") as handle:
            handle.write(pebble.root_pem())
        deadline = time.monotonic() + 60
        while True:
            try:
                fetch_certificate(pebble.tls_port, HOST, root)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        report = os.path.join(OUT, "testssl.json")
        if os.path.exists(report):
            os.unlink(report)
        command = [
            "testssl", "--quiet", "--warnings", "off", "--color", "0",
            "--ip", "127.0.0.1", "--add-ca", root, "--jsonfile", report,
            f"https://{HOST}:{pebble.tls_port}/",
        ]
        print("$", " ".join(command), flush=True)
        with open(os.path.join(OUT, "testssl.txt"), "wb") as text:
            subprocess.run(command, stdout=text, check=False)
        with open(report) as handle:
            findings = json.load(handle)
        by_severity = collections.Counter(f["severity"] for f in findings)
        print("findings by severity:", dict(sorted(by_severity.items())))
        bad = [f for f in findings if f["severity"] in ("HIGH", "CRITICAL")]
        for finding in findings:
            if finding["severity"] in ("LOW", "MEDIUM", "HIGH", "CRITICAL"):
                print(f"  {finding['severity']:8} {finding['id']}: {finding['finding']}")
        return 1 if bad else 0
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        pebble.stop()


def _free() -> int:
    from tests.support.pebble import free_port

    return free_port()


if __name__ == "__main__":
    sys.exit(main())
