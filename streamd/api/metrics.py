"""Prometheus metrics, collected from the latest snapshot at scrape time (nothing is recorded per frame here:
the stages count, the supervisor merges their heartbeats, this only translates).

Counters and histograms never decrease, as Prometheus expects, even when the numbers behind them do: a stage
that restarts starts its own counters and histograms over. ``Monotonic`` takes any decrease of a series as such
a reset and from then on adds the value it had before to what it exports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from streamd.runtime.histogram import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_MS


SeriesKey = tuple[str, ...]
HEALTH_LEVELS = {"ok": 0, "warning": 1, "failed": 2}
SERIES_TTL_S = 3600.0  # forget the reset offset of a series not exported for this long (a removed stream)


class Monotonic:
    """Per-series offsets that keep exported counters and histograms monotonic across resets of their source.

    A series is a vector of numbers that only grow (one counter, or a histogram's bucket counts and sum). When
    any element of a series is lower than at the last scrape, the source started over: the values it had are
    added to the series' offset, and the exported value is always the source's value plus the offset.
    """

    def __init__(self, ttl_s: float = SERIES_TTL_S, clock: Callable[[], float] = time.monotonic):
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()  # scrapes may run in more than one thread
        self._last: dict[SeriesKey, tuple[float, ...]] = {}
        self._offset: dict[SeriesKey, tuple[float, ...]] = {}
        self._seen: dict[SeriesKey, float] = {}

    def __len__(self) -> int:
        return len(self._last)

    def values(self, key: SeriesKey, raw: Sequence[float]) -> list[float]:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            offset = self._offset.get(key)
            if offset is None or last is None or len(last) != len(raw):
                offset = tuple(0.0 for _ in raw)
            elif any(r < p for r, p in zip(raw, last)):
                offset = tuple(o + p for o, p in zip(offset, last))
            self._last[key], self._offset[key], self._seen[key] = tuple(raw), offset, now
            return [r + o for r, o in zip(raw, offset)]

    def value(self, key: SeriesKey, raw: float) -> float:
        return self.values(key, (raw,))[0]

    def expire(self) -> None:
        """Drop the state of series not exported for ``ttl_s`` (bounded state with streams coming and going)."""
        cutoff = self._clock() - self._ttl_s
        with self._lock:
            for key in [k for k, t in self._seen.items() if t < cutoff]:
                del self._last[key], self._offset[key], self._seen[key]


def _histogram(family: HistogramMetricFamily, labels: list[str], hist: Any, buckets: tuple[float, ...],
               scale: float, mono: Monotonic) -> None:
    counts, total = hist
    *counts, total = mono.values((family.name, *labels), [*counts, total])
    cumulative, running = [], 0.0
    for bound, count in zip(buckets, counts):
        running += count
        cumulative.append((repr(bound * scale), running))
    running += counts[-1]
    cumulative.append(("+Inf", running))
    family.add_metric(labels, cumulative, total * scale)


def add_count(family: CounterMetricFamily, labels: list[str], value: float, mono: Monotonic) -> None:
    family.add_metric(labels, mono.value((family.name, *labels), float(value)))


class DaemonCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]], mono: Monotonic | None = None):
        self._snapshot = snapshot
        self._mono = mono or Monotonic()

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot()
        mono = self._mono
        mono.expire()
        streams = snap.get("streams", {})
        counters = snap.get("counters", {})
        fps = GaugeMetricFamily("streamd_stream_fps", "Frames analysed per second (last 5 s).", labels=["stream"])
        frames = CounterMetricFamily("streamd_stream_frames", "Frames per stream and stage.", labels=["stream", "stage"])
        dropped = CounterMetricFamily("streamd_stream_dropped_frames", "Frames dropped, by cause: stale (a newer "
                                      "frame replaced it) or overwritten (the ring lapped it).", labels=["stream", "cause"])
        reconnects = CounterMetricFamily("streamd_stream_reconnects", "Source reconnections.", labels=["stream"])
        up = GaugeMetricFamily("streamd_stream_up", "1 while the stream is streaming.", labels=["stream", "state"])
        queue = GaugeMetricFamily("streamd_stream_queue_depth", "Frames in the stream's ring not yet released by "
                                  "inference.", labels=["stream"])
        events = CounterMetricFamily("streamd_stream_events", "Line crossings and zone entries.", labels=["stream"])
        latency = HistogramMetricFamily("streamd_stream_latency_seconds", "End-to-end latency, frame decoded to "
                                        "its record written by the sinks.", labels=["stream"])
        stage_latency = HistogramMetricFamily("streamd_stage_latency_seconds", "Time per pipeline step: queue "
                                              "(decoded to batched), infer, analyse.", labels=["stream", "step"])
        for name, s in streams.items():
            fps.add_metric([name], s["fps"])
            add_count(frames, [name, "decoded"], s["frames_decoded"], mono)
            add_count(frames, [name, "analysed"], s["frames_analysed"], mono)
            add_count(frames, [name, "skipped"], s.get("frames_skipped", 0), mono)
            for cause, n in s["dropped"].items():
                add_count(dropped, [name, cause], n, mono)
            add_count(reconnects, [name], s["reconnects"], mono)
            up.add_metric([name, str(s["state"])], 1.0 if s["state"] == "streaming" else 0.0)
            if s.get("queue_depth") is not None:
                queue.add_metric([name], s["queue_depth"])
            add_count(events, [name], s["events"], mono)
            c = counters.get(name, {})
            if c.get("latency_hist"):
                _histogram(latency, [name], c["latency_hist"], LATENCY_BUCKETS_MS, 1e-3, mono)
            for step, hist in (c.get("stage_hist") or {}).items():
                _histogram(stage_latency, [name, step], hist, LATENCY_BUCKETS_MS, 1e-3, mono)
        yield from (fps, frames, dropped, reconnects, up, queue, events, latency, stage_latency)

        health = GaugeMetricFamily("streamd_camera_health", "Camera health check state: 0 ok, 1 warning, 2 failed.",
                                   labels=["stream", "check"])
        for name, s in streams.items():
            for check, state in (s.get("health") or {}).items():
                health.add_metric([name, check], float(HEALTH_LEVELS.get(state, 0)))
        yield health

        infer = HistogramMetricFamily("streamd_inference_seconds", "ONNX Runtime time per batch.", labels=["stage"])
        batch = HistogramMetricFamily("streamd_batch_size", "Frames per inference batch.", labels=["stage"])
        outbox_depth = GaugeMetricFamily("streamd_sink_outbox_depth", "Events waiting in a sink's outbox.", labels=["sink"])
        outbox_age = GaugeMetricFamily("streamd_sink_outbox_oldest_seconds", "Age of the oldest waiting event.",
                                       labels=["sink"])
        outbox_up = GaugeMetricFamily("streamd_sink_target_up", "1 when the sink's last delivery succeeded.",
                                      labels=["sink"])
        outbox_events = CounterMetricFamily("streamd_sink_events", "Outbox events by result.", labels=["sink", "result"])
        for stage, beat in snap.get("heartbeats", {}).items():
            if beat.infer_hist:
                _histogram(infer, [stage], beat.infer_hist, LATENCY_BUCKETS_MS, 1e-3, mono)
            if beat.batch_hist:
                _histogram(batch, [stage], beat.batch_hist, BATCH_SIZE_BUCKETS, 1.0, mono)
            for sink, ob in beat.outboxes.items():
                outbox_depth.add_metric([sink], ob.depth)
                outbox_age.add_metric([sink], ob.oldest_age_s)
                outbox_up.add_metric([sink], 1.0 if ob.target_up else 0.0)
                for result in ("delivered", "retries", "dropped_full", "rejected"):
                    add_count(outbox_events, [sink, result], getattr(ob, result), mono)
        yield from (infer, batch, outbox_depth, outbox_age, outbox_up, outbox_events)

        sink_up = GaugeMetricFamily("streamd_sink_up", "1 while the sink is open and working; 0 while it is down "
                                    "(being re-opened with backoff).", labels=["sink"])
        sink_dropped = CounterMetricFamily("streamd_sink_dropped", "Events a sink lost: refused while it was down "
                                           "or not yet flushed when it failed.", labels=["sink"])
        for sink, health in snap.get("sinks", {}).items():
            sink_up.add_metric([sink], 1.0 if health["state"] == "up" else 0.0)
            add_count(sink_dropped, [sink], health["dropped"], mono)
        yield from (sink_up, sink_dropped)

        stages_up = GaugeMetricFamily("streamd_stage_up", "1 while the stage process runs.", labels=["stage"])
        restarts = CounterMetricFamily("streamd_stage_restarts", "Stage process restarts.", labels=["stage"])
        for stage, info in snap.get("stages", {}).items():
            stages_up.add_metric([stage], 1.0 if info["state"] == "running" else 0.0)
            add_count(restarts, [stage], info["restarts"], mono)
        yield from (stages_up, restarts)

        reload = snap.get("reload", {})
        reloads = CounterMetricFamily("streamd_config_reloads", "Config reloads by result.", labels=["result"])
        add_count(reloads, ["applied"], reload.get("reloads", 0), mono)
        add_count(reloads, ["rejected"], reload.get("failures", 0), mono)
        last_ok = GaugeMetricFamily("streamd_config_last_reload_ok", "1 if the last reload was applied (or none "
                                    "was tried), 0 if the file was rejected and the previous config still runs.")
        last_ok.add_metric([], 1.0 if reload.get("ok", True) else 0.0)
        yield from (reloads, last_ok)


def registry_for(snapshot: Callable[[], dict[str, Any]],
                 fleet_reader: Callable[[], Any] | None = None) -> CollectorRegistry:
    """``fleet_reader`` returns the streamd.api.fleet.FleetReader of a fleet node (None: not in a fleet)."""
    from streamd.api.fleet_metrics import FleetCollector  # it builds on this module's Monotonic

    mono = Monotonic()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(snapshot, mono))
    registry.register(FleetCollector(snapshot, fleet_reader or (lambda: None), mono))
    return registry
