"""A secret prevu makes itself and keeps in `state_dir` (I/O edge)."""

from __future__ import annotations

import os
import secrets

COOKIE_SECRET_FILE = "cookie_secret"
API_TOKEN_FILE = "api_token"


def load_or_create_secret(state_dir: str, name: str = COOKIE_SECRET_FILE) -> str:
    """
    The secret stored in `state_dir/name`, created (mode 0600) on first use.

    Without `[auth] cookie_secret`, sessions, share links and bypass tokens are
    signed with this one, so they survive a restart; without `[server]
    api_token`, the API takes the one in `api_token`, which the `prevu` CLI
    reads on the same machine.
    """
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, name)
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(48)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


def read_secret(state_dir: str, name: str = COOKIE_SECRET_FILE) -> str | None:
    """The stored secret, or None when prevu has not made one yet."""
    try:
        with open(os.path.join(state_dir, name), encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None
