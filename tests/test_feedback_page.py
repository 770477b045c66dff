"""The minimal preview page the comment links to: escaped, masked, 404 when not visible."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.task import Clock

from prevu.config import Config
from prevu.control.app import ControlApp
from prevu.control.preview_page import PreviewPage
from prevu.masking import masker
from prevu.ports import PreviewRecord
from prevu.store import SqliteStore


def mounted(page: PreviewPage, visible: Any = None) -> StubTreq:
    """The page as the real control app mounts it (a login that limits repositories)."""
    login = None if visible is None else _Limited(visible)
    app = ControlApp(config=Config(), login=login, page=page)  # type: ignore[arg-type]
    return StubTreq(app.resource())


class _Limited:
    """The two questions the control app asks a login: a session, and which repositories."""

    def __init__(self, visible: Any) -> None:
        self.visible = visible

    def require_reviewer(self, request: Any, path: str) -> None:
        return None

    def repo_filter(self, request: Any) -> Any:
        return self.visible


def store() -> SqliteStore:
    db = SqliteStore(":memory:", Clock())
    db.upsert(
        PreviewRecord(
            id="pr-7",
            repo="acme/shop",
            number=7,
            sha="a" * 40,
            status="failed",
            url="http://pr-7.preview.test",
            error="<script>x</script> with ghp_secretvalue",
        )
    )
    db.append_log("pr-7", "build", "token ghp_secretvalue leaked <b>")
    return db


@pytest_twisted.ensureDeferred
async def test_the_page_shows_status_url_reason_and_masked_escaped_logs() -> None:
    http = mounted(PreviewPage(store(), masker(["ghp_secretvalue"])))
    response = await http.get("http://prevu.test/previews/pr-7")
    body = (await response.text()).replace("&#x27;", "'")
    assert response.code == 200
    assert "http://pr-7.preview.test" in body and "failed" in body
    assert "&lt;script&gt;" in body and "<script>" not in body
    assert "ghp_secretvalue" not in body and "token *** leaked &lt;b&gt;" in body
    logs = await http.get("http://prevu.test/previews/pr-7/logs")
    assert (await logs.text()) == "token *** leaked <b>\n"
    assert logs.headers.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]


@pytest_twisted.ensureDeferred
async def test_an_unknown_or_hidden_preview_is_404() -> None:
    db = store()
    assert (await mounted(PreviewPage(db)).get("http://prevu.test/previews/nope")).code == 404
    hidden = mounted(PreviewPage(db), visible=lambda repo: False)
    assert (await hidden.get("http://prevu.test/previews/pr-7")).code == 404
