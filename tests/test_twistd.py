"""`twistd prevu` as a real process: serving [[routes]], config errors, memory under load."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory

from tests.support.net import (
    EndlessUploader,
    ScriptedServer,
    SlowReader,
    StreamingUpstream,
    answer_each_head,
    connect_raw,
    reactor_,
    sleep,
    within,
)
from tests.support.prevu_process import (
    PrevuProcess,
    environment,
    free_port,
    run_twistd,
    twistd,
)

CONFIG = """
[server]
http = "tcp:{http}:interface=127.0.0.1"
control = "tcp:{control}:interface=127.0.0.1"
state_dir = "{state}"

[[routes]]
host = "app.test"
upstream = "http://127.0.0.1:%d"
"""


def test_the_installed_package_gives_twistd_its_prevu_plugin(tmp_path: Path) -> None:
    """`pip install .` put the dropin in site-packages: outside the checkout, without
    PYTHONPATH, `twistd --help` names prevu and `twistd prevu --help` shows --config."""
    env = {k: v for k, v in environment().items() if k != "PYTHONPATH"}
    for args, expected in ((["--help"], "prevu"), (["prevu", "--help"], "--config")):
        result = subprocess.run(
            [twistd(), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout


def test_twistd_refuses_a_bad_config_naming_file_key_and_reason(tmp_path: Path) -> None:
    """A bad config stops start-up with the file, the key and the reason."""
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nmax_body = "lots"\n')
    result = run_twistd(["-n", "prevu", "--config", str(path)], tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{path}: server.max_body: expected a size" in output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[server]\ndomian = "x"\n', 'server.domian: unknown key; did you mean "domain"?'),
        ('[server]\ndomain = "https://P.test/"\n', "server.domain: give the bare DNS name"),
        ('[docker]\nmemory = "lots"\n', "docker.memory: expected a size"),
        ('[[routes]]\nhost = "a.test"\n', "routes[0].upstream: expected an http URL"),
        ('[server]\nhttp = "tcp:notaport"\n', "server.http: invalid Twisted endpoint"),
    ],
)
def test_check_config_exits_1_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    """`prevu check-config` exits 1 with file, key and reason; 0 for a good file."""
    path = tmp_path / "prevu.toml"
    path.write_text(text)
    command = [sys.executable, "-m", "prevu.cli", "check-config", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, env=environment())
    assert result.returncode == 1
    assert f"{path}: {expected}" in result.stderr
    path.write_text('[server]\ndomain = "preview.example.com"\n')
    result = subprocess.run(command, capture_output=True, text=True, env=environment())
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("taken", ["http", "control"])
def test_twistd_exits_1_with_one_line_when_a_port_is_taken(tmp_path: Path, taken: str) -> None:
    """A port already in use: twistd exits 1 within seconds, one line naming the port."""
    ports = {"http": free_port(), "control": free_port()}
    path = tmp_path / "prevu.toml"
    path.write_text(
        f'[server]\nhttp = "tcp:{ports["http"]}:interface=127.0.0.1"\n'
        f'control = "tcp:{ports["control"]}:interface=127.0.0.1"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
    )
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[taken]))
        holder.listen()
        started = time.monotonic()
        result = run_twistd(["-n", "prevu", "--config", str(path)], tmp_path, timeout=30)
        elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert elapsed < 15, f"{elapsed:.1f}s"  # ~2-4 s alone; loaded CI machines are slower
    lines = [line for line in output.splitlines() if "cannot listen" in line]
    port = ports[taken]
    expected = (
        f"prevu: cannot listen on port {port} (server.{taken} = "
        f"'tcp:{port}:interface=127.0.0.1'): Address already in use"
    )
    assert len(lines) == 1 and lines[0].endswith(expected), output
    assert "Traceback" not in output and "Unhandled Error" not in output, output
    assert "prevu is up" not in output


@pytest_twisted.ensureDeferred
async def test_twistd_serves_the_configured_routes(tmp_path: Path) -> None:
    """`twistd -n prevu --config x.toml` proxies a [[routes]] host; others get 404."""
    upstream = ScriptedServer(
        answer_each_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nroute")
    )
    port = upstream.listen()
    prevu = PrevuProcess(tmp_path, CONFIG % port)
    prevu.start()
    try:
        client = await connect_raw(prevu.http_port)
        client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        data = await client.wait_for(lambda d: d.endswith(b"route"))
        assert data.startswith(b"HTTP/1.1 200 ")
        client.send(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        data = await client.wait_for(lambda d: d.endswith(b"</html>\n"))
        assert b"HTTP/1.1 404 " in data
        control = await connect_raw(prevu.control_port)
        control.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = await control.wait_for(lambda d: b'"ok"' in d)
        assert data.startswith(b"HTTP/1.1 200 ")
        # No api_token configured: prevu made one in state_dir; /metrics counts the request.
        token = (tmp_path / "state" / "api_token").read_bytes().strip()
        control.take()
        control.send(
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
            + token
            + b"\r\n\r\n"
        )
        data = await control.wait_for(lambda d: b"prevu_proxy_upstream_idle" in d)
        assert b'prevu_proxy_requests_total{scheme="http"} 1\n' in data
    finally:
        log = prevu.stop()
        await upstream.stop()
    # One start-up summary; no factory start/stop lines.
    summary = log[log.index("prevu is up") :]
    assert f"previews   http://pr-{{number}}-{{repo}}.localhost:{prevu.http_port}/" in summary
    assert f"dashboard  http://prevu.localhost:{prevu.http_port}/" in summary
    token = tmp_path / "state" / "api_token"
    assert f"API token  {token}" in summary
    url = f"http://127.0.0.1:{prevu.control_port}"
    assert f'CLI        export PREVU_URL={url} PREVU_TOKEN="$(cat {token})"' in summary
    assert "builder    " in summary and "TLS        off" in summary
    assert log.count("prevu is up") == 1
    assert "Starting factory" not in log and "Stopping factory" not in log, log


@pytest_twisted.ensureDeferred
async def test_slow_client_reading_256_mib_keeps_prevu_memory_flat(tmp_path: Path) -> None:
    """A slow reader of 256 MiB grows prevu's RSS by less than 20 MB (backpressure)."""
    size = 256 * 1024 * 1024
    factory = Factory.forProtocol(lambda: StreamingUpstream(size))
    listening = reactor_().listenTCP(0, factory, interface="127.0.0.1")
    prevu = PrevuProcess(tmp_path, CONFIG % listening.getHost().port)
    prevu.start()
    try:
        baseline = prevu.rss()
        reader = SlowReader()
        endpoint = TCP4ClientEndpoint(reactor_(), "127.0.0.1", prevu.http_port)
        await within(connectProtocol(endpoint, reader), 5)
        reader.transport.write(b"GET /big HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        peak = baseline
        while not reader.done.called:
            peak = max(peak, prevu.rss())
            await sleep(0.05)
        received = await within(reader.done, 120)
        assert received > size  # head + the whole body
        growth = peak - baseline
        print(f"RSS baseline {baseline / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB")
        assert growth < 20 * 1000 * 1000, f"RSS grew by {growth / 1e6:.1f} MB"
    finally:
        prevu.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_upload_to_an_upstream_that_stops_reading_is_held_back(tmp_path: Path) -> None:
    """An upstream that stops reading makes prevu stop reading the client: RSS stays flat."""

    def stop_reading(connection, data):  # type: ignore[no-untyped-def]
        connection.transport.pauseProducing()

    upstream = ScriptedServer(stop_reading)
    port = upstream.listen()
    prevu = PrevuProcess(tmp_path, CONFIG % port)
    prevu.start()
    try:
        baseline = prevu.rss()
        uploader = EndlessUploader(b"app.test", 512 * 1024 * 1024)
        endpoint = TCP4ClientEndpoint(reactor_(), "127.0.0.1", prevu.http_port)
        await within(connectProtocol(endpoint, uploader), 5)
        peak = baseline
        for _ in range(40):
            await sleep(0.05)
            peak = max(peak, prevu.rss())
        assert uploader.sent < 64 * 1024 * 1024, "the client was never slowed down"
        assert peak - baseline < 20 * 1000 * 1000, f"RSS grew by {(peak - baseline) / 1e6:.1f} MB"
        uploader.transport.abortConnection()  # type: ignore[union-attr]
    finally:
        prevu.stop()
        await upstream.stop()
