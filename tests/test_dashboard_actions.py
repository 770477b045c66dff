"""
The dashboard's pages and actions through treq's StubTreq (no sockets): the
real orchestrator on fakes (`tests.test_orchestrator.Harness`), the real
login pages, and `[auth] admins = ["alice"]`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest_twisted
from attrs import define, evolve, field
from treq.testing import StubTreq

from prevu.auth.passwords import hash_password, parse_users
from prevu.config import AuthConfig, Config, PreviewsConfig, ServerConfig
from prevu.control.api import PreviewsApi
from prevu.control.app import ControlApp
from prevu.control.operators import Keeper
from prevu.ports import DeliveryEntry
from tests.test_auth_login import PUBLIC, Browser, StaticUsers, csrf_of, make_pages
from tests.test_orchestrator import SHAS, Harness

USERS = parse_users(
    "".join(f"{name}:{hash_password('wonderland', n=1 << 10)}\n" for name in ("alice", "bob"))
)


@define
class RecordingKeeper:
    """A keep/extend facade that records what it was asked (checked against `Keeper`)."""

    calls: list[tuple[str, str, float]] = field(factory=list)

    def keep(self, preview: str) -> float | None:
        self.calls.append(("keep", preview, 0.0))
        return float("inf")

    def extend(self, preview: str, seconds: float) -> float | None:
        self.calls.append(("extend", preview, seconds))
        return seconds


@define
class Writers:
    """A forge that grants write access to `writers`."""

    writers: set[tuple[str, str]] = field(factory=set)

    async def may_write(self, repo: str, user: str) -> bool:
        return (repo, user) in self.writers


class NotKeepingOrchestrator:
    """The orchestrator without keep/extend (as pages without an orchestrator are)."""

    def __init__(self, orchestrator: Any) -> None:
        self.orchestrator = orchestrator

    def __getattr__(self, name: str) -> Any:
        if name in ("keep", "extend"):
            raise AttributeError(name)
        return getattr(self.orchestrator, name)


class KeepingOrchestrator:
    """The orchestrator as it is once it offers keep/extend (delegates everything else)."""

    def __init__(self, orchestrator: Any, keeper: RecordingKeeper) -> None:
        self.orchestrator, self.keep, self.extend = orchestrator, keeper.keep, keeper.extend

    def __getattr__(self, name: str) -> Any:
        return getattr(self.orchestrator, name)


def setup(
    tmp: Path, wrap: Any = None, login_configured: bool = True, **app: Any
) -> tuple[Harness, Any]:
    config = Config(
        server=ServerConfig(state_dir=str(tmp / "state"), public_url=PUBLIC),
        auth=AuthConfig(admins=("alice",)),
        previews=PreviewsConfig(history=600.0),
    )
    harness = Harness(tmp, config)
    pages = evolve(make_pages(clock=harness.clock), users=StaticUsers(USERS),
                   login_configured=login_configured)
    harness.clock.advance(1_700_000_000)
    orchestrator = wrap(harness.orchestrator) if wrap else harness.orchestrator
    api = PreviewsApi(config, orchestrator, harness.store, harness.docker)
    control = ControlApp(config=config, login=pages, previews=api, **app)
    browser = Browser(pages)
    browser.treq = StubTreq(control.resource())
    return harness, browser


async def logged_in(browser: Any, user: str) -> str:
    """Log `user` in; the CSRF token of the page after it."""
    _, page = await browser.get("/login")
    await browser.post("/login", {"username": user, "password": "wonderland",
                                  "csrf": csrf_of(page)})
    _, page = await browser.get("/previews/pr-1-shop")
    return csrf_of(page)


def deployed(harness: Harness) -> None:
    harness.publish(1, SHAS[0])
    harness.deploy(1, SHAS[0])
    assert harness.status("pr-1-shop") == "running"


@pytest_twisted.ensureDeferred
async def test_an_operator_redeploys_and_destroys(tmp_path: Path) -> None:
    """alice (in admins): 303 back to the page; the build runs again; destroy stops it."""
    harness, browser = setup(tmp_path)
    deployed(harness)
    csrf = await logged_in(browser, "alice")
    response, _ = await browser.post("/previews/pr-1-shop/redeploy", {"csrf": csrf})
    assert response.code == 303
    assert response.headers.getRawHeaders("location") == ["/previews/pr-1-shop"]
    assert len(harness.docker.builds) == 2 and harness.status("pr-1-shop") == "running"
    response, _ = await browser.post("/previews/pr-1-shop/destroy", {"csrf": csrf})
    harness.settle()
    assert response.code == 303 and harness.status("pr-1-shop") == "stopped"
    record = harness.store.get("pr-1-shop")
    assert record is not None and "by alice" in (record.data.get("detail") or "")


@pytest_twisted.ensureDeferred
async def test_refusals_say_why_and_change_nothing(tmp_path: Path) -> None:
    """bob (not in admins) 403; no CSRF 403; unknown verb 404; nobody logged in 403."""
    harness, browser = setup(tmp_path)
    deployed(harness)
    csrf = await logged_in(browser, "bob")
    response, body = await browser.post("/previews/pr-1-shop/destroy", {"csrf": csrf})
    assert response.code == 403 and "bob is not an operator: not in [auth] admins" in body
    response, body = await browser.post("/previews/pr-1-shop/redeploy", {})
    assert response.code == 403 and "CSRF" in body
    response, body = await browser.post("/previews/pr-1-shop/explode", {"csrf": csrf})
    assert response.code == 404 and "no action" in body
    _, page = await browser.get("/previews/pr-1-shop")
    assert "disabled" in page and "bob is not an operator" in page
    browser.cookies.pop("prevu_session")
    response, _ = await browser.post("/previews/pr-1-shop/destroy", {"csrf": csrf})
    assert response.code == 403
    assert harness.status("pr-1-shop") == "running" and len(harness.docker.builds) == 1


@pytest_twisted.ensureDeferred
async def test_without_a_way_to_log_in_the_page_points_at_the_cli(tmp_path: Path) -> None:
    """No users_file nor [auth.github] (the embedded defaults): the page is open,
    its actions disabled with a reason naming the CLI, not a login no one can do."""
    harness, browser = setup(tmp_path, login_configured=False)
    deployed(harness)
    response, page = await browser.get("/previews/pr-1-shop")
    assert response.code == 200 and "disabled" in page
    assert "no login is configured, so nobody acts from here: use the CLI" in page
    assert "log in as an operator" not in page
    response, _ = await browser.post("/previews/pr-1-shop/destroy", {"csrf": "x"})
    assert response.code == 403 and harness.status("pr-1-shop") == "running"


@pytest_twisted.ensureDeferred
async def test_a_forge_writer_is_an_operator(tmp_path: Path) -> None:
    """bob with write access to the repository (the injected WritePermission) may act."""
    harness, browser = setup(tmp_path, may_write=Writers({("acme/shop", "bob")}))
    deployed(harness)
    csrf = await logged_in(browser, "bob")
    response, _ = await browser.post("/previews/pr-1-shop/redeploy", {"csrf": csrf})
    assert response.code == 303 and len(harness.docker.builds) == 2


@pytest_twisted.ensureDeferred
async def test_keep_and_extend_only_with_a_keeper(tmp_path: Path) -> None:
    """Without keep/extend no buttons and 404; the real orchestrator's keep and
    extend set the record's keep_until; a given Keeper is used instead."""
    harness, browser = setup(tmp_path, wrap=NotKeepingOrchestrator)
    deployed(harness)
    csrf = await logged_in(browser, "alice")
    _, page = await browser.get("/previews/pr-1-shop")
    assert "/keep" not in page and "/extend" not in page
    response, _ = await browser.post("/previews/pr-1-shop/keep", {"csrf": csrf})
    assert response.code == 404

    harness, browser = setup(tmp_path / "real")
    deployed(harness)
    csrf = await logged_in(browser, "alice")
    _, page = await browser.get("/previews/pr-1-shop")
    assert 'action="/previews/pr-1-shop/keep"' in page and 'name="by"' in page
    now = harness.clock.seconds()
    response, _ = await browser.post("/previews/pr-1-shop/extend", {"csrf": csrf, "by": "2d"})
    record = harness.store.get("pr-1-shop")
    assert response.code == 303 and record is not None
    assert float(record.data["keep_until"]) >= now + 2 * 86400
    assert (await browser.post("/previews/pr-1-shop/keep", {"csrf": csrf}))[0].code == 303
    record = harness.store.get("pr-1-shop")
    assert record is not None and record.data["keep_until"] == "inf"
    response, body = await browser.post("/previews/pr-1-shop/extend", {"csrf": csrf, "by": "x"})
    assert response.code == 400 and "bad extension" in body

    keeper = RecordingKeeper()
    checked: Keeper = keeper
    harness, browser = setup(tmp_path / "given", keeper=checked)
    deployed(harness)
    csrf = await logged_in(browser, "alice")
    assert (await browser.post("/previews/pr-1-shop/keep", {"csrf": csrf}))[0].code == 303
    response, _ = await browser.post("/previews/pr-1-shop/extend", {"csrf": csrf, "by": "2d"})
    assert response.code == 303
    assert keeper.calls == [("keep", "pr-1-shop", 0.0), ("extend", "pr-1-shop", 172800.0)]


