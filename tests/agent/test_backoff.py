"""Reconnect backoff: the documented invariants as properties, plus the config checks."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.backoff import Backoff, BackoffTimer

# No deadline: the machine is small and shared, and timing belongs in benchmarks.
PROPERTY = settings(max_examples=300, deadline=None)


@st.composite
def policies(draw: st.DrawFn) -> Backoff:
    initial = draw(st.floats(min_value=0.001, max_value=100.0))
    return Backoff(
        initial_seconds=initial,
        max_seconds=draw(st.floats(min_value=initial, max_value=10_000.0)),
        multiplier=draw(st.floats(min_value=1.0, max_value=10.0)),
        jitter=draw(st.one_of(st.just("full"), st.floats(min_value=0.0, max_value=1.0))),
    )


attempts = st.integers(min_value=0, max_value=10_000)
seeds = st.integers(min_value=0, max_value=2**32)


@PROPERTY
@given(policy=policies(), attempt=attempts, seed=seeds)
def test_delay_is_never_negative_and_never_exceeds_max(policy: Backoff, attempt: int, seed: int) -> None:
    """Every delay lies in [0, max_seconds], for any attempt number however large."""
    assert 0.0 <= policy.delay(attempt, random.Random(seed)) <= policy.max_seconds


@PROPERTY
@given(policy=policies(), attempt=attempts, seed=seeds)
def test_jitter_takes_at_most_its_fraction_of_the_ceiling(policy: Backoff, attempt: int, seed: int) -> None:
    """With jitter fraction j the delay is at least (1 - j) times the attempt's ceiling."""
    ceiling = policy.ceiling(attempt)
    delay = policy.delay(attempt, random.Random(seed))
    assert ceiling * (1.0 - policy.jitter_fraction) - 1e-9 <= delay <= ceiling


@PROPERTY
@given(policy=policies(), first=attempts, later=attempts, seed=seeds)
def test_delay_grows_with_attempt_for_the_same_draw(policy: Backoff, first: int, later: int, seed: int) -> None:
    """For the same random draw a later attempt never waits less, so the expected delay never falls."""
    first, later = sorted((first, later))
    assert policy.ceiling(first) <= policy.ceiling(later)
    assert policy.delay(first, random.Random(seed)) <= policy.delay(later, random.Random(seed))


def test_mean_delay_doubles_until_the_cap() -> None:
    """Averaged over many seeded draws, full-jitter delays are half the ceiling: 0.25 s, 0.5 s, ... 15 s."""
    policy = Backoff()
    rng = random.Random(7)
    means = [sum(policy.delay(attempt, rng) for _ in range(4000)) / 4000 for attempt in range(9)]
    expected = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert means == pytest.approx(expected, rel=0.05)


def test_seeded_delays_are_reproducible() -> None:
    """Two timers with equally seeded rngs hand out identical delays."""
    one, two = BackoffTimer(rng=random.Random(42)), BackoffTimer(rng=random.Random(42))
    assert [one.next_delay() for _ in range(20)] == [two.next_delay() for _ in range(20)]


def test_no_jitter_gives_the_exact_capped_exponential() -> None:
    """With jitter 0 the delays are initial * multiplier ** attempt, capped at max."""
    timer = BackoffTimer(Backoff(initial_seconds=1.0, max_seconds=10.0, jitter=0.0), rng=random.Random(0))
    assert [timer.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@PROPERTY
@given(policy=policies(), failures=st.integers(min_value=1, max_value=200), seed=seeds)
def test_reset_restores_the_first_attempt(policy: Backoff, failures: int, seed: int) -> None:
    """After any number of failures, reset() makes the next delay come from attempt 0 again."""
    timer = BackoffTimer(policy, rng=random.Random(seed))
    for _ in range(failures):
        timer.next_delay()
    timer.reset()
    assert timer.attempt == 0
    assert timer.next_delay() <= policy.initial_seconds


@PROPERTY
@given(
    initial=st.floats(min_value=0.001, max_value=100.0),
    ratio=st.floats(min_value=1.0, max_value=1e6),
    multiplier=st.one_of(st.just(1.0), st.floats(min_value=1.1, max_value=10.0)),
    seed=seeds,
)
def test_attempt_counter_stops_once_the_cap_is_reached(
    initial: float, ratio: float, multiplier: float, seed: int
) -> None:
    """A timer that keeps failing stops counting once its ceiling is the cap (at once if multiplier is 1)."""
    policy = Backoff(initial_seconds=initial, max_seconds=initial * ratio, multiplier=multiplier)
    timer = BackoffTimer(policy, rng=random.Random(seed))
    for _ in range(500):  # 1.1 ** 500 > 1e20: far past any ratio drawn here
        timer.next_delay()
    held = timer.attempt
    timer.next_delay()
    assert timer.attempt == held
    if multiplier == 1.0:
        assert held == 0
    else:
        assert policy.ceiling(held) == policy.max_seconds


def test_huge_attempt_numbers_do_not_overflow() -> None:
    """An attempt number far beyond float range still gives the capped delay."""
    assert Backoff(jitter=0.0).delay(10**30, random.Random(0)) == 30.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_seconds": 0.0},
        {"initial_seconds": -1.0},
        {"initial_seconds": float("nan")},
        {"max_seconds": float("inf")},
        {"initial_seconds": 5.0, "max_seconds": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"jitter": "half"},
        {"jitter": True},
    ],
)
def test_invalid_policy_is_rejected(kwargs: dict[str, object]) -> None:
    """A non-positive start, max below start, shrinking multiplier or bad jitter raises ValueError."""
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_negative_attempt_is_rejected() -> None:
    """Attempt numbers start at 0; a negative one raises ValueError."""
    with pytest.raises(ValueError, match="attempt"):
        Backoff().delay(-1, random.Random(0))
