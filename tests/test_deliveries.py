"""
Issue 11, kinds 3 and 4 with the orchestrator on fakes: a close is honoured
whatever `[[repos]]` says now, and a delivery is remembered only once acted
on (an ignored one is processed when redelivered; an acted-on one stays a
duplicate). The same inputs on the real engine: tests/test_convergence_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from prevu.cli import main
from prevu.client import ClientError, parse_pull_request
from prevu.config import Config, RepoConfig, parse_config
from prevu.control.app import ControlApp
from prevu.control.webhooks import Receipt
from prevu.errors import ConfigError
from prevu.forge import policy
from prevu.forge.events import PullRequest, PullRequestEvent
from prevu.forge.github import sign
from prevu.forge.policy import Decision
from prevu.ports import DeliveryEntry, UnverifiedDelivery
from prevu.store import SqliteStore
from tests.support.timeouts import within
from tests.test_webhooks import FIXTURES, SECRET, TOKEN, Client, fixture_bytes, make_config, publish

OPENED = FIXTURES / "github/pull_request-opened.json"
PREVIEW = "pr-2-hello-world"


def test_a_close_of_an_unlisted_repository_is_honoured(tmp_path: Path) -> None:
    """Kind 3: the repository leaves [[repos]] while its preview runs; the close tears it down."""
    client = Client(tmp_path, make_config(tmp_path))
    publish(client)
    assert client.github("pull_request", OPENED.read_bytes(), delivery="open")[0] == 202
    assert client.h.status(PREVIEW) == "running"
    client.webhooks.config = evolve(client.webhooks.config, repos=(RepoConfig("acme/other"),))
    closed = fixture_bytes("github/pull_request-closed.json")
    code, body = client.github("pull_request", closed, delivery="close")
    assert (code, body["status"], body["preview"]) == (202, "queued", PREVIEW)
    client.h.settle()
    assert client.h.status(PREVIEW) == "stopped"
    assert [n for n in client.h.docker.networks if PREVIEW in n] == []
    assert client.h.docker.containers == {}


def test_an_ignored_delivery_is_processed_when_redelivered(tmp_path: Path) -> None:
    """Kind 4: ignored (not listed), config fixed, redelivered: processed; then a duplicate."""
    config = make_config(tmp_path)
    client = Client(tmp_path, evolve(config, repos=(RepoConfig("acme/other"),)))
    publish(client)
    raw = OPENED.read_bytes()
    code, body = client.github("pull_request", raw, delivery="the-one")
    assert (code, body["status"]) == (200, "ignored") and "not listed" in body["reason"]
    client.webhooks.config = config
    code, body = client.github("pull_request", raw, delivery="the-one")
    assert (code, body["status"], body["preview"]) == (202, "queued", PREVIEW)
    assert client.h.status(PREVIEW) == "running"
    code, body = client.github("pull_request", raw, delivery="the-one")
    assert (code, body["status"]) == (200, "duplicate")
    assert len(client.h.docker.builds) == 1


def test_a_delivery_that_failed_before_its_decision_is_processed_again(tmp_path: Path) -> None:
    """A delivery answered 5xx (the orchestrator raised) is not remembered: redelivered, it runs."""
    client = Client(tmp_path, make_config(tmp_path))
    publish(client)
    raw = OPENED.read_bytes()
    broken = _Broken()
    client.webhooks.orchestrator = broken
    headers = {
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": "d-5xx",
        "X-Hub-Signature-256": sign(SECRET, raw),
    }
    code, _, _ = client.request("POST", "/webhooks/github", data=raw, headers=headers)
    assert code == 500 and broken.calls == 1
    client.webhooks.orchestrator = client.h.orchestrator
    code, body = client.github("pull_request", raw, delivery="d-5xx")
    assert (code, body["status"]) == (202, "queued")
    assert client.h.status(PREVIEW) == "running"


class _Broken:
    """An orchestrator whose apply raises (a crash between receipt and decision)."""

    def __init__(self) -> None:
        self.calls = 0

    def apply(self, decision: Decision) -> Receipt:
        self.calls += 1
        raise RuntimeError("disk full")


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    listed=st.booleans(),
    trigger=st.sampled_from(["always", "label"]),
    forks=st.sampled_from(["allow", "deny", "approve"]),
    fork=st.booleans(),
    merged=st.booleans(),
    is_open=st.booleans(),
)
def test_a_close_is_never_gated_by_policy(
    listed: bool, trigger: str, forks: str, fork: bool, merged: bool, is_open: bool
) -> None:
    """Property (kind 3): whatever [[repos]], trigger and forks say, a close is a Destroy."""
    repo = "acme/app"
    entry = RepoConfig(repo if listed else "acme/other", trigger=trigger, forks=forks)  # type: ignore[arg-type]
    config = Config(repos=(entry,))
    pr = PullRequest(
        "github",
        repo,
        7,
        "c" * 40,
        "b",
        "https://x.invalid/a.git",
        "refs/pull/7/head",
        fork=fork,
        open=is_open,
    )
    event = PullRequestEvent("d", "close", pr, "merge" if merged else "closed")
    decision = policy.decide(config, event)
    assert isinstance(decision, policy.Destroy) and decision.pull_request == pr


# --- the trail: GET /api/deliveries and `prevu why` ------------------------------------

A_SHA, B_SHA = "a" * 40, "b" * 40


def labelled(action: str, sha: str, at: str, labels: list[str]) -> bytes:
    return fixture_bytes(
        f"github/pull_request-{action}.json",
        number=2,
        pull_request__number=2,
        pull_request__head__sha=sha,
        pull_request__updated_at=at,
        pull_request__labels=[{"name": name} for name in labels],
    )


@pytest_twisted.ensureDeferred
async def test_why_shows_ignored_queued_superseded_and_duplicate_in_order(
    reactor: Any, tmp_path: Path, capsys: Any
) -> None:
    """One PR's trail through the API and `prevu why`; an unsigned delivery only in its bucket."""
    config = make_config(tmp_path)
    repo = RepoConfig("Codertocat/Hello-World", trigger="label")
    client = Client(tmp_path, evolve(config, repos=(repo,)))
    publish(client, sha=A_SHA)
    opened = labelled("opened", A_SHA, "2026-01-01T10:00:00Z", [])
    assert client.github("pull_request", opened, delivery="g-1")[1]["status"] == "ignored"
    tagged = labelled("labeled", A_SHA, "2026-01-01T10:00:01Z", ["preview"])
    assert client.github("pull_request", tagged, delivery="g-2")[1]["status"] == "queued"
    publish(client, sha=B_SHA)
    pushed = labelled("synchronize", B_SHA, "2026-01-01T10:00:02Z", ["preview"])
    assert client.github("pull_request", pushed, delivery="g-3")[1]["status"] == "queued"
    assert client.github("pull_request", pushed, delivery="g-3")[1]["status"] == "duplicate"
    headers = {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "forged"}
    code, _, _ = client.request("POST", "/webhooks/github", data=b"{not json", headers=headers)
    assert code == 401

    code, _, raw = client.api_call("GET", "/api/deliveries?repo=codertocat/hello-world&number=2")
    trail = json.loads(raw)
    assert code == 200
    assert [(e["delivery"], e["decision"]) for e in trail] == [
        ("g-1", "ignored"), ("g-2", "queued"), ("g-3", "queued"), ("g-3", "duplicate"),
    ]  # fmt: skip
    assert 'trigger = "label"' in trail[0]["reason"]
    assert trail[1]["outcome"] == f"superseded by {B_SHA[:12]}" and trail[2]["outcome"] is None
    assert trail[1]["preview"] == "pr-2-hello-world" and trail[1]["sha"] == A_SHA
    everything = json.loads(client.api_call("GET", "/api/deliveries")[2])
    assert len(everything) == 4 and all(e["delivery"] != "forged" for e in everything)
    code, _, raw = client.api_call("GET", "/api/deliveries/unverified")
    (unverified,) = json.loads(raw)
    assert (unverified["delivery"], unverified["forge"]) == ("forged", "github")
    assert "Signature" in unverified["reason"]
    assert client.api_call("GET", "/api/deliveries?number=x&repo=a/b")[0] == 400

    app = ControlApp(config=client.webhooks.config, webhooks=client.webhooks, previews=client.api)
    port = reactor.listenTCP(0, Site(app.resource()), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        argv = ["why", "Codertocat/Hello-World#2", "--url", url, "--token", TOKEN]
        assert await within(deferToThread(main, argv), 30) == 0
    finally:
        await port.stopListening()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[1] for line in lines] == [
        "github:g-1", "github:g-2", "github:g-3", "github:g-3",
    ]  # fmt: skip
    assert "ignored" in lines[0] and f"superseded by {B_SHA[:12]}" in lines[1]
    assert lines[3].endswith("duplicate  already acted on")


