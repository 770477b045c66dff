"""The visible-state rule, the status and deployment mappings and the comment (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prevu import lifecycle as lc
from prevu.feedback import comment as cm
from prevu.feedback.memory import PrFeedback
from prevu.feedback.view import (
    View,
    commit_status,
    deployment_state,
    environment,
    next_view,
    superseded_status,
)
from prevu.orchestrator import records
from prevu.ports import ExecResult, PreviewRecord
from tests.test_data import DATA_TOML
from tests.test_orchestrator import SHAS, Harness

A = "a" * 40
B = "b" * 40
URL = "http://pr-7.preview.test"


def record(status: str, sha: str = A, **kwargs: Any) -> PreviewRecord:
    data = kwargs.pop("data", {"clean": "0"})
    return PreviewRecord(
        id="pr-7",
        repo="acme/shop",
        number=7,
        sha=sha,
        status=status,
        url=URL,
        data=data,
        **kwargs,
    )  # type: ignore[arg-type]


def replay(*records: PreviewRecord, step: float = 10.0) -> list[View]:
    views: list[View] = []
    view = None
    for index, item in enumerate(records):
        view = next_view(item, view, 1000.0 + index * step)
        views.append(view)
    return views


def visible(*records: PreviewRecord) -> list[str]:
    return [view.state for view in replay(*records)]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (
            ["queued", "building", "starting", "running"],
            ["queued", "building", "building", "running"],
        ),
        # Sleep and wake, and a self-healing restart, change nothing visible.
        (["running", "sleeping", "starting", "running"], ["running"] * 4),
        (["running", "queued", "starting", "running"], ["running"] * 4),
        (["building", "failed"], ["building", "failed"]),
        (["building", "starting", "failed"], ["building", "building", "failed"]),
    ],
)
def test_visible_states_of_one_sha(statuses: list[str], expected: list[str]) -> None:
    assert visible(*(record(s) for s in statuses)) == expected


def test_a_new_sha_while_building_supersedes_the_old_one() -> None:
    views = replay(record("building"), record("queued", B))
    assert views[-1].state == "queued" and views[-1].superseded == A
    assert superseded_status(B) == ("error", "Superseded by bbbbbbb")


def test_a_new_sha_after_running_supersedes_nothing() -> None:
    assert replay(record("running"), record("queued", B))[-1].superseded is None


def test_the_build_duration_runs_from_building_to_running() -> None:
    views = replay(record("queued"), record("building"), record("starting"), record("running"))
    assert views[-1].duration == 20.0


def test_closed_is_removed_and_a_ttl_close_is_expired() -> None:
    closed = record("stopped", closed=True, data={"detail": "pull request closed"})
    assert visible(record("running"), closed)[-1] == "removed"
    expired = record("stopped", closed=True, data={"detail": "expired after ttl 7d"})
    assert visible(record("running"), expired)[-1] == "expired"


def test_a_fork_awaiting_approval() -> None:
    view = replay(record("queued", data={"awaiting": A}))[-1]
    assert view.state == "awaiting"
    text = cm.render(view, cm.Links.for_preview("https://prevu.example.com", "pr-7"), "<!-- m -->")
    assert "`/preview approve aaaaaaa`" in text


@pytest.mark.parametrize(
    ("state", "status", "deployment"),
    [
        ("queued", "pending", None),
        ("building", "pending", "in_progress"),
        ("awaiting", "pending", None),
        ("running", "success", "success"),
        ("failed", "failure", "failure"),
        ("held", "failure", "failure"),
        ("removed", "success", "inactive"),
        ("expired", "success", "inactive"),
    ],
)
def test_status_and_deployment_of_each_visible_state(
    state: str, status: str, deployment: str | None
) -> None:
    view = View(state, A, URL, reason="boom")  # type: ignore[arg-type]
    assert commit_status(view)[0] == status
    assert deployment_state(view) == deployment


def test_a_failure_description_fits_githubs_limit() -> None:
    assert len(commit_status(View("failed", A, URL, reason="x" * 500))[1]) <= 140


def test_the_comment_shows_url_sha_duration_links_and_marker() -> None:
    links = cm.Links.for_preview("https://prevu.example.com/", "pr-7")
    mark = cm.marker("github", "Acme/Shop", 7)
    text = cm.render(View("running", A, URL, duration=75.0), links, mark)
    assert text.startswith("<!-- prevu:preview github:acme/shop#7 -->")
    assert URL in text and "`aaaaaaa`" in text and "1m 15s" in text
    assert "https://prevu.example.com/previews/pr-7" in text
    assert environment(7) == "pr-7"


def test_a_failed_comment_carries_the_reason_and_the_tail_or_the_link() -> None:
    links = cm.Links.for_preview("https://prevu.example.com", "pr-7")
    view = View("failed", A, URL, reason="RUN make: exit 2")
    with_tail = cm.render(view, links, "<!-- m -->", ["line one", "line two"])
    assert "RUN make: exit 2" in with_tail and "line two" in with_tail
    without = cm.render(view, links, "<!-- m -->", None)
    assert "line two" not in without and links.logs in without


def test_removed_says_so() -> None:
    links = cm.Links.for_preview("https://prevu.example.com", "pr-7")
    text = cm.render(View("removed", A, URL, reason="pull request closed"), links, "<!-- m -->")
    assert "removed" in text.lower() and "pull request closed" in text


@given(
    st.lists(st.sampled_from(["queued", "building", "starting", "running", "failed"]), max_size=12)
)
def test_sleeping_and_waking_never_change_what_is_shown(statuses: list[str]) -> None:
    """Any life of one SHA, with a sleep and a wake after each time it runs: same comment."""
    with_sleeps: list[str] = []
    for status in statuses:
        with_sleeps.append(status)
        if status == "running":
            with_sleeps += ["sleeping", "starting", "running"]
    shown = [v.shown() for v in replay(*(record(s) for s in statuses))]
    shown_with_sleeps = [v.shown() for v in replay(*(record(s) for s in with_sleeps))]
    assert _changes(shown) == _changes(shown_with_sleeps)


def _changes(shown: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    # The build time is left out: the replay's clock moves with each record.
    plain = [s[:4] + s[5:] for s in shown]
    return [s for i, s in enumerate(plain) if i == 0 or plain[i - 1] != s]


# --- a failed `[data] on_push`: the head is not deployed, the previous commit serves --------

ERROR = "on_push failed (exit 3): relation exists"


def stored(**fields: Any) -> dict[str, str]:
    """A record's `data` holding the lifecycle state `fields` (as the orchestrator writes it)."""
    return {"clean": "0", "state": json.dumps(records.state_to_json(lc.Preview(**fields)))}


