"""Server config: parsing, defaults, and errors that name file, key and reason."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

import pytest

from prevu.config import default_config, load_config, parse_config
from prevu.errors import ConfigError
from prevu.units import format_duration, parse_duration, parse_size

FULL = """
[server]
domain = "preview.example.com"
label = "pr-{number}-{repo}"
http = "tcp:80"
https = "tcp:443"
control = "tcp:8080:interface=127.0.0.1"
public_url = "https://prevu.example.com"
state_dir = "/var/lib/prevu"
api_token = "token"
trusted_proxies = ["10.0.0.0/8", "::1"]
max_body = "1g"
timeouts = { connect = "5s", response = "60s", idle = "120s" }

[tls]
mode = "acme"

[acme]
directory = "https://acme-v02.api.letsencrypt.org/directory"
email = "ops@example.com"
challenge = "http-01"
renew_before = "30d"
orders_per_hour = 20

[github]
webhook_secret = "hook"
token = "ghp"

[gitlab]
webhook_token = "gl"
token = "glpat"
url = "https://gitlab.com"

[[repos]]
name = "acme/shop"
access = "private"
trigger = "auto"
forks = "approve"

[auth]
cookie_secret = "0123456789abcdef0123456789abcdef"
cookie_secret_previous = []
session_ttl = "12h"
users_file = "/etc/prevu/users"

[auth.github]
client_id = "id"
client_secret = "secret"
allowed_orgs = ["acme"]
allowed_teams = ["acme/reviewers"]
allowed_users = ["octocat"]

[docker]
network = "prevu"
memory = "512m"
cpus = 1.0
pids = 512
max_previews = 20
build_timeout = "15m"
build_concurrency = 2
reconcile_interval = "60s"

[previews]
ttl = "7d"
sleep_after = "30m"