@pytest_twisted.ensureDeferred
async def test_an_orchestrator_with_keep_and_extend_gets_the_buttons(tmp_path: Path) -> None:
    """No wiring needed: an orchestrator that has keep/extend (the Keeper protocol) is used."""
    keeper = RecordingKeeper()
    harness, browser = setup(tmp_path, wrap=lambda o: KeepingOrchestrator(o, keeper))
    deployed(harness)
    csrf = await logged_in(browser, "alice")
    _, page = await browser.get("/previews/pr-1-shop")
    assert 'action="/previews/pr-1-shop/extend"' in page
    assert (await browser.post("/previews/pr-1-shop/keep", {"csrf": csrf}))[0].code == 303
    assert keeper.calls == [("keep", "pr-1-shop", 0.0)]


@pytest_twisted.ensureDeferred
async def test_a_share_link_is_shown(tmp_path: Path) -> None:
    """share: a page with the signed link to the preview's host, for the asked duration."""
    harness, browser = setup(tmp_path)
    deployed(harness)
    csrf = await logged_in(browser, "alice")
    response, body = await browser.post("/previews/pr-1-shop/share", {"csrf": csrf, "for": "1h"})
    assert response.code == 200
    link = re.search(r'id="link" href="([^"]+)"', body)
    assert link and link.group(1).startswith("http://pr-1-shop.localhost:8000/")


