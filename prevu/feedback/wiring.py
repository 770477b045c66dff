"""
Wiring of forge feedback and commands for `build_previews`: the API clients
for the configured credentials (GitHub token or App, GitLab token), the
masker of every secret prevu holds, one publisher per forge (sharing one
memory file), services that subscribe them to the orchestrator's records,
and the `/preview` command runner (`build_forges`).

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

from prevu.adapters.github_api import AppKey, ForgeApi, GithubApi, load_private_key
from prevu.adapters.gitlab_api import GitlabApi
from prevu.config import Config
from prevu.feedback.commands import CommandRunner, Facade, Replies
from prevu.feedback.memory import FeedbackMemory
from prevu.feedback.publisher import Publisher
from prevu.masking import Masker, masker
from prevu.ports import PreviewRecord, Store

log = Logger(namespace="prevu.feedback")


class FeedbackService(Service):
    """Subscribes the publisher (of one forge) to the orchestrator's records while running."""

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


def gitlab_api(config: Config, reactor: Any) -> GitlabApi | None:
    """The GitLab API client of `config` (`[gitlab] url` and `token`); None without a token."""
    gitlab = config.gitlab
    if not gitlab.token:
        return None
    return GitlabApi(reactor, reactor, gitlab.url, gitlab.token)


def _publisher(
    config: Config,
    reactor: Any,
    store: Store,
    api: ForgeApi,
    forge: str,
    kinds: tuple[str, ...],
    memory: FeedbackMemory | None,
    extra: tuple[str, ...] = (),
) -> Publisher:
    if loopback(config.server.public_host):
        log.warn(
            "{forge} feedback is on but public_url {url} is loopback: links in pull requests "
            "will not open for reviewers",
            forge=forge,
            url=config.server.public_url,
        )

    def comment_logs(repo: str) -> bool | None:
        listed = config.repo(repo)
        return listed.comment_logs if listed is not None else None

    if memory is None:
        memory = FeedbackMemory.load(os.path.abspath(config.server.state_dir))
    log.info("{forge} feedback on: {kinds}", forge=forge, kinds=", ".join(kinds))
    return Publisher(
        api=api,
        clock=reactor,
        memory=memory,
        public_url=config.server.public_url,
        kinds=kinds,
        read_tail=tail_reader(store),
        mask=secrets_of(config, extra),
        comment_logs=comment_logs,
        forge=forge,
    )


def build_feedback(
    config: Config,
    reactor: Any,
    watch: Callable[[Callable[[PreviewRecord], None]], Callable[[], None]],
    store: Store,
    api: GithubApi | None = None,
    memory: FeedbackMemory | None = None,
) -> FeedbackService | None:
    """
    The GitHub feedback service for `config`, or None when GitHub feedback
    is off (no credential, or `[github] feedback = []`). `api` replaces the
    client made from the config (tests and the bench point it at the fake);
    `memory` is shared with the other forges' publishers.

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
    if api is None:
        return None
    extra = (api.app.pem,) if api.app is not None else ()
    publisher = _publisher(config, reactor, store, api, "github", github.publishing, memory, extra)
    return FeedbackService(publisher, watch)


def build_gitlab_feedback(
    config: Config,
    reactor: Any,
    watch: Callable[[Callable[[PreviewRecord], None]], Callable[[], None]],
    store: Store,
    api: GitlabApi | None = None,
    memory: FeedbackMemory | None = None,
) -> FeedbackService | None:
    """
    The GitLab feedback service (MR note, commit statuses, environment), or
    None without `[gitlab] token` or with `[gitlab] feedback = []`. `api`
    replaces the client made from the config (tests point it at the fake).
    """
    gitlab = config.gitlab
    if not gitlab.credential:
        log.info("GitLab feedback off: no [gitlab] token is configured")
        return None
    if not gitlab.publishing:
        log.info("GitLab feedback off: [gitlab] feedback is empty")
        return None
    api = api or gitlab_api(config, reactor)
    if api is None:
        return None
    publisher = _publisher(config, reactor, store, api, "gitlab", gitlab.publishing, memory)
    return FeedbackService(publisher, watch)


def build_forges(
    config: Config,
    reactor: Any,
    orchestrator: Facade,
    watch: Callable[[Callable[[PreviewRecord], None]], Callable[[], None]],
    store: Store,
    github: GithubApi | None = None,
    gitlab: GitlabApi | None = None,
) -> tuple[list[FeedbackService], CommandRunner]:
    """
    Feedback of every forge (one shared memory) and the `/preview` command
    runner, whose permission checks use the same API clients. `github` and
    `gitlab` replace the clients made from the config.
    """
    github = github or github_api(config, reactor)
    gitlab = gitlab or gitlab_api(config, reactor)
    memory = FeedbackMemory.load(os.path.abspath(config.server.state_dir))
    services = [
        service
        for service in (
            build_feedback(config, reactor, watch, store, github, memory),
            build_gitlab_feedback(config, reactor, watch, store, gitlab, memory),
        )
        if service is not None
    ]
    apis: dict[str, ForgeApi] = {}
    if github is not None:
        apis["github"] = github
    if gitlab is not None:
        apis["gitlab"] = gitlab
    replies: dict[str, Replies] = {s.publisher.forge: s.publisher for s in services}
    runner = CommandRunner(orchestrator, apis, replies, store.fill_outcome)
    return services, runner