[[routes]]
host = "staging.example.com"
upstream = "http://127.0.0.1:9000"
access = "public"
"""


def test_the_spec_example_parses_into_typed_values() -> None:
    """Every key of SPEC §2 is accepted and converted."""
    config = parse_config(tomllib.loads(FULL), "prevu.toml")
    assert config.server.domain == "preview.example.com"
    assert config.server.max_body == 1 << 30
    assert config.server.timeouts.idle == 120
    assert config.server.trusted_proxies[1] == ipaddress.ip_network("::1")
    assert config.server.public_host == "prevu.example.com"
    assert config.tls.mode == "acme"
    assert config.acme.renew_before == 30 * 86400
    assert config.repo("ACME/Shop") is not None and config.repo("x/y") is None
    assert config.auth.github is not None and config.auth.github.allowed_teams == (
        "acme/reviewers",
    )
    assert config.docker.memory == 512 << 20 and config.docker.build_timeout == 900
    assert config.previews.sleep_after == 1800
    assert config.routes[0].host == "staging.example.com"


def test_embedded_defaults_match_the_spec() -> None:
    """No file: proxy on 127.0.0.1:8000, control on :8001, domain localhost, no TLS."""
    config = default_config()
    assert config.server.http == "tcp:8000:interface=127.0.0.1"
    assert config.server.control == "tcp:8001:interface=127.0.0.1"
    assert config.server.domain == "localhost"
    assert config.tls.mode == "off"
    assert config.server.state_dir == ".prevu"
    assert parse_config({}) == parse_config({}, "<string>")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[server]\ndomian = "x"', "server.domian", "unknown key"),
        ("[serve]\n", "serve", "unknown key"),
        ('[server]\nmax_body = "big"', "server.max_body", "expected a size"),
        ('[server]\ntimeouts = { idle = "soon" }', "server.timeouts.idle", "expected a duration"),
        ('[server]\ntimeouts = { idel = "1s" }', "server.timeouts.idel", "unknown key"),
        ('[server]\nhttp = "tcp:port"', "server.http", "invalid Twisted endpoint"),
        ('[server]\nhttp = "bogus:1"', "server.http", "invalid Twisted endpoint"),
        ('[server]\ntrusted_proxies = ["nope"]', "server.trusted_proxies", "not an IP"),
        ('[server]\nlabel = "pr-{pr}"', "server.label", "unknown placeholder"),
        ('[server]\npublic_url = "ftp://x"', "server.public_url", "expected an http/https URL"),
        ('[tls]\nmode = "magic"', "tls.mode", 'must be one of "off", "files", "acme"'),
        ('[tls]\nmode = "files"\n[server]\nhttps = "tcp:443"', "tls.cert", "is required"),
        ('[tls]\nmode = "acme"', "server.https", "is required"),
        ('[acme]\nchallenge = "dns-01"', "acme.challenge", "needs dns_hook or rfc2136"),
        ("[acme]\norders_per_hour = 0", "acme.orders_per_hour", "at least 1"),
        ('[[repos]]\naccess = "public"', "repos[0].name", "is required"),
        ('[[repos]]\nname = "shop"', "repos[0].name", "owner/name"),
        ('[[repos]]\nname = "a/b"\nforks = "sometimes"', "repos[0].forks", "must be one of"),
        ('[[repos]]\nname = "a/b"\n[[repos]]\nname = "A/B"', "repos[1].name", "listed twice"),
        ('[auth]\ncookie_secret = "short"', "auth.cookie_secret", "at least 32 bytes"),
        ('[auth.github]\nclient_id = "x"', "auth.github.client_secret", "is required"),
        ("[docker]\ncpus = 0", "docker.cpus", "more than 0"),
        ('[docker]\ncpus = "1"', "docker.cpus", "expected a number"),
        ("[docker]\npids = true", "docker.pids", "expected a whole number"),
        ('[docker]\nmemory = "1k"', "docker.memory", "at least 6m"),
        ('[docker]\nnetwork = "a b"', "docker.network", "letters, digits"),
        ('[docker]\nruntime = "swarm"', "swarm.registry", "required with [docker] runtime"),
        ('[docker]\nruntime = "podman"', "docker.runtime", 'must be "docker"'),
        ("[docker]\nruntime = 1", "docker.runtime", "expected a string"),
        ('[server]\ncontrol = "tcp:80:colour=blue"', "server.control", "unknown option"),
        (
            '[[routes]]\nhost = "a.test"\nupstream = "http://x/path"',
            "routes[0].upstream",
            "no path",
        ),
        ('[[routes]]\nhost = "bad host"\nupstream = "http://x"', "routes[0].host", "host name"),
        ("routes = 3", "routes", "expected [[routes]] tables"),
        ('[github]\ntoken = "a"\ntoken_file = "b"', "github.token", "either token or token_file"),
    ],
)
def test_bad_values_name_the_key_and_the_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(tomllib.loads(text), "/etc/prevu.toml")
    assert raised.value.path == "/etc/prevu.toml"
    assert raised.value.key == key
    assert reason in raised.value.reason
    assert str(raised.value).startswith(f"/etc/prevu.toml: {key}: ")


def test_secrets_can_come_from_files_relative_to_the_config(tmp_path: Path) -> None:
    """`KEY_file` reads the secret from a file next to the config."""
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "prevu.toml").write_text('[server]\napi_token_file = "token"\n')
    assert load_config(str(tmp_path / "prevu.toml")).server.api_token == "s3cret"
    (tmp_path / "prevu.toml").write_text('[server]\napi_token_file = "missing"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(str(tmp_path / "prevu.toml"))
    assert raised.value.key == "server.api_token_file"
    assert "cannot read missing" in raised.value.reason


def test_unreadable_or_invalid_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "nope.toml"))
    (tmp_path / "bad.toml").write_text("[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(str(tmp_path / "bad.toml"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43200),
        ("7d", 604800),
        ("0", 0),
        (15, 15),
        ("1.5h", 5400),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512m", 512 << 20),
        ("2g", 2 << 30),
        ("64k", 65536),
        (100, 100),
        ("1GiB", 1 << 30),
        ("1.5k", 1536),
    ],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "soon", "-1s", "5 parsecs", True])
def test_bad_durations_are_refused(text: str | bool) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    assert format_duration(604800) == "1w"
    assert format_duration(90) == "90s"
    assert format_duration(1800) == "30m"


def test_proxy_endpoints_get_a_listen_backlog_unless_given() -> None:
    """Bursts of new connections are not dropped by Twisted's default backlog of 50."""
    from prevu.endpoints import with_backlog

    assert with_backlog("tcp:80") == "tcp:80:backlog=1024"
    assert with_backlog("tcp:80:interface=127.0.0.1") == "tcp:80:interface=127.0.0.1:backlog=1024"
    assert with_backlog("tcp:80:backlog=10") == "tcp:80:backlog=10"
    assert with_backlog("unix:/run/prevu.sock") == "unix:/run/prevu.sock"


def test_docker_runtime_defaults_to_docker_and_accepts_it() -> None:
    """`[docker] runtime` picks the engine (SPEC §6): "docker" by default and when given."""
    assert default_config().docker.runtime == "docker"
    assert parse_config({"docker": {"runtime": "docker"}}).docker.runtime == "docker"


