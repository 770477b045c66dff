"""Every awaited Deferred in a test gets an explicit timeout: `await within(d, 10)`."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred

T = TypeVar("T")


def _reactor() -> Any:
    from twisted.internet import reactor  # installed by pytest-twisted before any test runs

    return reactor


async def within(awaitable: Deferred[T] | Coroutine[Any, Any, T], seconds: float) -> T:
    """Await `awaitable`, cancelling it (TimeoutError) after `seconds`."""
    deferred: Deferred[T] = ensureDeferred(awaitable)
    deferred.addTimeout(seconds, _reactor())
    return await deferred


async def sleep(seconds: float) -> None:
    """Let the reactor run for `seconds`."""
    from twisted.internet.task import deferLater

    await deferLater(_reactor(), seconds, lambda: None)
