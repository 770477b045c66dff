"""
The shared TOML table reader of the config package.

Pure core: `Table` wraps one TOML table with typed getters that raise
`ConfigError(path, key, reason)` and the unknown-key check (`finish`); the
one I/O it can do is through the `read_file` function it is given (the
`*_file` secrets), which `load_config` supplies.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prevu.endpoints import parse_endpoint
from prevu.errors import ConfigError, EndpointError
from prevu.units import parse_duration, parse_size

T = TypeVar("T")
EMBEDDED = "<embedded defaults>"


def no_files(name: str) -> str:
    """The `read_file` of `parse_config` without a file system: every read fails."""
    raise OSError(f"no file reader to read {name}")


class Table:
    """A TOML table being read: typed getters that raise ConfigError, unknown-key check."""

    def __init__(
        self, data: Mapping[str, Any], path: str, prefix: str, read_file: Callable[[str], str]
    ) -> None:
        self.data = data
        self.path = path
        self.prefix = prefix
        self.read_file = read_file
        self.seen: set[str] = set()
        self.known: set[str] = set()
        """Every key asked for, present or not: the candidates of a "did you mean"."""

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), reason)

    def has(self, name: str) -> bool:
        self.known.add(name)
        return name in self.data

    def raw(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name)

    def typed(self, name: str, kind: type[T] | tuple[type, ...], default: T, what: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) and kind is not bool:
            raise self.error(name, f"expected {what}, got {value!r}")
        if not isinstance(value, kind):
            raise self.error(name, f"expected {what}, got {type(value).__name__} {value!r}")
        return value  # type: ignore[return-value]

    def string(self, name: str, default: str) -> str:
        return self.typed(name, str, default, "a string")

    def optional_string(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        return self.typed(name, bool, default, "true or false")

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.typed(name, int, default, "a whole number")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        value = float(self.typed(name, (int, float), default, "a number"))
        if value <= minimum and self.has(name):
            raise self.error(name, f"must be more than {minimum:g}, got {value:g}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> Any:
        value = self.string(name, default)
        if value not in choices:
            options = ", ".join(f'"{c}"' for c in choices)
            raise self.error(name, f"must be one of {options}, got {value!r}")
        return value

    def duration(self, name: str, default: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as error:
            raise self.error(name, str(error)) from None

    def size(self, name: str, default: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse_size(value)
        except ValueError as error:
            raise self.error(name, str(error)) from None

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def endpoint(self, name: str, default: str | None) -> Any:
        value = self.optional_string(name)
        if value is None:
            return default
        try:
            parse_endpoint(value)
        except EndpointError as error:
            reason = f"invalid Twisted endpoint string {value!r}: {error.reason}"
            raise self.error(name, reason) from None
        return value

    def url(self, name: str, default: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
        value = self.string(name, default)
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise self.error(name, f"expected an {'/'.join(schemes)} URL, got {value!r}")
        try:
            valid = parts.port != 0  # the property raises ValueError above 65535
        except ValueError:
            valid = False
        if not valid:
            port = parts.netloc.rpartition(":")[2]
            raise self.error(name, f"port {port!r} is not a port (1-65535) in {value!r}")
        return value

    def address(self, name: str) -> str:
        """
        A required `host`, `host:port` or `[v6]:port` (port 1-65535), returned
        as written; the reader of the address supplies the default port.
        """
        value = self.required(name)
        if value.startswith("["):
            host, bracket, rest = value[1:].partition("]")
            port = rest.removeprefix(":") if rest.startswith(":") else None
            bad_shape = not bracket or (rest and port is None)
        else:
            host, colon, port_text = value.rpartition(":")
            host, port = (host, port_text) if colon and ":" not in host else (value, None)
            bad_shape = False
        if bad_shape or not host:
            raise self.error(name, f"expected host, host:port or [v6]:port, got {value!r}")
        if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise self.error(name, f"port {port!r} is not a port (1-65535) in {value!r}")
        return value

    def secret(self, name: str) -> str | None:
        """A secret given inline as `name` or as a file path in `name_file`."""
        inline = self.optional_string(name)
        file_key = f"{name}_file"
        file_name = self.optional_string(file_key)
        if inline is not None and file_name is not None:
            raise self.error(name, f"give either {name} or {file_key}, not both")
        if file_name is None:
            return inline
        try:
            value = self.read_file(file_name)
        except OSError as error:
            reason = error.strerror or str(error)
            raise self.error(file_key, f"cannot read {file_name}: {reason}") from None
        if not value:
            raise self.error(file_key, f"{file_name} is empty")
        return value

    def secrets(self, name: str) -> tuple[str, ...]:
        """A list of secrets, inline as `name` or one per line in `name_file`."""
        inline = self.strings(name)
        file_key = f"{name}_file"
        file_name = self.optional_string(file_key)
        if file_name is None:
            return inline
        try:
            lines = self.read_file(file_name).splitlines()
        except OSError as error:
            reason = error.strerror or str(error)
            raise self.error(file_key, f"cannot read {file_name}: {reason}") from None
        return inline + tuple(line.strip() for line in lines if line.strip())

    def table(self, name: str) -> Table:
        value = self.raw(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, got {value!r}")
        return Table(value, self.path, self.key(name) + ".", self.read_file)

    def optional_table(self, name: str) -> Table | None:
        return self.table(name) if self.has(name) else None

    def array_of_tables(self, name: str) -> list[Table]:
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(name, f"expected [[{name}]] tables, got {value!r}")
        return [
            Table(v, self.path, f"{self.key(name)}[{i}].", self.read_file)
            for i, v in enumerate(value)
        ]

    def required(self, name: str) -> str:
        value = self.optional_string(name)
        if not value:
            raise self.error(name, "is required")
        return value

    def finish(self) -> None:
        """Refuse the first key nobody asked for, suggesting the nearest known one."""
        known = sorted(self.seen | self.known)
        for name in self.data:
            if name not in self.seen:
                raise self.error(name, unknown_key(name, known))


def unknown_key(name: str, known: list[str]) -> str:
    """
    The reason for an unknown key: "unknown key", plus `did you mean "x"?` when
    a known key is close (difflib's ratio >= 0.6, case folded).
    """
    folded = {key.lower(): key for key in known}
    close = difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.6)
    return f'unknown key; did you mean "{folded[close[0]]}"?' if close else "unknown key"
