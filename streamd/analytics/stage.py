"""Analytics process: receives detections of every stream, tracks and counts, sends events to sinks."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from streamd.analytics.store import CountStore, CrossingRow
from streamd.analytics.stream import StreamAnalytics
from streamd.config.models import PipelineConfig
from streamd.ipc import sockets
from streamd.ipc.messages import (CountUpdate, Detections, LineCrossing, StreamCounters, StreamEnd, Track, TrackedFrame, encoder,
                                  pipeline_decoder)
from streamd.runtime.stage import EXIT_OK, Stage


class AnalyticsStage(Stage):
    """params: pipelines ({name: PipelineConfig}), class_names ({pipeline name: [names]}), store (path),
    sources ({stream: source key}), run_id."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.pipelines: dict[str, PipelineConfig] = self.spec.params["pipelines"]
        self.class_names: dict[str, list[str]] = self.spec.params["class_names"]
        self.inbox = sockets.pull(self.ctx, self.spec.endpoints.analytics, hwm=1000)
        self.outbox = sockets.push(self.ctx, self.spec.endpoints.sinks, hwm=10_000)
        self.streams: dict[str, StreamAnalytics] = {}
        self.store = CountStore(self.spec.params["store"])
        self.sources: dict[str, str] = self.spec.params["sources"]
        self.run_id: str = self.spec.params["run_id"]
        # all-time totals, read once and then kept current: the store is not re-aggregated per frame
        self.totals: dict[tuple[str, str, str, str], int] = dict(self.store.counts())
        self.frames: dict[str, int] = {}
        self.crossings: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        # per stream, recent (queue, infer, analyse) durations in ms: where the latency goes
        self.stage_ms: dict[str, deque[tuple[float, float, float]]] = {}
        self.duplicates = 0

    def counters(self) -> dict[str, StreamCounters]:
        out = {}
        for stream, frames in self.frames.items():
            window = np.asarray(self.stage_ms.get(stream) or [(0.0, 0.0, 0.0)])
            p99 = np.percentile(window, 99, axis=0)
            out[stream] = StreamCounters(
                frames_analysed=frames, crossings=self.crossings.get(stream, 0),
                line_counts={f"{line}/{cls}/{direction}": n
                             for (s, line, cls, direction), n in self.totals.items() if s == stream},
                stage_p99_ms={"queue": round(float(p99[0]), 2), "infer": round(float(p99[1]), 2),
                              "analyse": round(float(p99[2]), 2)},
            )
        return out

    def run(self) -> int:
        while True:
            if self.inbox.poll(0 if self.stop.is_set() else 500, zmq.POLLIN):
                msg = pipeline_decoder.decode(self.inbox.recv())
                if isinstance(msg, Detections):
                    self._on_detections(msg)
                elif isinstance(msg, StreamEnd):
                    self.store.finish(msg.stream)
                    self._send(encoder.encode(msg))
            elif self.stop.is_set():
                return EXIT_OK  # upstream stopped first, so an empty inbox means everything was handled
            self.beat()

    def close(self) -> None:
        self.store.close()

    def _analytics(self, stream: str, pipeline: str) -> StreamAnalytics:
        analytics = self.streams.get(stream)
        if analytics is None:
            analytics = StreamAnalytics(self.pipelines[pipeline], self.class_names[pipeline])
            self.streams[stream] = analytics
        return analytics

    def _on_detections(self, msg: Detections) -> None:
        if msg.seq <= self.last_seq.get(msg.stream, 0):
            # A restarted inference stage replays frames it had not released; each frame counts once.
            self.duplicates += 1
            return
        self.last_seq[msg.stream] = msg.seq
        analytics = self._analytics(msg.stream, msg.pipeline)
        xyxy = np.frombuffer(msg.xyxy, "<f4").reshape(-1, 4)
        result = analytics.update(xyxy, np.frombuffer(msg.confidence, "<f4"),
                                  np.frombuffer(msg.class_id, "<i4").astype(np.int64), msg.pts_s)
        t_analysed = time.monotonic_ns()
        events = [
            LineCrossing(
                id=f"{msg.stream}/{self.run_id}/{line_name}/{msg.frame_index}/{crossing.track_id}/{crossing.direction}",
                stream=msg.stream, line=line_name, direction=crossing.direction, track_id=crossing.track_id,
                class_id=crossing.class_id, class_name=analytics.class_name(crossing.class_id),
                frame=msg.frame_index, pts_s=msg.pts_s, ts=msg.wall_ts, t_decoded_ns=msg.t_decoded_ns,
                t_analysed_ns=t_analysed,
            )
            for line_name, crossing in result.crossings
        ]
        # Durable first: crossings and the frame checkpoint commit together, then they are published.
        added = {r.id for r in self.store.record(
            [CrossingRow(e.id, e.stream, e.line, e.class_name, e.direction, e.ts, e.frame) for e in events],
            msg.stream, self.sources.get(msg.stream, ""), msg.frame_index)}
        for event in events:
            if event.id not in added:
                continue  # already recorded by an earlier process: published then
            key = (event.stream, event.line, event.class_name, event.direction)
            self.totals[key] = self.totals.get(key, 0) + 1
            self._send(encoder.encode(event))
            self._send(encoder.encode(CountUpdate(stream=event.stream, line=event.line, class_name=event.class_name,
                                                  direction=event.direction, total=self.totals[key], ts=event.ts)))
            self.crossings[msg.stream] = self.crossings.get(msg.stream, 0) + 1
        tracked = result.tracked
        tracks = [
            Track(track_id=int(tid), class_id=int(cid), class_name=analytics.class_name(int(cid)),
                  confidence=round(float(conf), 4), xyxy=tuple(round(float(v), 1) for v in box))  # type: ignore[arg-type]
            for tid, cid, conf, box in zip(tracked.tracker_id, tracked.class_id, tracked.confidence, tracked.xyxy)
            if tid >= 0
        ]
        self._send(encoder.encode(TrackedFrame(stream=msg.stream, frame=msg.frame_index, pts_s=msg.pts_s,
                                               ts=msg.wall_ts, tracks=tracks, t_decoded_ns=msg.t_decoded_ns,
                                               t_analysed_ns=t_analysed)))
        self.frames[msg.stream] = self.frames.get(msg.stream, 0) + 1
        self.stage_ms.setdefault(msg.stream, deque(maxlen=1000)).append((
            (msg.t_batched_ns - msg.t_decoded_ns) / 1e6, (msg.t_inferred_ns - msg.t_batched_ns) / 1e6,
            (t_analysed - msg.t_inferred_ns) / 1e6,
        ))

    def _send(self, payload: bytes) -> None:
        while True:
            try:
                self.outbox.send(payload, zmq.NOBLOCK)
                return
            except zmq.Again:
                self.outbox.poll(500, zmq.POLLOUT)
                self.beat()
