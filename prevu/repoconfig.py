"""
`.prevu.toml`: a repository's own preview settings (SPEC §3).

Pure core. `parse_repo_config(text, limits)` validates the file into a frozen
`RepoSettings`; every problem is a `RepoConfigError(key, reason)`. Unknown
keys are errors (a typo must not silently fall back to a default), paths may
not leave the repository, and `memory`/`cpus` may lower the server's limits
but never raise them.
"""

from __future__ import annotations

import difflib
import posixpath
import re
import tomllib
from collections.abc import Mapping
from typing import Any, Literal

from attrs import field, frozen, validators

from prevu.errors import RepoConfigError
from prevu.units import parse_size

FILE_NAME = ".prevu.toml"
COMPOSE_FILES = ("compose.yaml", "docker-compose.yml")
"""The compose files tried, in order, when `[compose] file` is not given."""
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_COMPOSE_REFUSES = ("port", "command", "env", "memory", "cpus", "volumes")
"""`[run]` keys refused with `[compose]` (`volumes`: named volumes are declared in the file)."""
_STAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _str_map(value: Mapping[str, str]) -> Mapping[str, str]:
    return dict(value)


@frozen
class Limits:
    """The server's `[docker]` limits that a repository may only lower."""

    memory: int = 512 << 20
    cpus: float = 1.0


@frozen
class ComposeSettings:
    """
    The `[compose]` table: `file` (None: `compose.yaml`, then
    `docker-compose.yml`), the `service` served at the preview URL on
    `port`, `expose` (more services -> their ports, each at a host of its
    own) and `keep` (built services kept across pushes, like image-only ones).
    """

    service: str
    port: int
    file: str | None = None
    expose: Mapping[str, int] = field(factory=dict, converter=dict)
    keep: tuple[str, ...] = field(default=(), converter=tuple)

    @property
    def files(self) -> tuple[str, ...]:
        """The compose files to try, in order (relative to the repository root)."""
        return (self.file,) if self.file is not None else COMPOSE_FILES


@frozen
class RepoSettings:
    """A validated `.prevu.toml` (or the defaults when there is none)."""

    dockerfile: str = "Dockerfile"
    context: str = "."
    build_args: Mapping[str, str] = field(factory=dict, converter=_str_map)
    target: str | None = None
    """`[build] target`: the stage of a multi-stage Dockerfile to build (None: the last)."""
    port: int = field(default=8080, validator=[validators.ge(1), validators.le(65535)])
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(factory=dict, converter=_str_map)
    health: str | None = None
    memory: int | None = None
    cpus: float | None = None
    access: Literal["private", "public"] | None = None
    volumes: tuple[str, ...] = ()
    """`[run] volumes`: container paths that get a named volume of the preview (docs/data.md)."""
    on_push: tuple[str, ...] | None = None
    """`[data] on_push`: the command run on every start, before the route moves (docs/data.md)."""
    seed: tuple[str, ...] | None = None
    """`[data] seed`: the command run once per preview, after the first on_push (docs/data.md)."""
    compose: ComposeSettings | None = None
    """`[compose]`: the preview runs a Compose file (None: a single Dockerfile)."""

    @property
    def dockerfile_in_context(self) -> str:
        """The Dockerfile path relative to the build context, as `docker build` wants it."""
        return posixpath.relpath(posixpath.join(".", self.dockerfile), self.context)


