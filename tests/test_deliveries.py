"""
Issue 11, kinds 3 and 4 with the orchestrator on fakes: a close is honoured
whatever `[[repos]]` says now, and a delivery is remembered only once acted
on (an ignored one is processed when redelivered; an acted-on one stays a
duplicate). The same inputs on the real engine: tests/test_convergence_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st

from prevu.config import Config, RepoConfig
from prevu.control.webhooks import Receipt
from prevu.forge import policy
from prevu.forge.events import PullRequest, PullRequestEvent
from prevu.forge.github import sign
from prevu.forge.policy import Decision
from tests.test_webhooks import FIXTURES, SECRET, Client, fixture_bytes, make_config, publish

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
