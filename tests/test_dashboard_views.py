"""The dashboard's pure parts: deployments read from log lines, PR links, the list's split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prevu.config import parse_config
from prevu.control import views
from prevu.errors import ConfigError
from prevu.ports import LogLine, PreviewRecord

SHA = "a" * 40
SHA2 = "b" * 40


def lines(*entries: tuple[float, str, str]) -> list[LogLine]:
    return [
        LogLine(seq=n, preview="pr-1", stream=stream, at=at, line=text)  # type: ignore[arg-type]
        for n, (at, stream, text) in enumerate(entries, 1)
    ]


def test_a_deploy_runs_from_its_fetch_to_running() -> None:
    """fetching ... -> status running: one succeeded deploy with its duration."""
    found = views.deployments(lines(
        (10.0, "system", "status queued"),
        (11.0, "system", f"fetching refs/pull/1/head at {SHA}"),
        (12.0, "build", "status running"),  # a build line never counts
        (41.5, "system", "status running"),
    ))
    assert found == [views.Deploy(SHA, 11.0, 30.5, "succeeded", "")]


def test_failed_superseded_in_progress_and_stopped_deploys() -> None:
    """Each end of a deploy, and one still under way, with the failure's reason."""
    found = views.deployments(lines(
        (1.0, "system", f"fetching refs/pull/1/head at {SHA}"),
        (5.0, "system", "status failed: container exited before it was healthy"),
        (6.0, "system", f"fetching refs/pull/1/head at {SHA2}"),
        (7.0, "system", f"fetching refs/pull/1/head at {SHA}"),
        (9.0, "system", "status stopped: pull request closed"),
        (10.0, "system", f"fetching refs/pull/1/head at {SHA2}"),
    ))
    assert [(d.sha[:1], d.result, d.duration, d.reason) for d in found] == [
        ("a", "failed", 4.0, "container exited before it was healthy"),
        ("b", "superseded", 1.0, "a newer deploy started"),
        ("a", "stopped", 2.0, "pull request closed"),
        ("b", "in progress", None, ""),
    ]


@given(st.lists(st.tuples(st.floats(0, 1e9), st.sampled_from(["system", "build", "run"]),
                          st.text(max_size=80))))
def test_any_log_reads_without_error(entries: list[tuple[float, str, str]]) -> None:
    """Whatever the log holds, deployments() answers, and only finished ones have durations."""
    for deploy in views.deployments(lines(*entries)):
        assert (deploy.duration is None) == (deploy.result == "in progress")


@pytest.mark.parametrize(
    ("forge", "api", "expected"),
    [
        ("github", "https://api.github.com", "https://github.com/acme/shop/pull/7"),
        ("github", "https://ghe.example/api/v3", "https://ghe.example/acme/shop/pull/7"),
        ("gitlab", "", "https://gitlab.example/acme/shop/-/merge_requests/7"),
        ("local", "https://api.github.com", None),
    ],
)
def test_pull_request_links(forge: str, api: str, expected: str | None) -> None:
    """The forge's page of the PR (GitHub, GitHub Enterprise, GitLab); none for prevu up."""
    assert views.pr_url(forge, "acme/shop", 7, api, "https://gitlab.example/") == expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, ""), (0.4, "0s"), (59, "59s"), (61, "1m 1s"), (7300, "2h 1m"), (90000, "1d 1h")],
)
def test_short_durations(seconds: float | None, text: str) -> None:
    assert views.short_duration(seconds) == text


def record(n: int, status: str, closed: bool = False, updated: float = 0.0) -> PreviewRecord:
    return PreviewRecord(
        id=f"pr-{n}", repo="acme/shop", number=n, status=status,  # type: ignore[arg-type]
        closed=closed, created_at=float(n), updated_at=updated,
    )


def test_old_destroyed_previews_go_to_the_history_and_filters_apply_to_the_rest() -> None:
    """Closed+stopped longer than `history` ago: history; filters pick running or failed."""
    records = [
        record(1, "stopped", closed=True, updated=100.0),
        record(2, "stopped", closed=True, updated=990.0),
        record(3, "running"),
        record(4, "failed"),
        record(5, "sleeping"),
    ]
    current, old = views.arrange(records, now=1000.0, history=60.0, wanted="all")
    assert [r.id for r in current] == ["pr-5", "pr-4", "pr-3", "pr-2"]
    assert [r.id for r in old] == ["pr-1"]
    running, _ = views.arrange(records, 1000.0, 60.0, views.parse_filter("running"))
    assert [r.id for r in running] == ["pr-5", "pr-3"]
    failed, _ = views.arrange(records, 1000.0, 60.0, views.parse_filter("failed"))
    assert [r.id for r in failed] == ["pr-4"]
    assert views.parse_filter("<script>") == "all"


def test_a_row_says_when_the_last_deploy_ended_once_the_record_does() -> None:
    """The record is stored before its status line: a running record ends the deploy."""
    deploy = views.Deploy(SHA, started=100.0)
    running = views.row(record(1, "running", updated=130.0), 200.0, deploy, None)
    building = views.row(record(1, "building", updated=130.0), 200.0, deploy, None)
    assert (running["duration"], building["duration"]) == ("30s", "")
    assert running["serving"] and not building["serving"]


def test_auth_admins_and_previews_history_are_read() -> None:
    """`[auth] admins` and `[previews] history` (default 7d); bad values name the key."""
    config = parse_config({"auth": {"admins": ["alice"]}, "previews": {"history": "2d"}})
    assert config.auth.admins == ("alice",) and config.previews.history == 2 * 86400
    assert parse_config({}).previews.history == 7 * 86400
    with pytest.raises(ConfigError, match="admins"):
        parse_config({"auth": {"admins": "alice"}})
    with pytest.raises(ConfigError, match="history"):
        parse_config({"previews": {"history": "soon"}})


@pytest.mark.parametrize(
    ("before", "after", "new"),
    [
        ([], ["a", "b"], ["a", "b"]),
        (["a", "b"], ["a", "b"], []),
        (["a", "b"], ["a", "b", "c"], ["c"]),
        (["a", "b", "c"], ["b", "c", "d", "e"], ["d", "e"]),  # the tail scrolled
        (["x", "y"], ["p", "q"], ["p", "q"]),  # no overlap: everything is new
    ],
)
def test_new_lines_of_a_later_tail(before: list[str], after: list[str], new: list[str]) -> None:
    """What a second read of a container's output tail adds to the first."""
    assert views.new_lines(before, after) == new


@given(st.lists(st.sampled_from("abc"), max_size=12), st.integers(0, 12), st.integers(1, 12))
def test_new_lines_are_never_more_than_the_last_window(
    output: list[str], cut: int, window: int
) -> None:
    """Two windows of a growing output: what is new is a suffix of the second, never more."""
    cut = min(cut, len(output))
    before, after = output[:cut][-window:], output[-window:]
    new = views.new_lines(before, after)
    assert new == after[len(after) - len(new):]
    if len(output) <= window:  # nothing scrolled out: exactly the growth
        assert new == output[cut:]
