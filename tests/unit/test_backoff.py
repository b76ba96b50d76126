"""streamd.runtime.backoff: exponential delays, cap, jitter bounds, reset."""

from __future__ import annotations

import random

import pytest

from streamd.config.models import BackoffConfig
from streamd.runtime.backoff import Backoff


@pytest.mark.parametrize(
    ("initial", "multiplier", "max_s", "expected"),
    [
        (0.5, 2.0, 30.0, [0.5, 1, 2, 4, 8, 16, 30, 30, 30]),
        (1.0, 3.0, 100.0, [1, 3, 9, 27, 81, 100, 100]),
        (2.0, 1.0, 10.0, [2, 2, 2, 2]),  # multiplier 1: constant
        (5.0, 2.0, 4.0, [4, 4, 4]),  # initial above the cap
        (0.1, 10.0, 3600.0, [0.1, 1, 10, 100, 1000, 3600]),
    ],
)
def test_delays_grow_by_the_multiplier_up_to_the_cap(initial, multiplier, max_s, expected) -> None:
    b = Backoff(BackoffConfig(initial_s=initial, multiplier=multiplier, max_s=max_s, jitter=0))
    delays = [b.next_delay() for _ in expected]
    assert delays == pytest.approx(expected)
    assert b.attempt == len(expected)


@pytest.mark.parametrize("jitter", [0.1, 0.2, 0.5, 1.0])
def test_jitter_stays_within_bounds(jitter: float) -> None:
    cfg = BackoffConfig(initial_s=1.0, multiplier=2.0, max_s=8.0, jitter=jitter)
    rng = random.Random(1234)
    spread = set()
    for _ in range(50):
        b = Backoff(cfg, rng)
        for base in (1, 2, 4, 8, 8):
            d = b.next_delay()
            assert base * (1 - jitter) - 1e-9 <= d <= base * (1 + jitter) + 1e-9
            assert d >= 0
            spread.add(round(d / base, 6))
    assert len(spread) > 100  # it really is random
    assert min(spread) < 1 - jitter / 2 and max(spread) > 1 + jitter / 2  # and uses the range


def test_seeded_rng_is_reproducible() -> None:
    cfg = BackoffConfig(initial_s=0.5, multiplier=2.0, max_s=30, jitter=0.3)
    a = Backoff(cfg, random.Random(7))
    b = Backoff(cfg, random.Random(7))
    assert [a.next_delay() for _ in range(8)] == [b.next_delay() for _ in range(8)]


def test_reset_starts_again_at_the_initial_delay() -> None:
    b = Backoff(BackoffConfig(initial_s=0.5, multiplier=2.0, max_s=30, jitter=0))
    assert [b.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    b.reset()
    assert b.attempt == 0
    assert [b.next_delay() for _ in range(2)] == [0.5, 1.0]


def test_many_attempts_do_not_overflow() -> None:
    b = Backoff(BackoffConfig(initial_s=0.5, multiplier=2.0, max_s=30, jitter=0.2), random.Random(0))
    delays = [b.next_delay() for _ in range(1100)]
    assert all(24 <= d <= 36 for d in delays[-100:])
