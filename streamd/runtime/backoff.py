"""Exponential backoff with jitter, shared by source reconnects and stage restarts."""

from __future__ import annotations

import random

from streamd.config.models import BackoffConfig


class Backoff:
    def __init__(self, config: BackoffConfig, rng: random.Random | None = None):
        self._config = config
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        """Delay before the next attempt; grows by ``multiplier`` per call up to ``max_s``, +-jitter."""
        c = self._config
        # grows only until the cap, so a camera retried for months never overflows
        base = min(c.max_s, c.initial_s * c.multiplier ** min(self.attempt, 64))
        self.attempt += 1
        return max(0.0, base * (1 + self._rng.uniform(-c.jitter, c.jitter)))

    def reset(self) -> None:
        self.attempt = 0