def parse_repo_config(text: str | None, limits: Limits = Limits()) -> RepoSettings:
    """
    Validate the text of `.prevu.toml`; None (no file) gives the defaults.

    Raises RepoConfigError naming the dotted key and the reason.
    """
    if text is None:
        return RepoSettings()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RepoConfigError("", f"invalid TOML: {error}") from None
    _only(data, "", ("build", "run", "preview", "data", "compose"))
    build = _table(data, "build")
    run = _table(data, "run")
    preview = _table(data, "preview")
    _only(build, "build.", ("dockerfile", "context", "args", "target"))
    _only(run, "run.", ("port", "command", "env", "health", "memory", "cpus", "volumes"))
    _only(preview, "preview.", ("access",))
    on_push, seed = _data(_table(data, "data"))
    return RepoSettings(
        dockerfile=_path(build, "build.dockerfile", "Dockerfile"),
        context=_path(build, "build.context", "."),
        build_args=_string_map(build, "build.args"),
        target=_target(build),
        port=_port(run),
        command=_command(run),
        env=_string_map(run, "run.env"),
        health=_health(run),
        memory=_memory(run, limits),
        cpus=_cpus(run, limits),
        access=_access(preview),
        volumes=_volumes(run),
        on_push=on_push,
        seed=seed,
        compose=_compose(data),
    )


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise RepoConfigError(key, f"expected a table, got {value!r}")
    return value


def _only(data: Mapping[str, Any], prefix: str, known: tuple[str, ...]) -> None:
    """
    Refuse a key of `data` not in `known`, naming the nearest known one as the
    server config does (difflib's ratio >= 0.6, prevu.config.reader.unknown_key).
    """
    for name in data:
        if name not in known:
            close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise RepoConfigError(
                f"{prefix}{name}", f"unknown key{hint} (known: {', '.join(known)})"
            )


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _path(table: Mapping[str, Any], key: str, default: str) -> str:
    value = table.get(_leaf(key), default)
    if not isinstance(value, str) or not value.strip():
        raise RepoConfigError(key, f"expected a relative path, got {value!r}")
    normal = posixpath.normpath(value.strip())
    if normal.startswith("/") or normal == ".." or normal.startswith("../") or "\0" in normal:
        raise RepoConfigError(key, f"must stay inside the repository, got {value!r}")
    return normal


def _string_map(table: Mapping[str, Any], key: str) -> dict[str, str]:
    value = table.get(_leaf(key), {})
    if not isinstance(value, dict):
        raise RepoConfigError(key, f"expected a table of strings, got {value!r}")
    result: dict[str, str] = {}
    for name, item in value.items():
        if not _ENV_NAME.match(name):
            raise RepoConfigError(f"{key}.{name}", "names use letters, digits and _ only")
        if name.upper().startswith("PREVU_"):
            raise RepoConfigError(f"{key}.{name}", "PREVU_* names are set by prevu")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise RepoConfigError(f"{key}.{name}", f"expected a string, got {item!r}")
        result[name] = str(item)
    return result


def _target(build: Mapping[str, Any]) -> str | None:
    value = build.get("target")
    if value is None:
        return None
    if not isinstance(value, str) or not _STAGE.match(value):
        raise RepoConfigError("build.target", f"expected a stage name like 'final', got {value!r}")
    return value


def _port(run: Mapping[str, Any]) -> int:
    value = run.get("port", 8080)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise RepoConfigError("run.port", f"expected a port number 1-65535, got {value!r}")
    return value


def _command(run: Mapping[str, Any]) -> tuple[str, ...] | None:
    value = run.get("command")
    if value is None:
        return None
    if isinstance(value, str):
        raise RepoConfigError("run.command", 'expected a list like ["./serve", "--port", "8080"]')
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RepoConfigError("run.command", f"expected a non-empty list of strings, got {value!r}")
    return tuple(value)


def _health(run: Mapping[str, Any]) -> str | None:
    value = run.get("health")
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in " \r\n"):
        raise RepoConfigError("run.health", f"expected a path like /healthz, got {value!r}")
    return value


def _memory(run: Mapping[str, Any], limits: Limits) -> int | None:
    value = run.get("memory")
    if value is None:
        return None
    try:
        size = parse_size(value)
    except ValueError as error:
        raise RepoConfigError("run.memory", str(error)) from None
    if size < 6 << 20:
        raise RepoConfigError("run.memory", "must be at least 6m (Docker's minimum)")
    if size > limits.memory:
        raise RepoConfigError(
            "run.memory", f"{value} is above the server's limit of {limits.memory >> 20}m"
        )
    return size


