"""
The dashboard over a real deploy: real Docker engine, real git, the SQLite
store, the real orchestrator, the control app with the login on 127.0.0.1, and
Debian's headless Chromium. The list follows a real build from building to
running without a reload; the preview page streams a redeploy's lines as they
are stored and the container's output as it is written; destroy from the page
leaves nothing in the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from attrs import evolve
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from prevu.config import AuthConfig
from prevu.control.api import PreviewsApi
from prevu.control.app import ControlApp
from prevu.control.limits import control_site
from prevu.forge import policy
from prevu.forge.events import PullRequest
from tests.support.dashboard_app import PASSWORD, StaticUsers, free_port
from tests.support.git_repos import ForgeRepo
from tests.support.timeouts import within
from tests.test_dashboard_browser import CHROMIUM, log_in, on_reactor, status_is
from tests.test_previews_e2e import REPO, SLOW_DOCKERFILE, Stack, push, site_files

pytestmark = pytest.mark.docker

PREVIEW = "pr-1-hello-world"
# busybox httpd -v logs each request to stderr: the container's output grows with traffic.
VERBOSE_DOCKERFILE = SLOW_DOCKERFILE.replace(
    'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]',
    'CMD ["/bin/busybox", "sh", "-c", "echo serving the preview; '
    'exec /bin/busybox httpd -f -v -p 8080 -h /www"]',
)


def control_for(stack: Stack, port: int) -> Any:
    """The control app with the login (alice is an admin) in front of `stack`'s orchestrator."""
    from prevu.auth.authority import Authority
    from prevu.auth.passwords import hash_password
    from prevu.auth.rules import AuthSettings
    from prevu.auth.tokens import Signer
    from prevu.control.login import LoginPages

    public = f"http://127.0.0.1:{port}"
    config = evolve(
        stack.config,
        server=evolve(stack.config.server, public_url=public),
        auth=AuthConfig(admins=("alice",)),
    )
    login = LoginPages(
        authority=Authority(AuthSettings(public_url=public, domain="localhost"),
                            Signer.from_secrets("k" * 32)),
        clock=stack.reactor,
        users=StaticUsers(f"alice:{hash_password(PASSWORD, n=1 << 10)}\n"),
        login_configured=True,
    )
    api = PreviewsApi(config, stack.orchestrator, stack.store, stack.docker)
    app = ControlApp(config=config, login=login, previews=api)
    return stack.reactor.listenTCP(port, control_site(app.resource()), interface="127.0.0.1")


def deferred_get(stack: Stack) -> Any:
    """A request to the preview through the proxy (a line in its httpd's output)."""
    return Deferred.fromCoroutine(stack.get("pr-1-hello-world.localhost"))


def journey(reactor: Any, stack: Stack, base: str, deploy: Any) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            on_reactor(reactor, deploy)
            page = log_in(browser.new_context(), base, "alice")
            page.set_default_timeout(60_000)
            status_is(page, PREVIEW, "building")
            page.evaluate("window.notReloaded = true")
            status_is(page, PREVIEW, "running")
            seen["list_no_reload"] = page.evaluate("window.notReloaded === true")

            page.goto(f"{base}/previews/{PREVIEW}")
            page.evaluate("window.notReloaded = true")
            seen["before"] = page.inner_text("#log").count("[system] status running")
            page.get_by_role("button", name="Redeploy").click()
            page.wait_for_url(f"{base}/previews/{PREVIEW}")
            page.evaluate("window.notReloaded = true")
            page.wait_for_function(
                "() => document.getElementById('log').textContent"
                ".split('[system] status running').length === 3"
            )
            seen["page_no_reload"] = page.evaluate("window.notReloaded === true")
            seen["log"] = page.inner_text("#log")
            # The new container's output arrives in "Container output" as it is written.
            page.wait_for_function(
                "() => document.getElementById('run').textContent.includes('serving the preview')"
            )
            run_before = page.inner_text("#run")
            status = on_reactor(reactor, lambda: deferred_get(stack))
            seen["visit"] = status
            page.wait_for_function(
                "n => document.getElementById('run').textContent.length > n", arg=len(run_before)
            )
            seen["run"] = page.inner_text("#run")[len(run_before):]
            page.get_by_role("button", name="Destroy").click()
            status_is(page, PREVIEW, "stopped")
        finally:
            browser.close()
    return seen


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_real_deploy_lives_in_the_dashboard(
    reactor: Any, thread_pool: Any, tmp_path: Path, docker_client: Any
) -> None:
    """Building -> running live in the list; a redeploy streams into the page; destroy cleans."""
    forge = ForgeRepo.create(tmp_path / "forge", "hello-world")
    stack = Stack(reactor, thread_pool, tmp_path, forge)
    await stack.start()
    port = free_port()
    listening = control_for(stack, port)
    sha = push(forge, 1, site_files("hello\n", VERBOSE_DOCKERFILE))
    pr = PullRequest("github", REPO, 1, sha, "pr-1", forge.url, "refs/pull/1/head")
    decision = policy.Deploy(pr, stack.config.repo(REPO), "open", revive=True)  # type: ignore[arg-type]
    try:
        seen = await within(
            deferToThread(journey, reactor, stack, f"http://127.0.0.1:{port}",
                          lambda: stack.orchestrator.apply(decision)),
            150,
        )
        await stack.settled()
    finally:
        await listening.stopListening()
        await stack.shutdown()
    assert seen["list_no_reload"] is True and seen["page_no_reload"] is True
    assert seen["before"] == 1
    assert "[build]" in seen["log"] and "[system] container" in seen["log"]
    assert seen["visit"] == (200, b"hello\n")
    assert "response:200" in seen["run"] or "GET" in seen["run"], seen["run"]
    assert stack.leftovers(docker_client, PREVIEW) == []
