"""
prevu's instance id: which Docker objects are this prevu's (I/O edge, `state_dir`).

Every object prevu creates carries `prevu.instance=<id>` (SPEC §5, §6); the
reconcile only ever adopts or removes objects with its own id. The id is:

1. `[server] instance` when the config sets it (checked by `problem`);
2. else the one kept in `state_dir/instance`;
3. else made on first start and kept there: random (12 hex digits, 48 bits),
   so that two prevus whose `state_dir` has the same path (two containers
   each with `/var/lib/prevu`) no longer share an identity, as they did when
   the id was a hash of the absolute path (before this release).

Upgrades: a `state_dir` whose store already records previews was used by a
prevu that labelled its objects with the path hash. That id is then the one
written to `state_dir/instance`, once: the running previews stay this prevu's
(adopted, not taken for another instance's), and the id no longer depends on
the path from then on. A `state_dir` with no preview recorded gets a random id.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sqlite3

from attrs import frozen

from prevu.errors import PrevuError
from prevu.labels import instance_problem

INSTANCE_FILE = "instance"
STORE_FILE = "prevu.sqlite3"
"""The store `prevu.store.SqliteStore.in_state_dir` keeps (read here, never written)."""


@frozen(auto_exc=True)
class InstanceError(PrevuError):
    """The instance id in `path` cannot be used: names the file and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def problem(value: str) -> str | None:
    """Why `value` cannot be an instance id, or None (the rule: `prevu.labels.instance_problem`)."""
    return instance_problem(value)


def new_id() -> str:
    """A fresh random instance id: 12 lowercase hex digits."""
    return secrets.token_hex(6)


def legacy_id(state_dir: str) -> str:
    """
    The id older prevus derived from the absolute `state_dir`: the first 12 hex
    digits of its SHA-256 (as releases before the random id did).
    """
    return hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:12]


def has_previews(state_dir: str) -> bool:
    """True when `state_dir`'s store records at least one preview (read-only look)."""
    path = os.path.join(state_dir, STORE_FILE)
    if not os.path.isfile(path):
        return False
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return False
    try:
        return connection.execute("SELECT 1 FROM previews LIMIT 1").fetchone() is not None
    except sqlite3.Error:  # no table yet: a store made by this very start
        return False
    finally:
        connection.close()


def read(state_dir: str) -> str | None:
    """The id kept in `state_dir/instance`, None when there is none; InstanceError if bad."""
    path = os.path.join(state_dir, INSTANCE_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise InstanceError(path, f"cannot read the instance id: {error}") from None
    reason = problem(value)
    if reason:
        raise InstanceError(path, f"not an instance id ({reason}); fix or remove the file")
    return value


def load_or_create(state_dir: str, configured: str | None = None) -> str:
    """
    The instance id of the prevu keeping its state in `state_dir` (see the module docstring).

    `configured` is `[server] instance` (None when unset). Creates `state_dir`
    and `state_dir/instance` when needed; two prevus starting at once
    on one `state_dir` agree (the first file written wins). Raises InstanceError
    for a bad `configured` value or a file that holds no valid id.
    """
    if configured is not None:
        reason = problem(configured)
        if reason:
            raise InstanceError("[server] instance", reason)
        return configured
    kept = read(state_dir)
    if kept is not None:
        return kept
    os.makedirs(state_dir, exist_ok=True)
    value = legacy_id(state_dir) if has_previews(state_dir) else new_id()
    path = os.path.join(state_dir, INSTANCE_FILE)
    temporary = f"{path}.{new_id()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)  # whole file or nothing; fails if another start wrote it first
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: exclusive create instead
        with contextlib.suppress(FileExistsError):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(value + "\n")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    kept = read(state_dir)
    if kept is None:
        raise InstanceError(path, "the instance file vanished while it was being made")
    return kept
