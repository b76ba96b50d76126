"""Fixed-bucket histograms that stages keep and report in heartbeats; the supervisor exports them to Prometheus.

Counts are per bucket (not cumulative) plus one overflow bucket; they only grow, like Prometheus counters, so
a scrape of the supervisor always sees a consistent, monotonic histogram.
"""

from __future__ import annotations

import bisect

LATENCY_BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0, 1000.0, 2500.0)
BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_MS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[list[int], float]:
        return list(self.counts), round(self.sum, 3)
