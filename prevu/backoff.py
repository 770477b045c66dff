"""
One retry policy for every retrying part of prevu: how long to wait before the
n-th retry.

A policy is a plain `Callable[[int], float]`, as in Twisted's
`ClientService(backoffPolicy=...)` (`twisted/application/_client_service.py`):
given how many attempts have failed so far (1 after the first failure), it
answers the delay in seconds before the next attempt. The orchestrator's
Docker retries, the ACME issuer and the forge API clients all take such a value,
so tests can pass a constant policy and the clock decides the rest.

Pure: no clock, no I/O; jitter is a parameter so that callers choose randomness.
"""

from __future__ import annotations

from collections.abc import Callable

BackoffPolicy = Callable[[int], float]
"""Delay in seconds before the next attempt, given the number of failures so far (>= 1)."""


def exponential(
    initial: float = 1.0,
    factor: float = 2.0,
    maximum: float = 60.0,
    jitter: Callable[[], float] | None = None,
) -> BackoffPolicy:
    """
    `initial * factor ** (failures - 1)`, capped at `maximum`, plus `jitter()`.

    :param initial: seconds before the first retry (> 0).
    :param factor: growth per failure (>= 1).
    :param maximum: the cap in seconds (>= initial), applied before jitter.
    :param jitter: extra seconds added to each delay (for example
        `lambda: random.uniform(0, 1)`), or None for none.
    :raises ValueError: on a non-positive `initial`, a `factor` below 1 or a
        `maximum` below `initial`.
    """
    if initial <= 0:
        raise ValueError(f"initial delay must be positive, not {initial!r}")
    if factor < 1:
        raise ValueError(f"factor must be at least 1, not {factor!r}")
    if maximum < initial:
        raise ValueError(f"maximum {maximum!r} is below the initial delay {initial!r}")

    def policy(failures: int) -> float:
        exponent = max(failures, 1) - 1
        # Exponents past ~1000 overflow a float; the cap is reached long before.
        delay = maximum if exponent > 64 else min(initial * factor**exponent, maximum)
        return delay + (jitter() if jitter is not None else 0.0)

    return policy


def constant(delay: float) -> BackoffPolicy:
    """The same `delay` seconds before every retry (tests, and fixed-interval polling)."""
    if delay < 0:
        raise ValueError(f"delay must not be negative, not {delay!r}")
    return lambda failures: delay
