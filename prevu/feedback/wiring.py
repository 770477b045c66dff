"""
Wiring of GitHub feedback for `build_previews`: the API client for the
configured credential, the masker of every secret prevu holds, the
publisher, and a service that subscribes it to the orchestrator's records.

Start-up says once what it does: feedback off without a credential, the App
chosen over a token when both are given, and a warning when `public_url` is
loopback (the links in comments would lead nowhere). A `private_key_file`
readable by group or others is refused (`ConfigError`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from prevu.adapters.github_api import AppKey, GithubApi, load_private_key
from prevu.config import Config
from prevu.feedback.memory import FeedbackMemory
from prevu.feedback.publisher import Publisher
from prevu.masking import Masker, masker
from prevu.ports import PreviewRecord, Store

log = Logger(namespace="prevu.feedback")


class FeedbackService(Service):
    """Subscribes the publisher to the orchestrator's records while running."""

    def __init__(
        self,
        publisher: Publisher,
        watch: Callable[[Callable[[PreviewRecord], None]], Callable[[], None]],
    ) -> None:
        self.publisher = publisher
        self.watch = watch
        self._unsubscribe: Callable[[], None] | None = None

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self.watch(self.publisher.on_record)
        self.publisher.start()

    def stopService(self) -> Any:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.publisher.stop()
        return None


def secrets_of(config: Config, extra: tuple[str, ...] = ()) -> Masker:
    """A masker of every secret value in `config` (plus `extra`, such as the App's key)."""
    auth_github = config.auth.github
    values = [
        config.github.token,
        config.github.webhook_secret,
        config.gitlab.token,
        config.gitlab.webhook_token,
        config.server.api_token,
        config.auth.cookie_secret,
        *config.auth.cookie_secret_previous,
        getattr(auth_github, "client_secret", None),
        *extra,
    ]
    return masker(value for value in values if isinstance(value, str))


def loopback(url_host: str) -> bool:
    """True for `localhost` and loopback addresses (links no reviewer can open)."""
    host = url_host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tail_reader(store: Store) -> Callable[[str, int], list[str]]:
    """The last lines of a preview's stored log, read page by page."""

    def read(preview: str, count: int) -> list[str]:
        lines: list[str] = []
        after = 0
        while True:
            page = store.read_logs(preview, after=after, limit=5000)
            if not page:
                return lines[-count:]
            lines = (lines + [entry.line for entry in page])[-count:]
            after = page[-1].seq

    return read


def github_api(config: Config, reactor: Any) -> GithubApi | None:
    """
    The GitHub API client of `config`: the App when `app_id` and
    `private_key_file` are set (said at start-up when a token is set too), else
    the token; None without either. Feedback and App clone tokens share it.

    :raises ConfigError: for an unreadable or group/other-readable App key.
    """
    github = config.github
    if github.app_id is not None and github.private_key_file is not None:
        pem = load_private_key(github.private_key_file)
        if github.token:
            log.info("GitHub calls use the GitHub App {app}, not the token", app=github.app_id)
        return GithubApi(reactor, reactor, github.api_url, app=AppKey(github.app_id, pem))
    if github.token:
        return GithubApi(reactor, reactor, github.api_url, token=github.token)
    return None


def build_feedback(
    config: Config,
    reactor: Any,
    watch: Callable[[Callable[[PreviewRecord], None]], Callable[[], None]],
    store: Store,
    api: GithubApi | None = None,
) -> FeedbackService | None:
    """
    The feedback service for `config`, or None when GitHub feedback is off
    (no credential, or `[github] feedback = []`). `api` replaces the client
    made from the config (tests and the bench point it at the fake).

    :raises ConfigError: for an unreadable or group/other-readable App key.
    """
    github = config.github
    if not github.credential:
        log.info("GitHub feedback off: no [github] token or GitHub App is configured")
        return None
    if not github.publishing:
        log.info("GitHub feedback off: [github] feedback is empty")
        return None
    if api is None:
        api = github_api(config, reactor)
    extra = (api.app.pem,) if api is not None and api.app is not None else ()
    if api is None:
        return None
    public_host = config.server.public_host
    if loopback(public_host):
        log.warn(
            "GitHub feedback is on but public_url {url} is loopback: links in pull requests "
            "will not open for reviewers",
            url=config.server.public_url,
        )

    def comment_logs(repo: str) -> bool | None:
        listed = config.repo(repo)
        return listed.comment_logs if listed is not None else None

    publisher = Publisher(
        api=api,
        clock=reactor,
        memory=FeedbackMemory.load(os.path.abspath(config.server.state_dir)),
        public_url=config.server.public_url,
        kinds=github.publishing,
        read_tail=tail_reader(store),
        mask=secrets_of(config, extra),
        comment_logs=comment_logs,
    )
    log.info("GitHub feedback on: {kinds}", kinds=", ".join(github.publishing))
    return FeedbackService(publisher, watch)
