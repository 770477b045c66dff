"""Start-up: the summary block, the cannot-listen line, JSON log lines (unit and twistd)."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevel, LogPublisher

from prevu.config import parse_config
from prevu.logs import JsonLineObserver, event_json
from prevu.service import cannot_listen, startup_summary
from tests.support.prevu_process import free_port, run_twistd


def test_the_summary_says_where_everything_is() -> None:
    """Previews, dashboard, API token file, builder and TLS mode, one per line."""
    config = parse_config(
        {"server": {"domain": "p.test", "http": "tcp:18480", "control": "tcp:18481"}}, "x.toml"
    )
    summary = startup_summary(config, "/usr/bin/docker with DOCKER_BUILDKIT=1", "/s/api_token")
    assert summary.splitlines() == [
        "prevu is up",
        "  previews   http://pr-{number}-{repo}.p.test:18480/  (proxy on tcp:18480)",
        "  dashboard  http://prevu.p.test:18480/  (control app on tcp:18481)",
        "  API token  /s/api_token",
        '  CLI        export PREVU_URL=http://127.0.0.1:18481 PREVU_TOKEN="$(cat /s/api_token)"',
        "  builder    /usr/bin/docker with DOCKER_BUILDKIT=1",
        "  TLS        off",
    ]


def test_the_summary_names_the_config_key_of_a_given_token_and_the_https_port() -> None:
    """A token from the config is named by its key; with TLS the previews are https."""
    config = parse_config(
        {
            "server": {
                "domain": "p.test",
                "http": "tcp:80",
                "https": "tcp:443",
                "control": "tcp6:8001:interface=\\:\\:",
                "api_token": "s",
            },
            "tls": {"mode": "files", "cert": "c.pem", "key": "k.pem"},
        },
        "/etc/prevu.toml",
    )
    lines = startup_summary(config, "docker buildx (buildx plugin)", None).splitlines()
    assert lines[1].startswith("  previews   https://pr-{number}-{repo}.p.test/  ")
    assert lines[2].startswith("  dashboard  https://prevu.p.test/  ")
    assert lines[3] == "  API token  /etc/prevu.toml: server.api_token"
    assert (
        lines[4] == "  CLI        export PREVU_URL=http://[::1]:8001 PREVU_TOKEN=<server.api_token>"
    )
    assert lines[6] == "  TLS        files (tcp:443)"


def test_cannot_listen_names_the_port_key_and_reason() -> None:
    """Twisted's CannotListenError becomes one line: port, config key and value, OS reason."""
    error = CannotListenError("127.0.0.1", 8000, OSError(98, "Address already in use"))
    line = cannot_listen("server.http", "tcp:8000:interface=127.0.0.1", error)
    assert line == (
        "prevu: cannot listen on port 8000 (server.http = 'tcp:8000:interface=127.0.0.1'): "
        "Address already in use"
    )
    other = cannot_listen("server.control", "unix:/nope/s.sock", OSError(2, "No such file"))
    assert other.startswith("prevu: cannot listen on unix:/nope/s.sock (server.control = ")


def test_json_lines_carry_time_level_namespace_message_and_fields() -> None:
    """One JSON object per line: the formatted message, the plain fields, a failure's traceback."""
    stream = io.StringIO()
    observer: Any = JsonLineObserver(stream)  # zope interfaces are not Protocols for mypy
    publisher: Any = LogPublisher(observer)
    log = Logger(namespace="prevu.test", observer=publisher)
    log.info("preview {preview} running at {url}", preview="pr-1-a", url="http://a/", n=3)
    try:
        raise ValueError("boom")
    except ValueError:
        log.failure("build of {preview} broke", preview="pr-2-b", level=LogLevel.error)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "preview pr-1-a running at http://a/"
    assert (first["level"], first["namespace"]) == ("info", "prevu.test")
    assert (first["preview"], first["url"], first["n"]) == ("pr-1-a", "http://a/", 3)
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["level"] == "error" and "ValueError: boom" in second["failure"]
    assert event_json({"log_format": "{x}", "x": object()}).startswith('{"time": ""')


def test_twistd_logger_option_writes_json_lines(tmp_path: Path) -> None:
    """`twistd --logger prevu.logs.json_observer`: every line of its output is JSON."""
    port = free_port()
    path = tmp_path / "prevu.toml"
    path.write_text(
        f'[server]\nhttp = "tcp:{port}:interface=127.0.0.1"\n'
        f'control = "tcp:{free_port()}:interface=127.0.0.1"\nstate_dir = "{tmp_path / "s"}"\n'
    )
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        args = ["--logger", "prevu.logs.json_observer", "-n", "prevu", "--config", str(path)]
        result = run_twistd(args, tmp_path, timeout=30)
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records and all({"time", "level", "namespace", "message"} <= set(r) for r in records)
    assert any(f"cannot listen on port {port}" in r["message"] for r in records), records


def test_twistd_turns_factory_start_and_stop_lines_off(monkeypatch: Any) -> None:
    """After makeService's quiet_factories, no factory (probes, forge API pools) is noisy."""
    from twisted.internet.protocol import ClientFactory, Factory, Protocol
    from twisted.web.client import _HTTP11ClientFactory

    from prevu.tap import quiet_factories

    monkeypatch.setattr(Factory, "noisy", True)  # restored after the test
    assert Factory.forProtocol(Protocol).noisy
    quiet_factories()
    factories = (Factory.forProtocol(Protocol), ClientFactory(), _HTTP11ClientFactory(None, ""))
    assert not any(factory.noisy for factory in factories)
