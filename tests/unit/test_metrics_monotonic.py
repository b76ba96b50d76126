"""The numbers the API exports do not lie across a stage restart: fps is never negative and does not spike,
Prometheus counters and histograms never decrease (streamd.api.snapshot.FrameRate, streamd.api.metrics)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamd.api.metrics import Monotonic, registry_for
from streamd.api.snapshot import FPS_WINDOW_S, FrameRate
from streamd.ipc.messages import Heartbeat, OutboxCounters
from streamd.runtime.histogram import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_MS

# --- FrameRate -------------------------------------------------------------------------------------------------


def feed(rate: FrameRate, counters: list[int], dt: float = 0.2, stream: str = "cam") -> list[float]:
    return [rate.update(stream, frames, i * dt) for i, frames in enumerate(counters)]


def test_fps_steady() -> None:
    out = feed(FrameRate(), [i * 5 for i in range(60)])  # 5 frames per 0.2 s
    assert out[0] == 0.0 and all(v == pytest.approx(25.0) for v in out[1:])


@pytest.mark.parametrize("reset_to", [0, 3, 40])
def test_fps_across_a_counter_reset_is_never_negative_nor_a_spike(reset_to: int) -> None:
    """25 fps; at step 30 the analytics stage restarts and its counter starts over near 0 (or not quite)."""
    before = [i * 5 for i in range(30)]
    after = [reset_to + i * 5 for i in range(30)]
    out = feed(FrameRate(), before + after)
    assert min(out) >= 0.0
    assert max(out) <= 25.0 * 1.5, out  # at most the frames really counted over the window
    assert out[-1] == pytest.approx(25.0)


def test_fps_for_a_counter_that_drops_to_zero_and_stays() -> None:
    """A stage that died: its counters are gone (0) until it is back: the rate falls to 0, never below."""
    out = feed(FrameRate(), [i * 5 for i in range(30)] + [0] * 40)
    assert min(out) >= 0.0 and out[-1] == 0.0


def test_fps_with_the_clock_stepping_back() -> None:
    rate = FrameRate()
    for i in range(20):
        rate.update("cam", i * 5, 100 + i * 0.2)
    assert rate.update("cam", 105, 50.0) == 0.0  # window restarted, no division by a negative time
    assert rate.update("cam", 110, 50.2) == pytest.approx(25.0)


def test_fps_forget_starts_a_re_added_stream_afresh() -> None:
    rate = FrameRate()
    feed(rate, [i * 5 for i in range(30)])
    rate.forget(set())
    assert rate.update("cam", 7, 100.0) == 0.0
    assert rate.update("cam", 12, 100.2) == pytest.approx(25.0)


def test_fps_window_is_bounded() -> None:
    rate = FrameRate()
    n = int(10 * FPS_WINDOW_S / 0.2)
    out = feed(rate, [i * 5 for i in range(n)])
    assert out[-1] == pytest.approx(25.0)


# --- Monotonic -------------------------------------------------------------------------------------------------


def test_monotonic_counter_through_resets() -> None:
    mono = Monotonic()
    raw = [0, 5, 10, 2, 7, 7, 0, 1]  # two resets
    exported = [mono.value(("c",), v) for v in raw]
    assert exported == [0, 5, 10, 12, 17, 17, 17, 18]
    assert all(b >= a for a, b in zip(exported, exported[1:]))


def test_monotonic_vector_resets_together() -> None:
    mono = Monotonic()
    assert mono.values(("h",), [3, 1, 10.0]) == [3, 1, 10.0]
    # one element went down: the source started over, every element's old value goes into the offset
    assert mono.values(("h",), [0, 2, 1.0]) == [3, 3, 11.0]
    assert mono.values(("h",), [1, 2, 2.0]) == [4, 3, 12.0]


def test_monotonic_series_are_independent_and_expire() -> None:
    now = [0.0]
    mono = Monotonic(ttl_s=10, clock=lambda: now[0])
    mono.value(("a",), 10)
    mono.value(("b",), 10)
    now[0] = 5
    mono.value(("a",), 1)
    now[0] = 12
    mono.expire()
    assert len(mono) == 1  # b was not seen for 12 s
    assert mono.value(("a",), 2) == 12
    assert mono.value(("b",), 1) == 1


# --- the exported metrics ----------------------------------------------------------------------------------------


def hist(n: int, buckets: tuple[float, ...], value_bucket: int = 2, each_ms: float = 4.0) -> tuple[list[int], float]:
    counts = [0] * (len(buckets) + 1)
    counts[value_bucket] = n
    return counts, n * each_ms


def snapshot(k: int) -> dict[str, Any]:
    """The daemon's snapshot with every counter and histogram at ``k`` (k small again = the stages restarted)."""
    stream = {"fps": 25.0, "frames_decoded": 10 * k, "frames_analysed": 9 * k,
              "dropped": {"stale": k, "overwritten": k // 2}, "reconnects": k // 5, "state": "streaming",
              "queue_depth": 1, "events": 3 * k}
    counters = {"cam": {"latency_hist": hist(9 * k, LATENCY_BUCKETS_MS),
                        "stage_hist": {"infer": hist(9 * k, LATENCY_BUCKETS_MS, 1, 2.0)}}}
    beats = {
        "infer-p": Heartbeat(stage="infer-p", pid=1, streams={}, infer_hist=hist(4 * k, LATENCY_BUCKETS_MS),
                             batch_hist=hist(4 * k, BATCH_SIZE_BUCKETS, 1)),
        "sinks": Heartbeat(stage="sinks", pid=2, streams={}, outboxes={
            "hook": OutboxCounters(depth=1, delivered=3 * k, retries=k, dropped_full=0, rejected=k // 3)}),
    }
    return {"streams": {"cam": stream}, "counters": counters, "heartbeats": beats,
            "stages": {"analytics": {"state": "running", "restarts": k // 10}},
            "reload": {"reloads": k // 7, "failures": k // 9, "ok": True}}


def scrape(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_counters_and_histograms_never_decrease_across_restarts() -> None:
    current: list[dict[str, Any]] = [snapshot(0)]
    registry = registry_for(lambda: current[0])
    previous: dict[Any, float] = {}
    ks = list(range(1, 40)) + list(range(0, 25)) + list(range(2, 30))  # two restarts of every stage
    seen_series = 0
    for k in ks:
        current[0] = snapshot(k)
        now = scrape(registry)
        seen_series = max(seen_series, len(now))
        for key, value in now.items():
            if key in previous:
                assert value >= previous[key], (key, previous[key], value, k)
        previous.update(now)
    assert seen_series > 40  # every family was exported
    # after the resets the totals keep what was counted before them: 39 + 24 + 29 steps of 10 frames
    assert previous[("streamd_stream_frames_total", (("stage", "decoded"), ("stream", "cam")))] == 10 * (39 + 24 + 29)
    # histogram buckets stay cumulative and the count equals the +Inf bucket
    inf = previous[("streamd_stream_latency_seconds_bucket", (("le", "+Inf"), ("stream", "cam")))]
    assert previous[("streamd_stream_latency_seconds_count", (("stream", "cam"),))] == inf == 9 * (39 + 24 + 29)


def test_a_series_that_disappears_during_a_restart_resumes_from_its_total() -> None:
    """A stage restarting has no heartbeat for a moment: its histograms are missing from that scrape."""
    current: list[dict[str, Any]] = [snapshot(20)]
    registry = registry_for(lambda: current[0])
    key = ("streamd_inference_seconds_count", (("stage", "infer-p"),))
    assert scrape(registry)[key] == 80
    gone = snapshot(20)
    gone["heartbeats"] = {}
    current[0] = gone
    assert key not in scrape(registry)
    current[0] = snapshot(1)
    assert scrape(registry)[key] == 84
