"""Prometheus metrics, collected from the latest snapshot at scrape time (nothing is recorded per frame here:
the stages count, the supervisor merges their heartbeats, this only translates)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from streamd.runtime.histogram import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_MS


def _histogram(family: HistogramMetricFamily, labels: list[str], hist: Any, buckets: tuple[float, ...],
               scale: float) -> None:
    counts, total = hist
    cumulative, running = [], 0
    for bound, count in zip(buckets, counts):
        running += count
        cumulative.append((repr(bound * scale), running))
    running += counts[-1]
    cumulative.append(("+Inf", running))
    family.add_metric(labels, cumulative, total * scale)


class DaemonCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]):
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot()
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
            frames.add_metric([name, "decoded"], s["frames_decoded"])
            frames.add_metric([name, "analysed"], s["frames_analysed"])
            for cause, n in s["dropped"].items():
                dropped.add_metric([name, cause], n)
            reconnects.add_metric([name], s["reconnects"])
            up.add_metric([name, str(s["state"])], 1.0 if s["state"] == "streaming" else 0.0)
            if s.get("queue_depth") is not None:
                queue.add_metric([name], s["queue_depth"])
            events.add_metric([name], s["events"])
            c = counters.get(name, {})
            if c.get("latency_hist"):
                _histogram(latency, [name], c["latency_hist"], LATENCY_BUCKETS_MS, 1e-3)
            for step, hist in (c.get("stage_hist") or {}).items():
                _histogram(stage_latency, [name, step], hist, LATENCY_BUCKETS_MS, 1e-3)
        yield from (fps, frames, dropped, reconnects, up, queue, events, latency, stage_latency)

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
                _histogram(infer, [stage], beat.infer_hist, LATENCY_BUCKETS_MS, 1e-3)
            if beat.batch_hist:
                _histogram(batch, [stage], beat.batch_hist, BATCH_SIZE_BUCKETS, 1.0)
            for sink, ob in beat.outboxes.items():
                outbox_depth.add_metric([sink], ob.depth)
                outbox_age.add_metric([sink], ob.oldest_age_s)
                outbox_up.add_metric([sink], 1.0 if ob.target_up else 0.0)
                for result in ("delivered", "retries", "dropped_full", "rejected"):
                    outbox_events.add_metric([sink, result], getattr(ob, result))
        yield from (infer, batch, outbox_depth, outbox_age, outbox_up, outbox_events)

        stages_up = GaugeMetricFamily("streamd_stage_up", "1 while the stage process runs.", labels=["stage"])
        restarts = CounterMetricFamily("streamd_stage_restarts", "Stage process restarts.", labels=["stage"])
        for stage, info in snap.get("stages", {}).items():
            stages_up.add_metric([stage], 1.0 if info["state"] == "running" else 0.0)
            restarts.add_metric([stage], info["restarts"])
        yield from (stages_up, restarts)

        reload = snap.get("reload", {})
        reloads = CounterMetricFamily("streamd_config_reloads", "Config reloads by result.", labels=["result"])
        reloads.add_metric(["applied"], reload.get("reloads", 0))
        reloads.add_metric(["rejected"], reload.get("failures", 0))
        last_ok = GaugeMetricFamily("streamd_config_last_reload_ok", "1 if the last reload was applied (or none "
                                    "was tried), 0 if the file was rejected and the previous config still runs.")
        last_ok.add_metric([], 1.0 if reload.get("ok", True) else 0.0)
        yield from (reloads, last_ok)


def registry_for(snapshot: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(snapshot))
    return registry