@pytest_twisted.ensureDeferred
async def test_the_page_lists_deployments_and_the_delivery_trail(tmp_path: Path) -> None:
    """Deployments from the log (newest first) and the PR's webhook deliveries."""
    harness, browser = setup(tmp_path)
    deployed(harness)
    harness.store.record_delivery(DeliveryEntry(
        delivery="d-1", forge="github", event="pull_request", action="opened", repo="acme/shop",
        number=1, sha=SHAS[0], at=1_700_000_000.0, decision="queued", preview="pr-1-shop",
    ))
    await logged_in(browser, "alice")
    response, page = await browser.get("/previews/pr-1-shop")
    assert response.code == 200
    deployments = page.split('id="deployments"')[1].split("</table>")[0]
    assert SHAS[0][:12] in deployments and "succeeded" in deployments
    trail = page.split('id="deliveries"')[1].split("</table>")[0]
    assert "pull_request/opened" in trail and "queued" in trail
    response, text = await browser.get("/previews/pr-1-shop/logs")
    assert "status running" in text


@pytest_twisted.ensureDeferred
async def test_the_list_filters_and_folds_old_previews_into_history(tmp_path: Path) -> None:
    """?status=failed shows the failed one; a preview destroyed over 10m ago is in <details>."""
    harness, browser = setup(tmp_path)
    deployed(harness)
    harness.git.remote("https://forge.example/acme/shop.git", "refs/pull/2/head", SHAS[1], {})
    harness.deploy(2, SHAS[1])
    harness.publish(3, SHAS[2])
    harness.deploy(3, SHAS[2])
    harness.close(3, SHAS[2])
    harness.settle()
    await logged_in(browser, "alice")
    response, page = await browser.get("/?status=failed")
    assert response.code == 200, page
    table = page.split('id="previews"')[1].split("</table>")[0]
    assert "pr-2-shop" in table and "pr-1-shop" not in table
    _, page = await browser.get("/")
    assert "<details" not in page and "pr-3-shop" in page
    harness.clock.advance(601)
    _, page = await browser.get("/")
    history = page.split("<details")[1]
    assert "pr-3-shop" in history and "pr-3-shop" not in page.split("<details")[0]
    assert "Logged in as <strong" in page and 'action="/logout"' in page


@pytest_twisted.ensureDeferred
async def test_the_script_is_served_and_nothing_else(tmp_path: Path) -> None:
    """/static/live.js is our JavaScript; any other name is 404."""
    _, browser = setup(tmp_path)
    response, body = await browser.get("/static/live.js")
    assert response.code == 200 and "EventSource" in body
    assert response.headers.getRawHeaders("content-type") == ["text/javascript; charset=utf-8"]
    assert (await browser.get("/static/..%2Fdashboard.py"))[0].code == 404


@pytest_twisted.ensureDeferred
async def test_an_operator_resets_the_data_and_a_closed_preview_is_refused(tmp_path: Path) -> None:
    """alice resets: the preview's volumes go and the same commit starts again (303);
    bob is refused; a closed preview answers 409 with the reason."""
    harness, browser = setup(tmp_path)
    harness.publish(1, SHAS[0], {".prevu.toml": '[run]\nvolumes = ["/data"]\n'})
    harness.deploy(1, SHAS[0])
    harness.settle()
    volumes = set(harness.docker.volumes)
    assert volumes, "the preview has a volume to drop"
    csrf = await logged_in(browser, "alice")
    response, _ = await browser.post("/previews/pr-1-shop/reset", {"csrf": csrf})
    harness.settle()
    assert response.code == 303
    removed = [name for op, name in harness.docker.calls if op == "remove_volume"]
    assert sorted(removed) == sorted(volumes)
    assert len(harness.docker.builds) == 2 and harness.status("pr-1-shop") == "running"
    harness.close(1, SHAS[0])
    harness.settle()
    response, body = await browser.post("/previews/pr-1-shop/reset", {"csrf": csrf})
    assert response.code == 409 and "cannot be reset" in body
    assert len(harness.docker.builds) == 2
