"""
Shared fixtures. The reactor is never imported at module level here:
pytest-twisted installs it first, fixtures import it lazily.

- `reactor`: the running reactor (pytest-twisted's global one).
- `thread_pool`: a started ThreadPool, like prevu's own, stopped after the test.
- Docker (see tests/support/docker.py): `docker_client`, `busybox_context`,
  and a session-wide cleanup of everything labelled `prevu.test=true`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.docker import busybox_context, docker_cleanup, docker_client  # noqa: F401


@pytest.fixture
def reactor() -> Any:
    """The reactor the tests run on."""
    from twisted.internet import reactor as installed

    return installed


@pytest.fixture
def thread_pool() -> Iterator[Any]:
    """A started thread pool (prevu's own pool in miniature); stopped after the test."""
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=1, maxthreads=4, name="prevu-test")
    pool.start()
    yield pool
    pool.stop()
