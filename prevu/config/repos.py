"""
The `[[repos]]` entries: which repositories are served, and how.

Pure core: values and their reader.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Literal

from attrs import evolve, field, frozen

from prevu.config.reader import Table
from prevu.routing import Access


@frozen
class RepoConfig:
    """One `[[repos]]` entry: which repository is served, and how."""

    name: str
    access: Access = "private"
    trigger: Literal["auto", "label"] = "auto"
    forks: Literal["approve", "deny", "allow"] = "approve"
    comment_logs: bool | None = None
    """Log tail in PR comments: None means only when the repository is private on the forge."""
    env: Mapping[str, str] = field(factory=dict)
    """`env = {NAME = "value"}`: given to the preview's container at run time."""
    secrets: Mapping[str, str] = field(factory=dict, repr=False)
    """`secrets = {NAME = "…", NAME_file = "…"}`: values (files read at load), run time only."""
    build_secrets: Mapping[str, str] = field(factory=dict, repr=False)
    """`build_secrets = {id_file = "…"}`: BuildKit secret id -> absolute file path."""
    build_secret_values: tuple[str, ...] = field(default=(), repr=False)
    """The contents of the build secrets' files (for log masking only)."""
    noindex: bool = True
    """`X-Robots-Tag: noindex` on every response of this repository's previews (docs/proxy.md)."""


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _names(t: Table, key: str) -> dict[str, object]:
    value = t.raw(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise t.error(key, f"expected a table like {{ NAME = \"value\" }}, got {value!r}")
    return dict(value)


def _string(t: Table, key: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise t.error(key, f"expected a string, got {value!r}")
    return str(value)


def _env_name(t: Table, key: str, name: str) -> None:
    if not _NAME.match(name):
        raise t.error(key, f"{name!r}: names use letters, digits and _ only")
    if name.upper().startswith("PREVU_"):
        raise t.error(key, f"{name!r}: PREVU_* names are set by prevu")


def _path(t: Table, name: str) -> str:
    return name if posixpath.isabs(name) else posixpath.join(posixpath.dirname(t.path), name)


def _read(t: Table, key: str, name: str) -> str:
    try:
        value = t.read_file(name)
    except OSError as error:
        raise t.error(key, f"cannot read {name}: {error.strerror or error}") from None
    if not value:
        raise t.error(key, f"{name} is empty")
    return value


def parse_env(t: Table) -> dict[str, str]:
    """`env = { NAME = "value" }`: environment names and string values."""
    env: dict[str, str] = {}
    for name, value in _names(t, "env").items():
        _env_name(t, f"env.{name}", name)
        env[name] = _string(t, f"env.{name}", value)
    return env


def parse_secrets(t: Table) -> dict[str, str]:
    """`secrets = { NAME = "…", NAME_file = "path" }`: files read now."""
    secrets: dict[str, str] = {}
    for key, value in _names(t, "secrets").items():
        text = _string(t, f"secrets.{key}", value)
        if key.endswith("_file"):
            name = key[: -len("_file")]
            _env_name(t, f"secrets.{key}", name)
            if name in secrets:
                raise t.error(f"secrets.{key}", f"give either {name} or {key}, not both")
            content = _read(t, f"secrets.{key}", text)
            secrets[name] = content[:-1] if content.endswith("\n") else content
        else:
            _env_name(t, f"secrets.{key}", key)
            if key in secrets:
                raise t.error(f"secrets.{key}", f"give either {key} or {key}_file, not both")
            secrets[key] = text
    return secrets


def parse_build_secrets(t: Table) -> tuple[dict[str, str], tuple[str, ...]]:
    """`build_secrets = { id_file = "path" }`: BuildKit secret id -> path, and the contents."""
    paths: dict[str, str] = {}
    values: list[str] = []
    for key, value in _names(t, "build_secrets").items():
        where = f"build_secrets.{key}"
        if not key.endswith("_file"):
            raise t.error(where, "give the secret as a file: <id>_file = \"/path\"")
        identifier = key[: -len("_file")]
        if not _SECRET_ID.match(identifier):
            raise t.error(where, f"{identifier!r}: ids use letters, digits, '.', '_' and '-'")
        path = _path(t, _string(t, where, value))
        content = _read(t, where, path)
        paths[identifier] = path
        values.append(content.strip("\n"))
    return paths, tuple(v for v in values if v)


def parse_repo(t: Table) -> RepoConfig:
    """
    One `[[repos]]` entry; `name` is a forge path like owner/name.

    `env`, `secrets` and `build_secrets` are read here: secret files now
    (a missing or empty file is a ConfigError naming the key).
    """
    config = RepoConfig(
        name=t.required("name").strip("/"),
        access=t.choice("access", "private", ("private", "public")),
        trigger=t.choice("trigger", "auto", ("auto", "label")),
        forks=t.choice("forks", "approve", ("approve", "deny", "allow")),
        comment_logs=t.boolean("comment_logs", False) if t.has("comment_logs") else None,
        env=parse_env(t),
        secrets=parse_secrets(t),
        noindex=t.boolean("noindex", True),
    )
    build_secrets, build_values = parse_build_secrets(t)
    config = evolve(config, build_secrets=build_secrets, build_secret_values=build_values)
    if "/" not in config.name:
        raise t.error("name", f"expected a forge path like owner/name, got {config.name!r}")
    t.finish()
    return config
