"""The cookie secret prevu keeps in state_dir when the config gives none."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from prevu.secretfile import load_or_create_secret, read_secret


def test_secret_is_created_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert read_secret(str(state)) is None
    first = load_or_create_secret(str(state))
    assert len(first) >= 32
    assert stat.S_IMODE(os.stat(state / "cookie_secret").st_mode) == 0o600
    assert load_or_create_secret(str(state)) == first
    assert read_secret(str(state)) == first


def test_an_empty_secret_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "cookie_secret").write_text("\n")
    assert load_or_create_secret(str(tmp_path))
