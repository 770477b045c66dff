"""The dashboard: behind the reviewers' login when a login is configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from treq.testing import StubTreq

from prevu.auth.tokens import encode_session
from prevu.config import Config, ServerConfig
from prevu.control.api import PreviewsApi
from prevu.control.app import ControlApp
from tests.support.timeouts import within
from tests.test_auth_login import NOW, PUBLIC, make_pages
from tests.test_orchestrator import Harness


def app_for(tmp: Path, login_configured: bool) -> tuple[StubTreq, Any]:
    config = Config(server=ServerConfig(state_dir=str(tmp / "state"), public_url=PUBLIC))
    harness = Harness(tmp, config)
    api = PreviewsApi(config, harness.orchestrator, harness.store, harness.docker)
    pages = make_pages(login_configured=login_configured)
    app = ControlApp(config=config, login=pages, previews=api)
    return StubTreq(app.resource()), pages


@pytest_twisted.ensureDeferred
async def test_dashboard_redirects_to_login_then_shows_the_previews(tmp_path: Path) -> None:
    """No session: 302 to the login page with next=dashboard; a valid session: the page."""
    stub, pages = app_for(tmp_path, login_configured=True)
    response = await within(stub.get(f"{PUBLIC}/", allow_redirects=False), 5)
    assert response.code == 302
    location = response.headers.getRawHeaders("location")[0]
    assert location == f"{PUBLIC}/login?next=http%3A%2F%2Fprevu.preview.test%3A8000%2F"
    session = pages.authority.new_session("alice", NOW)
    cookie = encode_session(pages.authority.signer, session)
    response = await within(
        stub.get(f"{PUBLIC}/", headers={"Cookie": f"prevu_session={cookie}"}), 5
    )
    assert response.code == 200
    assert b"No previews yet." in await within(response.content(), 5)


@pytest_twisted.ensureDeferred
async def test_dashboard_is_open_when_no_login_is_configured(tmp_path: Path) -> None:
    """Without users_file or [auth.github] nobody could log in: the page is shown."""
    stub, _ = app_for(tmp_path, login_configured=False)
    response = await within(stub.get(f"{PUBLIC}/"), 5)
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_a_repo_limited_session_sees_only_its_repositories(tmp_path: Path) -> None:
    """A GitHub repo-reader session does not learn of other repositories' previews."""
    from prevu.ports import PreviewRecord

    config = Config(server=ServerConfig(state_dir=str(tmp_path / "state"), public_url=PUBLIC))
    harness = Harness(tmp_path, config)
    for repo, number in (("acme/shop", 1), ("acme/secret-merger", 2)):
        harness.store.upsert(PreviewRecord(id=f"pr-{number}", repo=repo, number=number))
    from twisted.internet.defer import ensureDeferred

    await within(ensureDeferred(harness.orchestrator.start()), 5)
    api = PreviewsApi(config, harness.orchestrator, harness.store, harness.docker)
    pages = make_pages(login_configured=True)
    stub = StubTreq(ControlApp(config=config, login=pages, previews=api).resource())
    session = pages.authority.new_session("octo", NOW, repos=("acme/shop",))
    cookie = encode_session(pages.authority.signer, session)
    response = await within(
        stub.get(f"{PUBLIC}/", headers={"Cookie": f"prevu_session={cookie}"}), 5
    )
    page = await within(response.content(), 5)
    assert b"acme/shop#1" in page
    assert b"secret-merger" not in page
    harness.orchestrator.stop()
