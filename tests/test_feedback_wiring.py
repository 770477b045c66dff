"""Feedback's config keys and start-up: what is on, what is refused, what is said once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from prevu.config import FEEDBACK_KINDS, parse_config
from prevu.errors import ConfigError
from prevu.feedback.wiring import build_feedback, loopback, secrets_of, tail_reader
from prevu.store import SqliteStore
from tests.test_github_api import rsa_pem


@pytest.fixture
def said() -> Iterator[list[str]]:
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def config(tmp_path: Path, **github: Any) -> Any:
    return parse_config(
        {
            "server": {
                "state_dir": str(tmp_path / "state"),
                "public_url": "https://prevu.example.com",
            },
            "github": github,
        }
    )


def no_watch(callback: Any) -> Any:
    return lambda: None


def test_the_new_keys_parse_with_their_defaults(tmp_path: Path) -> None:
    parsed = parse_config(
        {
            "github": {
                "app_id": 12,
                "private_key_file": "/etc/prevu/app.pem",
                "feedback": ["status"],
            },
            "repos": [{"name": "acme/shop", "comment_logs": True}, {"name": "acme/web"}],
        }
    )
    assert parsed.github.app_id == 12 and parsed.github.private_key_file == "/etc/prevu/app.pem"
    assert parsed.github.publishing == ("status",)
    assert [r.comment_logs for r in parsed.repos] == [True, None]
    assert parse_config({"github": {"token": "t"}}).github.publishing == FEEDBACK_KINDS
    assert parse_config({}).github.publishing == ()  # no credential: nothing attempted


@pytest.mark.parametrize(
    ("github", "reason"),
    [
        ({"feedback": ["comment", "tweet"]}, "unknown kind 'tweet'"),
        ({"app_id": 1}, "needs both app_id and private_key_file"),
        ({"private_key_file": "/k.pem"}, "needs both app_id and private_key_file"),
        ({"app_id": 0, "private_key_file": "/k.pem"}, "at least 1"),
    ],
)
def test_bad_feedback_keys_are_refused(github: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_config({"github": github})


def test_without_a_credential_nothing_is_attempted_and_it_is_said(
    tmp_path: Path, said: list[str]
) -> None:
    store = SqliteStore(":memory:", Clock())
    assert build_feedback(config(tmp_path), Clock(), no_watch, store) is None
    assert any("feedback off" in line for line in said)


def test_the_app_is_preferred_to_a_token_and_start_up_says_so(
    tmp_path: Path, said: list[str]
) -> None:
    private, _ = rsa_pem()
    key = tmp_path / "app.pem"
    key.write_text(private)
    os.chmod(key, 0o600)
    store = SqliteStore(":memory:", Clock())
    service = build_feedback(
        config(tmp_path, token="ghp_x123456", app_id=7, private_key_file=str(key)),
        Clock(),
        no_watch,
        store,
    )
    assert service is not None and service.publisher.api.app is not None  # type: ignore[attr-defined]
    assert any("GitHub App 7, not the token" in line for line in said)
    assert "MIIE" not in service.publisher.mask(private.splitlines()[1])
    os.chmod(key, 0o640)
    with pytest.raises(ConfigError, match="readable by group or others"):
        build_feedback(
            config(tmp_path, app_id=7, private_key_file=str(key)), Clock(), no_watch, store
        )


def test_a_loopback_public_url_is_warned_about(tmp_path: Path, said: list[str]) -> None:
    parsed = parse_config(
        {
            "server": {"state_dir": str(tmp_path), "public_url": "http://127.0.0.1:8000"},
            "github": {"token": "ghp_x123456"},
        }
    )
    assert build_feedback(parsed, Clock(), no_watch, SqliteStore(":memory:", Clock())) is not None
    assert any("is loopback" in line for line in said)
    assert loopback("localhost") and loopback("::1") and not loopback("prevu.example.com")


def test_every_configured_secret_is_masked(tmp_path: Path) -> None:
    parsed = parse_config(
        {
            "server": {"api_token": "api-token-value"},
            "github": {"token": "ghp_tokenvalue", "webhook_secret": "hook-secret-value"},
        }
    )
    hide = secrets_of(parsed)
    assert hide("ghp_tokenvalue hook-secret-value api-token-value") == "*** *** ***"


def test_the_tail_is_the_last_lines_of_the_stored_log() -> None:
    store = SqliteStore(":memory:", Clock())
    for n in range(12_000):
        store.append_log("pr-1", "build", f"line {n}")
    assert tail_reader(store)("pr-1", 3) == ["line 11997", "line 11998", "line 11999"]
