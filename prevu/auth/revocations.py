"""Logged-out sessions kept in `state_dir` so that a restart does not revive them (I/O edge)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from twisted.logger import Logger

log = Logger()

FILE_NAME = "revoked_sessions.json"


def load_revoked(state_dir: str, now: float) -> dict[str, float]:
    """Session id -> expiry of the logouts that have not expired yet."""
    path = os.path.join(state_dir, FILE_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warn("ignoring unreadable {path}: {error}", path=path, error=str(error))
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(sid): float(expires)
        for sid, expires in data.items()
        if isinstance(expires, int | float) and expires > now
    }


def saver(state_dir: str) -> RevocationSaver:
    """What Authority.on_revoke calls: writes the file atomically, mode 0600."""
    return RevocationSaver(os.path.join(state_dir, FILE_NAME))


class RevocationSaver:
    """Writes the revoked sessions to one file (logouts are rare: a write each is fine)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, revoked: Mapping[str, float]) -> None:
        temporary = f"{self.path}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(dict(revoked), handle)
            os.replace(temporary, self.path)
        except OSError as error:
            log.warn("could not save logouts to {path}: {error}", path=self.path, error=str(error))