def held_record(status: str = "running", **fields: Any) -> PreviewRecord:
    """B's on_push failed while A serves: the record the orchestrator writes (docs/data.md)."""
    serving = lc.Deployment(lc.Revision(A, "f", 1), "c1", "i1", "10.0.0.1", 8080)
    values: dict[str, Any] = {
        "target": lc.Revision(B, "f", 2),
        "failed": lc.Revision(B, "f", 2),
        "serving": serving,
        "error": ERROR,
        "held": True,
        "clean": False,
    }
    values.update(fields)
    return record(status, B, error=ERROR, data=stored(**values))


def test_a_failed_on_push_is_held_not_ready() -> None:
    """Status running with error and `held`: the view says B was not deployed and A serves."""
    views = replay(record("running"), record("building", B), held_record())
    view = views[-1]
    assert (view.state, view.sha, view.serving, view.reason) == ("held", B, A, ERROR)
    assert view.duration is None and view.superseded is None
    assert commit_status(view) == ("failure", f"Not deployed, aaaaaaa still serves: {ERROR}")
    assert deployment_state(view) == "failure"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "held"),
        ({"held": False}, "running"),  # not an on_push failure: running as it says
        ({"serving": None}, "running"),  # nothing serves: not held (the status says the rest)
        ({"failed": lc.Revision(A, "f", 1)}, "running"),  # the target itself did not fail
    ],
)
def test_only_a_held_target_with_a_serving_commit_is_shown_held(
    fields: dict[str, Any], expected: str
) -> None:
    assert visible(held_record(**fields))[-1] == expected


