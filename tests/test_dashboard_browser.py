"""
The dashboard in real headless Chromium (Debian's /usr/bin/chromium through
Playwright): the control app listens on 127.0.0.1 with the real orchestrator
behind it, on the running reactor; git and the engine are the fakes of
`prevu.testing` with a build the test holds and steps line by line.

One browser session walks through: the list follows a preview from building
to running without a reload; a preview page shows build lines as they come;
an operator redeploys and destroys from the page; a non-operator and a form
without its CSRF token are refused with 403 and the reason. Screenshots go
to `$PREVU_DASHBOARD_SHOTS` (docs/img when the docs are refreshed) or tmp.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import blockingCallFromThread, deferToThread

from tests.support.dashboard_app import PASSWORD, DashboardApp
from tests.support.timeouts import within

CHROMIUM = "/usr/bin/chromium"
SHAS = [f"{n:x}" * 40 for n in range(1, 6)]


def on_reactor(reactor: Any, call: Callable[[], Any]) -> Any:
    """Run `call` on the reactor thread and wait for it (from the browser's thread)."""
    return blockingCallFromThread(reactor, call)


def log_in(browser: Any, base: str, user: str) -> Any:
    page = browser.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{base}/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")
    return page


def status_is(page: Any, preview: str, status: str) -> None:
    page.wait_for_function(
        "([id, status]) => { const cell = document.querySelector("
        "`[data-preview=\"${id}\"] [data-field=status]`);"
        " return cell && cell.textContent === status; }",
        arg=[preview, status],
    )


def journey(reactor: Any, app: DashboardApp, shots: Path) -> dict[str, Any]:
    """The browser's part; runs in a thread (Playwright's sync API)."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {}
    base = app.public_url
    docker = app.docker
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            # 1. The list follows a build to running, without a reload.
            on_reactor(reactor, lambda: docker.pause("build"))
            first = on_reactor(reactor, lambda: app.deploy(1, SHAS[0], "feature/login"))
            alice = browser.new_context(viewport={"width": 1280, "height": 800})
            page = log_in(alice, base, "alice")
            seen["who"] = page.inner_text("#user")
            status_is(page, first, "building")
            page.evaluate("window.notReloaded = true")
            on_reactor(reactor, lambda: docker.release("build"))
            status_is(page, first, "running")
            seen["no_reload"] = page.evaluate("window.notReloaded === true")
            seen["duration"] = page.inner_text(f'[data-preview="{first}"] [data-field=duration]')

            # 2. A preview page shows the build's lines as they arrive.
            docker.build_lines = ("Step 1/3 : FROM scratch", "Step 2/3 : COPY app /app",
                                  "Step 3/3 : CMD [\"/app\"]")
            on_reactor(reactor, lambda: setattr(docker, "stepping", True))
            page.goto("about:blank")
            second = on_reactor(reactor, lambda: app.deploy(2, SHAS[1], "fix/cart"))
            page.goto(f"{base}/previews/{second}")
            log = page.locator("#log")
            for number, line in enumerate(docker.build_lines, 1):
                assert line not in log.inner_text()
                on_reactor(reactor, docker.step)
                page.wait_for_function(
                    "line => document.getElementById('log').textContent.includes(line)", arg=line
                )
                if number == 2:
                    page.screenshot(path=str(shots / "dashboard-preview-live.png"), full_page=True)
            status_is(page, second, "running")
            seen["log"] = log.inner_text()
            on_reactor(reactor, lambda: setattr(docker, "stepping", False))

            # A failed preview, for its page.
            page.goto("about:blank")
            failing = on_reactor(reactor, lambda: _failing(app, 3, SHAS[2]))
            page.goto(f"{base}/previews/{failing}")
            seen["failed_reason"] = page.inner_text("#reason")
            page.screenshot(path=str(shots / "dashboard-failed.png"), full_page=True)

            # 3. An operator redeploys and destroys from the page.
            builds = len(docker.builds)
            page.goto(f"{base}/previews/{first}")
            with page.expect_response(lambda r: r.request.method == "POST") as posted:
                page.get_by_role("button", name="Redeploy").click()
            seen["redeploy"] = posted.value.status
            page.wait_for_url(f"{base}/previews/{first}")
            status_is(page, first, "running")
            seen["rebuilt"] = len(docker.builds) - builds
            with page.expect_response(lambda r: r.request.method == "POST") as posted:
                page.get_by_role("button", name="Destroy").click()
            seen["destroy"] = posted.value.status
            status_is(page, first, "stopped")
            # Destroyed longer than `[previews] history` ago (1s here): folded into the history.
            page.wait_for_timeout(1100)
            page.goto(f"{base}/")
            seen["history"] = page.locator("#history tr").count()
            seen["current"] = page.locator("#previews tbody tr").count()
            page.locator("#history summary").click()
            page.screenshot(path=str(shots / "dashboard-list.png"), full_page=True)

            # 4. Without the CSRF token: 403.
            page.goto(f"{base}/previews/{second}")
            page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(i => i.remove())")
            with page.expect_response(lambda r: r.request.method == "POST") as posted:
                page.get_by_role("button", name="Redeploy").click()
            seen["no_csrf"] = (posted.value.status, page.inner_text("#message"))

            # 5. A non-operator sees the page, its buttons are off, and a POST is refused.
            bob = log_in(browser.new_context(), base, "bob")
            bob.goto(f"{base}/previews/{second}")
            seen["bob_disabled"] = bob.get_by_role("button", name="Redeploy").is_disabled()
            with bob.expect_response(lambda r: r.request.method == "POST") as posted:
                bob.evaluate("document.querySelector('form[action$=\"/destroy\"]').submit()")
            seen["bob"] = (posted.value.status, bob.inner_text("#message"))
        finally:
            browser.close()
    return seen


def _failing(app: DashboardApp, number: int, sha: str) -> str:
    ref = f"refs/pull/{number}/head"
    # No Dockerfile at the PR head: the build fails with a reason the page shows.
    app.git.remote("https://forge.example/acme/shop.git", ref, sha, {"README": "hi\n"})
    from prevu.config import RepoConfig
    from prevu.forge import policy
    from prevu.forge.events import PullRequest

    pr = PullRequest("github", "acme/shop", number, sha, "broken/build",
                     "https://forge.example/acme/shop.git", ref)
    receipt = app.orchestrator.apply(policy.Deploy(pr, RepoConfig("acme/shop"), "open", True))
    assert receipt.preview is not None
    return receipt.preview


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_dashboard_lives_and_acts_in_chromium(tmp_path: Path) -> None:
    """Live list and log in Chromium; operator actions work; others and no CSRF get 403."""
    from twisted.internet import reactor

    shots = Path(os.environ.get("PREVU_DASHBOARD_SHOTS") or tmp_path)
    app = DashboardApp(reactor, tmp_path, history=1.0)
    app.listen()
    try:
        seen = await within(deferToThread(journey, reactor, app, shots), 90)
    finally:
        await app.close()
    assert seen["who"] == "alice"
    assert seen["no_reload"] is True and seen["duration"].endswith("s")
    assert "[build] Step 3/3" in seen["log"] and "[system] status running" in seen["log"]
    assert "Dockerfile" in seen["failed_reason"]
    assert seen["redeploy"] == 303 and seen["rebuilt"] == 1
    assert seen["destroy"] == 303
    assert (seen["history"], seen["current"]) == (1, 2)
    assert seen["no_csrf"][0] == 403 and "CSRF" in seen["no_csrf"][1]
    assert seen["bob_disabled"] is True
    assert seen["bob"] == (403, "bob is not an operator: not in [auth] admins")
    assert (shots / "dashboard-list.png").stat().st_size > 10_000
