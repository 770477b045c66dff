"""
The test runs' Docker cleanup (tests/support/docker.py): at its start a run removes
only objects made over an hour ago, never a live run's objects on the same engine.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from typing import Any

import pytest
import pytest_twisted

from prevu.adapters.docker import DockerEngine
from prevu.ports import BuildRequest
from tests.support.docker import TEST_LABELS, BusyboxContext, made_at, remove_test_objects
from tests.support.timeouts import sleep, within

NEVER_TAGGED = "0001-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("attrs", "inspected", "expected"),
    [
        ({"Created": 1_700_000_000}, None, 1_700_000_000.0),  # container, image listing
        ({"Created": "2023-11-14T22:13:20.123456789Z"}, None, 1_700_000_000.123456),  # network
        ({"CreatedAt": "2023-11-14T22:13:20Z"}, None, 1_700_000_000.0),  # volume
        # a cached BuildKit rebuild: an old Created, tagged a day later
        (
            {"Created": 1_700_000_000},
            {"Metadata": {"LastTagTime": "2023-11-15T22:13:20Z"}},
            1_700_086_400.0,
        ),
        # untagged, never tagged: its Created is all there is
        (
            {"Created": 1_700_000_000},
            {"Metadata": {"LastTagTime": NEVER_TAGGED}, "RepoTags": []},
            1_700_000_000.0,
        ),
        (
            {"Created": 1_700_000_000},
            {"Metadata": {}, "RepoTags": ["<none>:<none>"]},
            1_700_000_000.0,
        ),
        # named by a build that has not yet set its tag time: being made now
        (
            {"Created": 1_700_000_000},
            {"Metadata": {"LastTagTime": NEVER_TAGGED}, "RepoTags": ["prevu/x/pr-1:abc-1"]},
            math.inf,
        ),
    ],
)
def test_made_at_is_the_later_of_creation_and_last_tagging(
    attrs: dict[str, Any], inspected: dict[str, Any] | None, expected: float
) -> None:
    """Objects count from their creation; images from their last tagging when later."""
    assert made_at(attrs, inspected) == pytest.approx(expected)


@pytest.mark.docker
@pytest_twisted.ensureDeferred
async def test_a_cached_rebuild_is_not_taken_for_a_killed_runs_image(
    reactor: Any, thread_pool: Any, busybox_context: BusyboxContext, docker_client: Any
) -> None:
    """An image whose steps were all cached carries the old step's `Created`: the start-up
    sweep of another run still keeps it, and removes the image really built long ago."""
    engine = DockerEngine(reactor, thread_pool, labels=TEST_LABELS, self_container="none")
    nonce = uuid.uuid4().hex[:12]
    # A step of its own: the first build runs it, the second finds it cached.
    step = f'RUN ["/bin/busybox", "true", "{nonce}"]\n'
    context = busybox_context(dockerfile=f"FROM scratch\nCOPY busybox /bin/busybox\n{step}")
    mine = {"prevu.test.cleanup": nonce}

    def request(n: int) -> BuildRequest:
        labels = {**TEST_LABELS, **mine, "n": str(n)}
        return BuildRequest(
            context=str(context), tag=f"prevu-test-cleanup-{nonce}:{n}", labels=labels
        )

    old = await within(engine.build(request(1), lambda line: None), 120)
    await sleep(3.0)
    started = time.time()
    new = await within(engine.build(request(2), lambda line: None), 120)
    try:
        created = docker_client.api.inspect_image(new.id)["Created"]
        assert made_at({"Created": created}) < started, "premise: BuildKit kept the old Created"
        remove_test_objects(docker_client, {"label": f"prevu.test.cleanup={nonce}"}, older_than=2.0)
        left = {
            image["Id"]
            for image in docker_client.api.images(filters={"label": f"prevu.test.cleanup={nonce}"})
        }
        assert left == {new.id}, "the fresh rebuild stays, the old image goes"
    finally:
        for image in (old, new):
            await within(engine.remove_image(image.id), 30)


@pytest.mark.docker
def test_a_fresh_volume_is_kept_by_the_start_up_sweep(docker_client: Any) -> None:
    """A volume made a moment ago (maybe not mounted yet) is kept; its own run removes it."""
    name = f"prevu-test-cleanup-{uuid.uuid4().hex[:12]}"
    mine = {"label": f"prevu.test.cleanup={name}"}
    docker_client.api.create_volume(name, labels={**TEST_LABELS, "prevu.test.cleanup": name})
    try:
        remove_test_objects(docker_client, mine, older_than=3600)
        assert [v.name for v in docker_client.volumes.list(filters=mine)] == [name]
        remove_test_objects(docker_client, mine)
        assert docker_client.volumes.list(filters=mine) == []
    finally:
        with contextlib.suppress(Exception):
            docker_client.api.remove_volume(name, force=True)