def test_a_held_preview_asleep_or_waking_stays_held() -> None:
    """Sleep and wake of the commit still serving change nothing visible: no comment edit."""
    job = lc.Job("resume", lc.Revision(A, "f", 1))
    views = replay(
        held_record(),
        held_record("sleeping", asleep=True),
        held_record("starting", asleep=True, job=job),
        held_record(),
    )
    assert {v.shown() for v in views} == {views[0].shown()}


def test_the_next_push_after_a_held_commit_builds_and_runs_as_usual() -> None:
    views = replay(held_record(), record("queued", "c" * 40), record("running", "c" * 40))
    assert [v.state for v in views] == ["held", "queued", "running"]
    assert views[1].superseded is None and views[-1].serving is None


def test_a_held_description_names_the_serving_commit_within_githubs_limit() -> None:
    state, description = commit_status(View("held", B, URL, reason="x" * 500, serving=A))
    assert state == "failure" and len(description) <= 140
    assert description.startswith("Not deployed, aaaaaaa still serves: xxx")


def test_the_held_comment_says_not_deployed_why_what_serves_and_links_the_logs() -> None:
    links = cm.Links.for_preview("https://prevu.example.com", "pr-7")
    view = next_view(held_record(), None, 1000.0)
    text = cm.render(view, links, "<!-- m -->")
    assert "### ⚠️ New commit not deployed" in text and "Preview ready" not in text
    assert "`bbbbbbb` was **not deployed**" in text
    assert "keeps serving `aaaaaaa`" in text and "(serving `aaaaaaa`)" in text
    assert f"**Reason:** {ERROR}" in text
    assert f"[logs]({links.logs})" in text and "/preview redeploy" in text
    with_tail = cm.render(view, links, "<!-- m -->", ["migrating", "relation exists"])
    assert "<summary>Last log lines</summary>" in with_tail and "relation exists" in with_tail


def test_a_view_remembered_before_serving_existed_still_loads() -> None:
    """feedback.json written by an earlier release has views without `serving`."""
    item = PrFeedback("github", "acme/shop", 7, "pr-7", view=View("running", A, URL))
    data = item.to_json()
    del data["view"]["serving"]
    assert PrFeedback.from_json(data).view == View("running", A, URL)


def test_the_orchestrators_records_of_a_failed_on_push_show_held(tmp_path: Path) -> None:
    """Through the real orchestrator (fakes): every record it writes, replayed as feedback."""
    h = Harness(tmp_path)
    written: list[PreviewRecord] = []
    h.orchestrator.watch(written.append)
    h.publish(1, SHAS[0], {".prevu.toml": DATA_TOML})
    h.deploy(1, SHAS[0])
    h.settle()
    broken = DATA_TOML.replace('["./migrate"]', '["./migrate", "--broken"]')
    h.docker.exec_answers[("./migrate", "--broken")] = ExecResult(3, "relation exists\n")
    h.publish(1, SHAS[1], {".prevu.toml": broken})
    h.deploy(1, SHAS[1])
    h.settle()
    views = replay(*written)
    assert written[-1].status == "running" and written[-1].error is not None
    assert [v.state for v in views if v.sha == SHAS[1]][-1] == "held"
    assert "running" not in [v.state for v in views if v.sha == SHAS[1]]
    assert views[-1].serving == SHAS[0] and views[-1].reason == written[-1].error
    assert commit_status(views[-1])[0] == "failure"
