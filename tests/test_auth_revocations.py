"""Logouts survive a restart: the revoked session ids are kept in state_dir."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from prevu.auth.authority import Authority
from prevu.auth.revocations import FILE_NAME, load_revoked, saver
from prevu.auth.rules import AuthSettings
from prevu.auth.tokens import Signer, encode_session

NOW = 1_700_000_000.0


def authority(state: Path) -> Authority:
    made = Authority(
        settings=AuthSettings(public_url="http://prevu.test", domain="test", session_ttl=3600),
        signer=Signer.from_secrets("k" * 32),
    )
    made.revoked = load_revoked(str(state), NOW)
    made.on_revoke = saver(str(state))
    return made


def test_a_logged_out_session_stays_out_after_a_restart(tmp_path: Path) -> None:
    first = authority(tmp_path)
    session = first.new_session("alice", NOW)
    cookie = encode_session(first.signer, session)
    assert first.session([cookie], NOW) is not None
    first.revoke(session, NOW)
    assert stat.S_IMODE(os.stat(tmp_path / FILE_NAME).st_mode) == 0o600
    restarted = authority(tmp_path)
    assert restarted.session([cookie], NOW + 10) is None


def test_expired_revocations_are_dropped_and_junk_is_ignored(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text('{"old": 1.0, "live": 1700000999.0, "bad": "x"}')
    assert load_revoked(str(tmp_path), NOW) == {"live": 1700000999.0}
    (tmp_path / FILE_NAME).write_text("not json")
    assert load_revoked(str(tmp_path), NOW) == {}
    assert load_revoked(str(tmp_path / "missing"), NOW) == {}
