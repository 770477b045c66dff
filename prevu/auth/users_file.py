"""The users file on disk, read again when it changes (adding a user needs no restart)."""

from __future__ import annotations

import os

from attrs import define, field
from twisted.logger import Logger

from prevu.auth.passwords import Users, parse_users
from prevu.errors import ConfigError

log = Logger()


@define
class UsersFile:
    """`[auth] users_file`: loaded at start, reloaded when its mtime or size changes."""

    path: str | None
    _users: Users = field(factory=Users)
    _stamp: tuple[float, int] | None = None

    def __attrs_post_init__(self) -> None:
        if self.path is not None:
            self._users = self._read()
            self._stamp = self._stat()

    def current(self) -> Users:
        """The users now; a broken edit keeps the previous users and is logged."""
        if self.path is None:
            return self._users
        stamp = self._stat()
        if stamp != self._stamp:
            try:
                self._users = self._read()
            except ConfigError as error:
                log.error("users file not reloaded: {error}", error=str(error))
            self._stamp = stamp
        return self._users

    def _stat(self) -> tuple[float, int] | None:
        assert self.path is not None
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime, info.st_size)

    def _read(self) -> Users:
        assert self.path is not None
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise ConfigError(self.path, "-", f"cannot read: {error.strerror}") from None
        return parse_users(text, self.path)
