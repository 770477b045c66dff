"""The shared retry policy: exponential growth, the cap, jitter, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prevu.backoff import constant, exponential


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (10_000, 60.0), (0, 1.0)],
)
def test_exponential_grows_and_caps(failures: int, expected: float) -> None:
    """Delays double from 1 s and stop at 60 s, even for absurd failure counts."""
    assert exponential()(failures) == expected


def test_jitter_is_added_after_the_cap() -> None:
    """Jitter spreads retries even once the cap is reached."""
    policy = exponential(initial=5, factor=3, maximum=20, jitter=lambda: 0.5)
    assert [policy(n) for n in (1, 2, 3)] == [5.5, 15.5, 20.5]


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"factor": 0.5}, {"initial": 10, "maximum": 5}]
)
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    """A policy that would never wait, shrink, or cap below its start is a ValueError."""
    with pytest.raises(ValueError):
        exponential(**kwargs)


@given(st.integers(min_value=1, max_value=10**6))
def test_exponential_is_monotonic_and_bounded(failures: int) -> None:
    """More failures never wait less, and never more than the cap."""
    policy = exponential(initial=0.5, factor=1.5, maximum=300)
    assert policy(failures) <= policy(failures + 1) <= 300


def test_constant() -> None:
    """A constant policy answers the same delay; a negative one is refused."""
    assert constant(2.5)(1) == constant(2.5)(99) == 2.5
    with pytest.raises(ValueError):
        constant(-1)
