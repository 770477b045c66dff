"""
The exceptions prevu raises on purpose.

    PrevuError                  root: anything prevu reports as a known failure
    ├── ConfigError             bad server config (file, key, reason)
    ├── RepoConfigError         bad `.prevu.toml` in a repository (key, reason)
    ├── WebhookError            a webhook request that cannot be accepted (status, reason)
    ├── AuthError               a login or session that is refused
    ├── GitError                the git CLI failed or timed out
    ├── DockerError             the Docker engine refused or failed an operation
    └── CertificateError        a certificate could not be obtained or loaded

Each carries fields, not just a message, so that callers (the web app, the CLI,
the orchestrator) can decide what to show.
"""

from __future__ import annotations

from attrs import frozen


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
class WebhookError(PrevuError):
    """A webhook delivery is refused with an HTTP status and a reason."""

    status: int
    reason: str

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


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


@frozen(auto_exc=True)
class ApiError(PrevuError):
    """An API request is refused or names nothing (status, reason): 401, 403, 404, 400."""

    status: int
    reason: str

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"
