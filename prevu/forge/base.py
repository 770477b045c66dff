"""
The `Forge` Protocol: everything that differs between forges, as pure values.

Pure core, in the manner of service-identity's `ServiceID` (`hazmat.py`): one
small Protocol, one thin module per forge (`github`, `gitlab`, `local`), and
one registry (`prevu.forge.registry`) that maps a forge's name to it. What a
forge contributes:

- its webhooks: where the secret is configured, how a delivery is verified
  (signature or token) and how it is parsed into a typed event;
- its clone credentials: the configured token and the HTTPS user name that
  goes with it (GitHub `x-access-token`, GitLab `oauth2`);
- its rules for the admission policy (can fork pull requests be approved?).

Errors are `RequestRefused(problem, reason)` with HTTP-free problems
(`malformed`, ...); the control app maps them to status codes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from attrs import field, frozen

from prevu.config import Config
from prevu.errors import RequestRefused
from prevu.forge.events import ForgeEvent, ForgeName


@frozen
class Delivery:
    """One webhook request without HTTP: its headers (lower-case names) and raw body."""

    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of header `name` (any case), or None."""
        return self.headers.get(name.lower())


@frozen
class Credentials:
    """
    What git sends to fetch a private repository over HTTPS: Basic
    `username:token`. The token is kept out of reprs.
    """

    username: str
    token: str = field(repr=False)


class Forge(Protocol):
    """
    One forge, as prevu's pure core sees it. Implementations are frozen
    values with no I/O; calls never block and may run on any thread.
    """

    @property
    def name(self) -> ForgeName:
        """The registry name, the `/webhooks/<name>` path segment and the `forge` label."""
        ...

    @property
    def clone_username(self) -> str:
        """The HTTPS user name that goes with the forge's token when git fetches."""
        ...

    def webhook_secret(self, config: Config) -> str | None:
        """The configured webhook secret (or token); None when this forge's webhooks are off."""
        ...

    def webhooks_off(self) -> str:
        """Why a delivery is refused when `webhook_secret` is None (names the config key)."""
        ...

    def verify(self, secret: str, delivery: Delivery) -> str | None:
        """None when `delivery` is authentic under `secret`; else why not (constant time)."""
        ...

    def parse(self, delivery: Delivery) -> ForgeEvent:
        """
        A verified delivery as a typed event. Raises RequestRefused with
        problem `malformed` when headers are missing or the payload is bad.
        """
        ...

    def clone_token(self, config: Config) -> str | None:
        """The token for fetching this forge's private repositories, if configured."""
        ...

    def fork_approval(self) -> str | None:
        """
        None when `forks = "approve"` can be honoured (a maintainer's
        `/preview approve` can be checked with the forge's permission API);
        else why such fork pull requests are denied.
        """
        ...


def load_json(body: bytes) -> Mapping[str, Any]:
    """The JSON object in `body`, or RequestRefused("malformed")."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestRefused("malformed", f"body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise RequestRefused("malformed", "body is not a JSON object")
    return data


def malformed(event: str, error: Exception) -> RequestRefused:
    """The refusal of a payload whose fields are missing or of the wrong type."""
    reason = f"missing field {error.args[0]!r}" if isinstance(error, KeyError) else str(error)
    return RequestRefused("malformed", f"malformed {event} payload: {reason}")


def require_headers(delivery: Delivery, names: tuple[str, ...], missing: str) -> tuple[str, ...]:
    """
    The values of headers `names`, in order; a name may list alternatives as
    `a|b` (the first present counts). RequestRefused("malformed", missing) when
    any is absent or empty.
    """
    values: list[str] = []
    for name in names:
        value = next((v for v in (delivery.header(n) for n in name.split("|")) if v), None)
        if value is None:
            raise RequestRefused("malformed", missing)
        values.append(value)
    return tuple(values)
