"""`.prevu.toml` parsing and validation (SPEC §3)."""

from __future__ import annotations

import pytest

from prevu.errors import RepoConfigError
from prevu.repoconfig import Limits, RepoSettings, parse_repo_config

FULL = """
[build]
dockerfile = "docker/Dockerfile"
context = "."
args = { NODE_ENV = "production" }

[run]
port = 8080
command = ["./serve"]
env = { FEATURE_X = "on" }
health = "/healthz"
memory = "256m"
cpus = 0.5

[preview]
access = "public"
"""


def test_missing_file_means_defaults() -> None:
    """No .prevu.toml: Dockerfile at the root, port 8080."""
    settings = parse_repo_config(None)
    assert settings == RepoSettings()
    assert (settings.dockerfile, settings.context, settings.port) == ("Dockerfile", ".", 8080)


def test_the_spec_example_parses() -> None:
    """The SPEC §3 example is valid and read field by field."""
    settings = parse_repo_config(FULL)
    assert settings.dockerfile == "docker/Dockerfile"
    assert settings.build_args == {"NODE_ENV": "production"}
    assert settings.command == ("./serve",)
    assert settings.env == {"FEATURE_X": "on"}
    assert settings.health == "/healthz"
    assert settings.memory == 256 << 20
    assert settings.cpus == 0.5
    assert settings.access == "public"


def test_dockerfile_is_relative_to_the_context() -> None:
    """docker build wants the Dockerfile path inside the context."""
    settings = parse_repo_config('[build]\ncontext = "web"\ndockerfile = "web/Dockerfile"\n')
    assert settings.dockerfile_in_context == "Dockerfile"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[build\n", "", "invalid TOML"),
        ("[bulid]\n", "bulid", 'unknown key; did you mean "build"? (known: build, run,'),
        ("[run]\nprot = 1\n", "run.prot", 'unknown key; did you mean "port"? (known: port,'),
        ("[run]\nzzz = 1\n", "run.zzz", "unknown key (known: port, command,"),
        ("run = 3\n", "run", "expected a table"),
        ("[run]\nport = 0\n", "run.port", "1-65535"),
        ("[run]\nport = 70000\n", "run.port", "1-65535"),
        ("[run]\nport = true\n", "run.port", "1-65535"),
        ('[run]\nport = "80"\n', "run.port", "1-65535"),
        ('[run]\ncommand = "./serve"\n', "run.command", "expected a list"),
        ("[run]\ncommand = []\n", "run.command", "non-empty list"),
        ('[run]\nhealth = "healthz"\n', "run.health", "like /healthz"),
        ('[run]\nmemory = "1g"\n', "run.memory", "above the server's limit"),
        ('[run]\nmemory = "1m"\n', "run.memory", "at least 6m"),
        ('[run]\nmemory = "lots"\n', "run.memory", "expected a size"),
        ("[run]\ncpus = 2\n", "run.cpus", "above the server's limit"),
        ("[run]\ncpus = 0\n", "run.cpus", "above 0"),
        ('[run]\nenv = { PREVU_URL = "x" }\n', "run.env.PREVU_URL", "set by prevu"),
        ('[run]\nenv = { "A-B" = "x" }\n', "run.env.A-B", "letters, digits"),
        ("[run]\nenv = { A = [1] }\n", "run.env.A", "expected a string"),
        ('[build]\ndockerfile = "../Dockerfile"\n', "build.dockerfile", "inside the repository"),
        ('[build]\ncontext = "/etc"\n', "build.context", "inside the repository"),
        ('[build]\ncontext = "a/../../b"\n', "build.context", "inside the repository"),
        ('[preview]\naccess = "secret"\n', "preview.access", '"private" or "public"'),
    ],
)
def test_invalid_files_name_key_and_reason(text: str, key: str, reason: str) -> None:
    """Each invalid value raises RepoConfigError with its dotted key and a reason."""
    with pytest.raises(RepoConfigError) as caught:
        parse_repo_config(text, Limits(memory=512 << 20, cpus=1.0))
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(caught.value).startswith(".prevu.toml: ")


def test_numbers_in_env_become_strings() -> None:
    """`env = { WORKERS = 2 }` is accepted as the string "2"."""
    assert parse_repo_config("[run]\nenv = { WORKERS = 2 }\n").env == {"WORKERS": "2"}