def test_swarm_runtime_error_names_file_and_key() -> None:
    """"swarm" without a registry is a ConfigError(path, key, reason), not a generic error."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"docker": {"runtime": "swarm"}}, "prevu.toml")
    assert (caught.value.path, caught.value.key, caught.value.reason) == (
        "prevu.toml",
        "swarm.registry",
        'is required with [docker] runtime = "swarm" (nodes pull from it)',
    )


@pytest.mark.parametrize(
    ("server", "key", "reason"),
    [
        ('domain = "https://Preview.Example.com/"', "domain", "without a scheme"),
        ('domain = "preview.example.com:8443"', "domain", "without a port"),
        ('domain = "preview.example.com/x"', "domain", "without a path"),
        ('domain = "pre_view.example.com"', "domain", "'pre_view' is not a DNS label"),
        ('domain = "-preview.example.com"', "domain", "'-preview' is not a DNS label"),
        ('domain = "a..example.com"', "domain", "'' is not a DNS label"),
        (f'domain = "{"a" * 64}.example.com"', "domain", "is not a DNS label"),
        ('http = "tcp:99999"', "http", "port 99999 is over 65535"),
        ('https = "tcp6:70000"', "https", "port 70000 is over 65535"),
        ('control = "tcp:8001:interfce=127.0.0.1"', "control", "unknown option 'interfce'"),
        ('control = "tcp"', "control", "tcp needs a port"),
        ('public_url = "http://prevu.example.com:99999"', "public_url", "'99999' is not a port"),
        ('public_url = "prevu.example.com"', "public_url", "expected an http/https URL"),
        ('domian = "preview.example.com"', "domian", 'unknown key; did you mean "domain"?'),
    ],
)
def test_check_config_refuses_each_bad_server_value(server: str, key: str, reason: str) -> None:
    """Each bad [server] value is refused naming file, key and reason."""
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(f"[server]\n{server}\n"), "/etc/prevu.toml")
    assert str(caught.value).startswith(f"/etc/prevu.toml: server.{key}: ")
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[sever]\ndomain = "x"\n', 'sever: unknown key; did you mean "server"?'),
        ('[tls]\nmdoe = "off"\n', 'tls.mdoe: unknown key; did you mean "mode"?'),
        ('[docker]\nMemory = "1g"\n', 'docker.Memory: unknown key; did you mean "memory"?'),
        ('[github]\nwebhok_secret = "x"\n', 'did you mean "webhook_secret"?'),
        ('[acme]\nemial = "a@b.test"\n', 'acme.emial: unknown key; did you mean "email"?'),
        (
            '[[repos]]\nname = "a/b"\nacess = "public"\n',
            'repos[0].acess: unknown key; did you mean "access"?',
        ),
        ("[server]\nzzz = 1\n", "server.zzz: unknown key"),
    ],
)
def test_a_typo_gets_the_nearest_known_key(text: str, message: str) -> None:
    """A mistyped key in any table names the nearest known key (none when nothing is close)."""
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text), "p.toml")
    assert message in str(caught.value)
    if "zzz" in text:
        assert str(caught.value) == "p.toml: server.zzz: unknown key"


def test_domain_upper_case_and_trailing_dot_are_folded() -> None:
    """`Preview.Example.COM.` is the domain `preview.example.com`."""
    config = parse_config({"server": {"domain": "Preview.Example.COM."}})
    assert config.server.domain == "preview.example.com"


@pytest.mark.parametrize(
    ("server", "public_url"),
    [
        ({}, "http://prevu.localhost:8000"),
        ({"domain": "p.test", "http": "tcp:18480"}, "http://prevu.p.test:18480"),
        ({"domain": "p.test", "http": "tcp:80"}, "http://prevu.p.test"),
        ({"domain": "p.test", "http": "tcp6:8080:interface=\\:\\:"}, "http://prevu.p.test:8080"),
        ({"domain": "p.test", "http": "unix:/run/prevu.sock"}, "http://prevu.p.test"),
        ({"domain": "p.test", "http": "tcp:80", "https": "tcp:443"}, "https://prevu.p.test"),
        ({"domain": "p.test", "http": "tcp:80", "https": "tcp:8443"}, "https://prevu.p.test:8443"),
        ({"domain": "p.test", "public_url": "https://x.test/"}, "https://x.test"),
    ],
)
def test_public_url_defaults_to_the_proxy_port_unless_80_or_443(
    server: dict[str, str], public_url: str
) -> None:
    """Moving the proxy's port moves the default public_url with it, so login keeps working."""
    tls = {"tls": {"mode": "files", "cert": "c", "key": "k"}} if "https" in server else {}
    assert parse_config({"server": server, **tls}).server.public_url == public_url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[acme.rfc2136]\nserver = "127.0.0.1:99999"\nkey_name = "k"\nkey_secret = "s"\n',
            "acme.rfc2136.server: port '99999' is not a port (1-65535)",
        ),
        (
            '[acme.rfc2136]\nserver = "[::1:53"\nkey_name = "k"\nkey_secret = "s"\n',
            "acme.rfc2136.server: expected host, host:port or [v6]:port",
        ),
        ('[acme]\ndirectory = "https://acme.test:0/dir"\n', "acme.directory: port '0'"),
        (
            '[[routes]]\nhost = "a.test"\nupstream = "http://127.0.0.1:65536"\n',
            "routes[0].upstream: port '65536' is not a port (1-65535)",
        ),
    ],
)
def test_ports_out_of_range_are_refused_in_every_table(text: str, message: str) -> None:
    """A port outside 1-65535 in an address or URL is refused, naming the key."""
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text), "p.toml")
    assert f"p.toml: {message}" in str(caught.value)