def _cpus(run: Mapping[str, Any], limits: Limits) -> float | None:
    value = run.get("cpus")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise RepoConfigError("run.cpus", f"expected a number above 0, got {value!r}")
    if value > limits.cpus:
        raise RepoConfigError(
            "run.cpus", f"{value:g} is above the server's limit of {limits.cpus:g}"
        )
    return float(value)


def _access(preview: Mapping[str, Any]) -> Literal["private", "public"] | None:
    value = preview.get("access")
    if value is None:
        return None
    if value == "private":
        return "private"
    if value == "public":
        return "public"
    raise RepoConfigError("preview.access", f'must be "private" or "public", got {value!r}')


# --- [data] and [run] volumes (issue 18, docs/data.md) ---------------------------------

MAX_VOLUMES = 16
_VOLUME_PATH = re.compile(r"^/[A-Za-z0-9_.@+=/-]+$")


def _volumes(run: Mapping[str, Any]) -> tuple[str, ...]:
    """`[run] volumes`: distinct absolute container paths (normalized), at most 16."""
    value = run.get("volumes", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RepoConfigError("run.volumes", f'expected a list like ["/data"], got {value!r}')
    if len(value) > MAX_VOLUMES:
        raise RepoConfigError("run.volumes", f"at most {MAX_VOLUMES} volumes, got {len(value)}")
    paths: list[str] = []
    for item in value:
        path = posixpath.normpath(item) if item.startswith("/") else item
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if not _VOLUME_PATH.match(path) or path == "/" or "/../" in f"{path}/":
            raise RepoConfigError(
                "run.volumes", f"expected an absolute container path like /data, got {item!r}"
            )
        if path in paths:
            raise RepoConfigError("run.volumes", f"{item!r} is listed twice")
        paths.append(path)
    return tuple(paths)


def _data(data: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """`[data]`: the `on_push` and `seed` commands (argv lists), each optional."""
    _only(data, "data.", ("on_push", "seed"))
    return _argv(data, "data.on_push"), _argv(data, "data.seed")


def _argv(table: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = table.get(_leaf(key))
    if value is None:
        return None
    if isinstance(value, str):
        raise RepoConfigError(key, 'expected a list like ["sh", "-c", "./migrate && ./check"]')
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RepoConfigError(key, f"expected a non-empty list of strings, got {value!r}")
    if not value[0].strip() or any("\0" in v for v in value):
        raise RepoConfigError(key, f"expected a program to run first, got {value!r}")
    return tuple(value)


def _compose(data: Mapping[str, Any]) -> ComposeSettings | None:
    """`[compose]` (issue 17): with it, `[build]` and `[run] port/command/env/memory/cpus` go."""
    if "compose" not in data:
        return None
    table = _table(data, "compose")
    _only(table, "compose.", ("file", "service", "port", "expose", "keep"))
    if "build" in data:
        raise RepoConfigError("build", "not with [compose]: the compose file says how to build")
    run = _table(data, "run")
    for key in _COMPOSE_REFUSES:
        if key in run:
            raise RepoConfigError(f"run.{key}", "not with [compose]: say it in the compose file")
    service = table.get("service")
    if not isinstance(service, str) or not _SERVICE.match(service):
        raise RepoConfigError("compose.service", f"expected a service name, got {service!r}")
    port = table.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise RepoConfigError("compose.port", f"expected a port number 1-65535, got {port!r}")
    expose = table.get("expose", {})
    if not isinstance(expose, dict):
        raise RepoConfigError("compose.expose", "expected a table like { api = 3000 }")
    for name, value in expose.items():
        if not _SERVICE.match(name) or name == service:
            raise RepoConfigError(f"compose.expose.{name}", "expected another service's name")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise RepoConfigError(f"compose.expose.{name}", f"expected a port, got {value!r}")
    keep = table.get("keep", [])
    if not isinstance(keep, list) or not all(
        isinstance(k, str) and _SERVICE.match(k) for k in keep
    ):
        raise RepoConfigError("compose.keep", f"expected a list of service names, got {keep!r}")
    file = _path(table, "compose.file", "") if "file" in table else None
    return ComposeSettings(service=service, port=port, file=file, expose=expose, keep=keep)
