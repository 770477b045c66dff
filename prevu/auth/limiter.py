"""
Slowing down password guessing: failed logins counted per user and per client
address over a sliding window. Pure core: `now` is an argument.

After `user_limit` failures for one user name (known or not, so that the
answer does not reveal which names exist) or `address_limit` failures from one
address within `window` seconds, further attempts are refused, without
checking the password, until the oldest failure leaves the window.
"""

from __future__ import annotations

import contextlib
from collections import deque

from attrs import define, field


@define
class LoginLimiter:
    """Counts failed logins; tells how long to wait before the next try."""

    user_limit: int = 5
    address_limit: int = 20
    window: float = 900.0
    max_keys: int = 100_000
    _failures: dict[str, deque[float]] = field(factory=dict)

    def retry_after(self, user: str, address: str, now: float) -> float | None:
        """Seconds to wait before `user` may try again from `address`, or None."""
        waits = [
            self._wait(f"user:{user.lower()}", self.user_limit, now),
            self._wait(f"addr:{address}", self.address_limit, now),
        ]
        longest = max(waits)
        return longest if longest > 0 else None

    def failed(self, user: str, address: str, now: float) -> None:
        """Record one failed attempt."""
        if len(self._failures) >= self.max_keys:
            self._prune(now)
        for key in (f"user:{user.lower()}", f"addr:{address}"):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, user: str, address: str | None = None, at: float | None = None) -> None:
        """
        Forget the failures of `user` after a good login, and the attempt made
        `at` from `address` (counted as failed until the password was checked).
        """
        self._failures.pop(f"user:{user.lower()}", None)
        times = self._failures.get(f"addr:{address}") if address is not None else None
        if times and at is not None:
            with contextlib.suppress(ValueError):
                times.remove(at)

    def _wait(self, key: str, limit: int, now: float) -> float:
        times = self._failures.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < limit:
            return 0.0
        return times[len(times) - limit] + self.window - now

    def _prune(self, now: float) -> None:
        for key in list(self._failures):
            self._wait(key, 1, now)
        if len(self._failures) >= self.max_keys:
            # Under a flood of distinct keys keep the newest half: memory stays bounded.
            newest = sorted(self._failures, key=lambda k: self._failures[k][-1])
            for key in newest[: len(newest) // 2]:
                del self._failures[key]
