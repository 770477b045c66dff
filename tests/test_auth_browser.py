"""
End to end in real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright, no browser download): prevu runs as `twistd -n prevu` with two
private [[routes]] under the embedded domain `localhost`.

The login is reached through the proxy, on the control host of `public_url`
(the embedded default's shape): the proxy keeps `prevu_session` for prevu's
own control app and removes it for the previews.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import threading
from pathlib import Path
from typing import Any

import pytest

from prevu.auth.passwords import hash_password
from tests.support.prevu_process import PrevuProcess

CHROMIUM = "/usr/bin/chromium"

CONFIG = """
[server]
http = "tcp:{http}:interface=127.0.0.1"
control = "tcp:{control}:interface=127.0.0.1"
public_url = "http://prevu.localhost:{http}"
state_dir = "{state}"

[auth]
cookie_secret = "a-test-cookie-secret-of-at-least-32-bytes"
users_file = "USERS"

[[routes]]
host = "one.localhost"
upstream = "http://127.0.0.1:ONE"
access = "private"

[[routes]]
host = "two.localhost"
upstream = "http://127.0.0.1:TWO"
access = "private"
"""


def upstream(name: str) -> http.server.ThreadingHTTPServer:
    """A preview stand-in on 127.0.0.1 whose page shows its name and the cookies it got."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (
                f"<!doctype html><title>{name}</title><h1>Preview {name}</h1>"
                f"<p id=user>{self.headers.get('X-Prevu-User')}</p>"
                f"<p id=cookie>{self.headers.get('Cookie')}</p>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def browse(port: int, shots: Path) -> dict[str, Any]:
    """The reviewer's journey; runs in its own thread (Playwright's sync API)."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {}
    one, two = f"http://one.localhost:{port}/", f"http://two.localhost:{port}/"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--host-resolver-rules=MAP *.localhost 127.0.0.1", "--no-sandbox"],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(one)
            seen["first"] = (page.url, page.title())
            page.screenshot(path=str(shots / "login.png"))
            page.get_by_label("User name").fill("alice")
            page.get_by_label("Password").fill("wonderland")
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(one)
            seen["after_login"] = (
                page.url,
                page.inner_text("h1"),
                page.inner_text("#user"),
                page.inner_text("#cookie"),
            )
            page.goto(two)
            seen["second"] = (page.url, page.inner_text("h1"))
            page.goto(f"http://prevu.localhost:{port}/login")
            page.get_by_role("button", name="Log out").click()
            page.wait_for_url(f"http://prevu.localhost:{port}/login")
            seen["after_logout"] = (page.url, page.title())
            page.goto(one)
            seen["again"] = (page.url, page.title())
        finally:
            browser.close()
    return seen


@pytest.mark.slow
def test_reviewer_logs_in_once_for_all_previews_and_out_again(tmp_path: Path) -> None:
    """Private preview -> login page; log in -> preview; second preview without login;
    log out -> login page again."""
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('wonderland', n=1 << 12)}\n")
    first, second = upstream("one"), upstream("two")
    config = (
        CONFIG.replace("USERS", str(users))
        .replace("ONE", str(first.server_address[1]))
        .replace("TWO", str(second.server_address[1]))
    )
    prevu = PrevuProcess(tmp_path, config)
    prevu.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            seen = pool.submit(browse, prevu.http_port, tmp_path).result(
                timeout=120
            )
    finally:
        log = prevu.stop()
        first.shutdown()
        second.shutdown()
    port = prevu.http_port
    url, title = seen["first"]
    assert url.startswith(f"http://prevu.localhost:{port}/login?next=http"), log[-2000:]
    assert title == "Log in to prevu"
    url, heading, user, cookie = seen["after_login"]
    assert (url, heading, user) == (f"http://one.localhost:{port}/", "Preview one", "alice")
    assert "prevu_session" not in cookie
    assert seen["second"] == (f"http://two.localhost:{port}/", "Preview two")
    assert seen["after_logout"] == (f"http://prevu.localhost:{port}/login", "Log in to prevu")
    url, title = seen["again"]
    assert (
        url.startswith(f"http://prevu.localhost:{port}/login?next=")
        and title == "Log in to prevu"
    )