@pytest.mark.parametrize("text", ["acme/shop", "shop#1", "acme/shop#x", "acme/shop#0"])
def test_why_refuses_what_is_not_a_pull_request(text: str) -> None:
    """`prevu why` wants OWNER/REPO#N."""
    with pytest.raises(ClientError, match="OWNER/REPO#NUMBER"):
        parse_pull_request(text)


def test_unverified_bucket_is_bounded_and_rate_limited() -> None:
    """60 a minute, 1000 kept: a flood of forged deliveries cannot fill the disk."""
    clock = Clock()
    store = SqliteStore(":memory:", clock)
    kept = [
        store.record_unverified(UnverifiedDelivery(f"f{i}", "github", clock.seconds(), "p", "bad"))
        for i in range(61)
    ]
    assert kept == [True] * 60 + [False]
    for minute in range(1, 20):
        clock.advance(61)
        for i in range(60):
            entry = UnverifiedDelivery(f"m{minute}-{i}", "github", clock.seconds(), "p", "bad")
            store.record_unverified(entry)
    assert len(store.unverified_deliveries()) == 1000


def test_acted_on_deliveries_are_kept_a_week_whatever_the_bound() -> None:
    """Ids acted on stay duplicates for 7 days even past `max_deliveries`; then they go."""
    clock = Clock()
    store = SqliteStore(":memory:", clock, max_deliveries=10)
    assert store.remember_delivery("old")
    for i in range(250):
        store.remember_delivery(f"d{i}")
    assert store.seen_delivery("old")
    clock.advance(8 * 24 * 3600)
    for i in range(100):
        store.remember_delivery(f"e{i}")
    assert not store.seen_delivery("old") and store.seen_delivery("e99")


def test_deliveries_kept_bounds_the_visible_trail(tmp_path: Path) -> None:
    """`[server] deliveries_kept` (default 10000) bounds the trail; 0 is refused with the key."""
    assert parse_config({}).server.deliveries_kept == 10_000
    config = parse_config({"server": {"deliveries_kept": 3}})
    assert config.server.deliveries_kept == 3
    with pytest.raises(ConfigError) as raised:
        parse_config({"server": {"deliveries_kept": 0}})
    assert raised.value.key == "server.deliveries_kept"
    store = SqliteStore.in_state_dir(str(tmp_path), Clock(), config.server.deliveries_kept)
    for i in range(5):
        entry = DeliveryEntry(f"d{i}", "github", "ping", "", "", 0, "", 0.0, "ignored")
        store.record_delivery(entry)
    assert [e.delivery for e in store.delivery_trail()] == ["d2", "d3", "d4"]
    store.close()
