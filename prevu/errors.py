"""
The exceptions prevu raises on purpose.

    PrevuError                  root: anything prevu reports as a known failure
    ├── ConfigError             bad server config (file, key, reason)
    ├── RepoConfigError         bad `.prevu.toml` in a repository (key, reason)
    ├── EndpointError           an unparsable Twisted endpoint string (description, reason)
    ├── RequestRefused          a control-app request (API, webhook) is refused (problem, reason)
    ├── AuthError               a login or session that is refused
    ├── GitError                the git CLI failed or timed out
    ├── DockerError             the Docker engine refused or failed an operation
    └── CertificateError        a certificate could not be obtained or loaded

Each carries fields, not just a message, so that callers (the web app, the CLI,
the orchestrator) can decide what to show.
"""

from __future__ import annotations

from typing import Literal

from attrs import frozen

Problem = Literal[
    "malformed",
    "unauthenticated",
    "forbidden",
    "not_found",
    "conflict",
    "too_large",
    "throttled",
    "unavailable",
    "upstream_failed",
]
"""
Why a request is refused, independent of HTTP: the control app's error
funnel (`prevu/control/app.py`, `STATUS`) is the one place that maps each
problem to a status code.

- `malformed`: the request (body, headers, parameters) cannot be understood;
- `unauthenticated`: no valid credentials (signature, token, password);
- `forbidden`: valid or not, this is not allowed (feature off, CSRF, no access);
- `not_found`: names nothing; `conflict`: not in this state;
- `too_large`: the body is over the limit; `throttled`: too many attempts;
- `unavailable`: the feature is not wired on this server;
- `upstream_failed`: a service prevu called (the forge) failed.
"""


class PrevuError(Exception):
    """Root of all errors prevu raises on purpose."""


@frozen(auto_exc=True)
class ConfigError(PrevuError):
    """A server config value is invalid: names the file, the key and why."""

    path: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.reason}"


@frozen(auto_exc=True)
class RepoConfigError(PrevuError):
    """A repository's `.prevu.toml` is invalid."""

    key: str
    reason: str

    def __str__(self) -> str:
        return (
            f".prevu.toml: {self.key}: {self.reason}" if self.key else f".prevu.toml: {self.reason}"
        )


@frozen(auto_exc=True)
class EndpointError(PrevuError):
    """A Twisted server endpoint string is invalid (`prevu.endpoints.parse_endpoint`)."""

    description: str
    reason: str

    def __str__(self) -> str:
        return f"endpoint {self.description!r}: {self.reason}"


@frozen(auto_exc=True)
class RequestRefused(PrevuError):
    """
    A request to the control app (API, webhook, share link) is refused:
    `problem` says why in HTTP-free terms, `reason` says it to a person.
    The control app turns it into a JSON answer with the status of `problem`.
    """

    problem: Problem
    reason: str

    def __str__(self) -> str:
        return f"{self.problem}: {self.reason}"


class AuthError(PrevuError):
    """A login attempt or session is refused."""


@frozen(auto_exc=True)
class GitError(PrevuError):
    """A git command failed."""

    command: str
    reason: str

    def __str__(self) -> str:
        return f"git {self.command}: {self.reason}"


@frozen(auto_exc=True)
class DockerError(PrevuError):
    """A Docker operation failed."""

    operation: str
    reason: str

    def __str__(self) -> str:
        return f"docker {self.operation}: {self.reason}"


@frozen(auto_exc=True)
class CertificateError(PrevuError):
    """A certificate could not be issued, renewed or loaded."""

    host: str
    reason: str

    def __str__(self) -> str:
        return f"certificate for {self.host}: {self.reason}"


@frozen(auto_exc=True)
class DockerUnavailable(DockerError):
    """The Docker engine cannot be reached at all (down or restarting): retry later."""
