"""
A failed preview's page from the proxy, in real headless Chromium (Debian's
/usr/bin/chromium driven by Playwright, as tests/test_auth_browser.py).

prevu runs as `twistd -n prevu`; a real preview fails for real: the API's
`prevu up` endpoint deploys a local git repository whose `.prevu.toml` is
invalid, so the build fails after the real git fetch and before any Docker
object exists. Then, through the proxy: an anonymous visitor of the private
preview is sent to the login; after logging in, the page says the preview
failed, names the reason and links to its logs on the control app.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from prevu.auth.passwords import hash_password
from tests.support.git_repos import git
from tests.support.prevu_process import PrevuProcess

CHROMIUM = "/usr/bin/chromium"
TOKEN = "an-api-token-for-the-failed-page-test"

CONFIG = """
[server]
http = "tcp:{http}:interface=127.0.0.1"
control = "tcp:{control}:interface=127.0.0.1"
public_url = "http://prevu.localhost:{http}"
state_dir = "{state}"
api_token = "TOKEN"

[auth]
cookie_secret = "a-test-cookie-secret-of-at-least-32-bytes"
users_file = "USERS"

[[repos]]
name = "acme/shop"
access = "private"
"""


def failing_repository(root: Path) -> tuple[str, str]:
    """A git repository whose `.prevu.toml` is invalid; returns (path, head sha)."""
    root.mkdir()
    git("init", "-q", "-b", "feature", cwd=root)
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / ".prevu.toml").write_text("[run]\nport = 0\n")
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "a bad port", cwd=root)
    return str(root), git("rev-parse", "HEAD", cwd=root)


def api(prevu: PrevuProcess, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{prevu.control_port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        return json.loads(response.read())


def failed_preview(prevu: PrevuProcess, clone: str, sha: str) -> dict[str, Any]:
    """Deploy the bad repository through the API; return the preview once it failed."""
    preview = api(
        prevu,
        "/api/previews",
        {"repo": "acme/shop", "branch": "feature", "sha": sha, "clone_url": clone},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        preview = api(prevu, f"/api/previews/{preview['id']}")
        if preview["status"] == "failed":
            return dict(preview)
        time.sleep(0.2)
    raise AssertionError(f"the preview did not fail: {preview}\n{prevu.log_path.read_text()}")


def browse(url: str, port: int, shots: Path) -> dict[str, Any]:
    """Anonymous visit, login, the failed page; runs in its own thread (sync Playwright)."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--host-resolver-rules=MAP *.localhost 127.0.0.1", "--no-sandbox"],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(url)
            seen["anonymous"] = (page.url, page.title())
            page.get_by_label("User name").fill("alice")
            page.get_by_label("Password").fill("wonderland")
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(url)
            response = page.goto(url)
            assert response is not None
            seen["signed_in"] = {
                "status": response.status,
                "robots": response.headers.get("x-robots-tag"),
                "title": page.title(),
                "state": page.inner_text("#prevu-state"),
                "reason": page.inner_text("#prevu-reason"),
                "logs": page.get_attribute("#prevu-link", "href"),
            }
            page.screenshot(path=str(shots / "failed-preview.png"))
        finally:
            browser.close()
    return seen


@pytest.mark.slow
def test_failed_preview_page_names_the_reason_and_links_to_its_logs(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('wonderland', n=1 << 12)}\n")
    clone, sha = failing_repository(tmp_path / "shop")
    prevu = PrevuProcess(tmp_path, CONFIG.replace("USERS", str(users)).replace("TOKEN", TOKEN))
    prevu.start()
    try:
        preview = failed_preview(prevu, clone, sha)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            seen = pool.submit(browse, preview["url"], prevu.http_port, tmp_path).result(
                timeout=120
            )
    finally:
        log = prevu.stop()
    port = prevu.http_port
    assert preview["url"].startswith("http://pr-") and preview["access"] == "private"
    url, title = seen["anonymous"]
    assert url.startswith(f"http://prevu.localhost:{port}/login?next=http"), log[-2000:]
    assert title == "Log in to prevu"
    page = seen["signed_in"]
    assert page["status"] == 503 and page["robots"] == "noindex"
    assert page["title"] == "503 Preview failed"
    assert "acme/shop" in page["state"] and "failed" in page["state"]
    assert page["reason"] == preview["error"] and "run.port" in page["reason"]
    assert page["logs"] == f"http://prevu.localhost:{port}/previews/{preview['id']}"
