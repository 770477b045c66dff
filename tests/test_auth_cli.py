"""The reviewer-access subcommands: hash-password, bypass-token, share."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted

from prevu.auth.passwords import verify_password
from prevu.auth.tokens import Signer, check_bypass, decode_share
from prevu.cli import main

SECRET = "c" * 40


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "prevu.toml"
    path.write_text(
        '[server]\ndomain = "preview.test"\npublic_url = "https://prevu.preview.test"\n'
        f'[auth]\ncookie_secret = "{SECRET}"\n'
    )
    return path


def test_hash_password_reads_stdin_and_prints_a_verifiable_hash() -> None:
    """`echo pw | prevu hash-password` prints a hash that verifies pw."""
    result = subprocess.run(
        [sys.executable, "-m", "prevu.cli", "hash-password"],
        input="s3cret pass\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    encoded = result.stdout.strip()
    assert verify_password("s3cret pass", encoded)
    assert not verify_password("s3cret pass\n", encoded)


def test_hash_password_refuses_an_empty_password() -> None:
    """An empty line is not a password."""
    result = subprocess.run(
        [sys.executable, "-m", "prevu.cli", "hash-password"],
        input="\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "empty" in result.stderr


def test_bypass_token_prints_the_repos_token(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`prevu bypass-token acme/shop` prints the token the gate accepts for that repo."""
    assert main(["bypass-token", "acme/shop", "--config", str(config)]) == 0
    token = capsys.readouterr().out.strip()
    assert check_bypass(Signer.from_secrets(SECRET), token, "acme/shop", "any")
    assert not check_bypass(Signer.from_secrets(SECRET), token, "acme/blog", "any")


def test_bypass_token_needs_a_cookie_secret(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without [auth] cookie_secret there is nothing to derive tokens from: exit 1."""
    path = tmp_path / "p.toml"
    path.write_text("")
    assert main(["bypass-token", "acme/shop", "--config", str(path)]) == 1
    assert "auth.cookie_secret" in capsys.readouterr().err


def test_share_signs_a_link_for_a_host(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`prevu share HOST --for 2h` prints a link for that host that expires in 2h."""
    assert main(["share", "pr-1.preview.test", "--for", "2h", "--config", str(config)]) == 0
    url = urlsplit(capsys.readouterr().out.strip())
    assert (url.scheme, url.netloc, url.path) == ("https", "pr-1.preview.test", "/")
    token = parse_qs(url.query)["prevu_share"][0]
    signer = Signer.from_secrets(SECRET)
    now = time.time()
    assert decode_share(signer, token, "pr-1.preview.test", now + 7000)
    assert not decode_share(signer, token, "pr-1.preview.test", now + 7300)


def test_share_by_id_without_token_explains(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A preview id goes through the API, which needs a token."""
    monkeypatch.delenv("PREVU_API_TOKEN", raising=False)
    assert main(["share", "acme-shop-1", "--config", str(config)]) == 1
    assert "api_token" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_share_by_id_asks_the_api(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`prevu share ID --api URL --token T` prints the link the control app signed."""
    from twisted.internet.threads import deferToThread

    from tests.support.timeouts import within
    from tests.test_auth_login import Browser, make_pages

    browser = Browser(make_pages(api_token="t" * 20), listen=True)
    try:
        argv = [
            "share",
            "p1",
            "--for",
            "1h",
            "--api",
            browser.base,
            "--token",
            "t" * 20,
            "--config",
            str(config),
        ]
        status = await within(deferToThread(main, argv), 30)
    finally:
        await browser.close()
    assert status == 0
    url = urlsplit(capsys.readouterr().out.strip())
    assert url.netloc == "pr-1.preview.test:8000" and "prevu_share=" in url.query
