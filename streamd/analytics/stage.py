"""Analytics process: receives detections of every stream, tracks and counts, sends events to sinks."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from streamd.analytics.state import STATE_VERSION, StateError, StreamCheckpoint, decode_checkpoint, encode_checkpoint
from streamd.analytics.store import CountStore, CrossingRow, ZoneEventRow
from streamd.analytics.stream import StreamAnalytics
from streamd.analytics.zones import ZoneEvent as ZoneChange
from streamd.config.models import PipelineConfig
from streamd.ipc import sockets
from streamd.ipc.ring import ring_generation
from streamd.ipc.messages import (CountUpdate, DetectionTally, Detections, LineCrossing, Reconfigure, StreamCounters, StreamEnd, StreamRemoved,
                                  Track, TrackedFrame, ZoneEvent, encoder, pipeline_decoder)
from streamd.runtime.histogram import Histogram
from streamd.runtime.params import AnalyticsParams, expect, params_from_json
from streamd.runtime.stage import EXIT_OK, Stage


TALLY_EVERY_S = 1.0  # how often detections per stream go to the health stage (starvation check)

def _column(values: np.ndarray | None, size: int) -> np.ndarray:
    """A per-detection column of supervision's Detections; its optional columns may be None."""
    return values if values is not None else np.full(size, -1)


class AnalyticsStage(Stage):
    """params: AnalyticsParams (streamd/runtime/params.py); pipelines and sources can change live."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.analytics_params = expect(self.spec.params, AnalyticsParams)
        self.inbox = sockets.pull(self.ctx, self.spec.endpoints.analytics, hwm=1000)
        self.outbox = sockets.push(self.ctx, self.spec.endpoints.sinks, hwm=10_000)
        # tracked frames for the live preview; a PUB with no subscriber drops them at once, so it costs nothing
        self.preview = sockets.publisher(self.ctx, self.spec.endpoints.preview, hwm=4)
        self.rings: dict[str, str] = {}  # stream -> the ring its current frames come from
        self.streams: dict[str, StreamAnalytics] = {}
        self.stream_pipeline: dict[str, str] = {}  # stream -> the pipeline its analytics state was built from
        self.store = CountStore(self.analytics_params.store, change_feed=self.analytics_params.change_feed)
        self.run_id: str = self.analytics_params.run_id
        # all-time totals, read once and then kept current: the store is not re-aggregated per frame
        self.totals: dict[tuple[str, str, str, str], int] = dict(self.store.counts())
        for (stream, zone, cls), zone_count in self.store.zone_counts().items():
            self.totals[(stream, zone, cls, "enter")] = zone_count.visits
        self.frames: dict[str, int] = {}
        self.crossings: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        # per stream, recent (queue, infer, analyse) durations in ms: where the latency goes
        self.stage_ms: dict[str, deque[tuple[float, float, float]]] = {}
        self.duplicates = 0
        self.unknown_pipeline = 0  # detections of a pipeline this stage does not run (dropped)
        # detections per stream since the last tally to the health stage (detection starvation)
        self.health_out = sockets.push(self.ctx, self.spec.endpoints.health, hwm=100)
        self._tallies: dict[str, list[int]] = {}  # stream -> [detections, frames, t_decoded_ns of the last]
        self._tallied_at = 0.0
        self.stage_hist: dict[str, dict[str, Histogram]] = {}  # stream -> queue / infer / analyse
        self.last_frame: dict[str, tuple[int, float]] = {}  # stream -> (frame index, wall clock - stream time)
        self._retired: deque[str] = deque(maxlen=256)  # rings reloads removed (bounded: ring names are unique)
        self.late_frames = 0

    @property
    def pipelines(self) -> dict[str, PipelineConfig]:
        return self.analytics_params.pipelines

    @property
    def class_names(self) -> dict[str, list[str]]:
        return self.analytics_params.class_names

    @property
    def sources(self) -> dict[str, str]:
        return self.analytics_params.sources

    def _reconfigure(self, msg: Reconfigure) -> None:
        params = params_from_json(AnalyticsParams, msg.params)
        if params == self.analytics_params:
            return
        changed = sorted(n for n in self.pipelines.keys() & params.pipelines.keys()
                         if self.pipelines[n] != params.pipelines[n] or self.class_names[n] != params.class_names[n])
        self.params = self.analytics_params = params
        # a stream on a changed pipeline starts with fresh tracker and counter state (as on a new ring)
        for stream in list(self.streams):
            pipeline = self.stream_pipeline.get(stream)
            if pipeline not in changed and pipeline in params.pipelines:
                continue
            if stream not in params.sources:
                continue  # stopped by the reload: its StreamRemoved says whether to keep its state (a hand-over)
            self._reset(stream)
        self.log.info("reconfigured", pipelines=sorted(params.pipelines), changed=changed,
                      config_hash=self.config_hash())
        self.beat(force=True)  # the supervisor starts the reload's new streams once it sees the new hash

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
                zone_occupancy=self._occupancy(stream) or None,
                stage_hist={k: h.snapshot() for k, h in self.stage_hist.get(stream, {}).items()} or None,
            )
        return out

    def run(self) -> int:
        while True:
            if self.inbox.poll(0 if self.stop.is_set() else 500, zmq.POLLIN):
                msg = pipeline_decoder.decode(self.inbox.recv())
                if isinstance(msg, Detections):
                    self._on_detections(msg)
                elif isinstance(msg, StreamEnd):
                    self._on_end(msg)
                elif isinstance(msg, StreamRemoved):
                    self._remove(msg)
                elif isinstance(msg, Reconfigure):
                    self._reconfigure(msg)
            elif self.stop.is_set():
                return EXIT_OK  # upstream stopped first, so an empty inbox means everything was handled
            self.beat()

    def close(self) -> None:
        self.preview.close(linger=0)
        self.health_out.close(linger=0)
        self.store.close()

    def _tally(self, stream: str, detections: int, t_decoded_ns: int) -> None:
        tally = self._tallies.setdefault(stream, [0, 0, 0])
        tally[0] += detections
        tally[1] += 1
        tally[2] = t_decoded_ns
        now = time.monotonic()
        if now - self._tallied_at < TALLY_EVERY_S:
            return
        self._tallied_at = now
        for name, (found, frames, t_ns) in self._tallies.items():
            try:
                self.health_out.send(encoder.encode(DetectionTally(stream=name, detections=found, frames=frames,
                                                                   t_decoded_ns=t_ns)), zmq.NOBLOCK)
            except zmq.Again:
                pass  # the health stage is restarting: starvation waits for the next tally
        self._tallies.clear()

    def _occupancy(self, stream: str) -> dict[str, int]:
        analytics = self.streams.get(stream)
        if analytics is None:
            return {}
        return {f"{zone.name}/{analytics.class_name(cid)}": n
                for zone in analytics.zones for cid, n in zone.occupancy().items()}

    def _on_end(self, msg: StreamEnd) -> None:
        # a finished file leaves no visit open; a stream that starts again starts with fresh state
        self._reset(msg.stream)
        self.store.finish(msg.stream, epoch=self.analytics_params.epochs.get(msg.stream))
        self._send(encoder.encode(msg))

    def _analytics(self, stream: str, pipeline: str) -> StreamAnalytics:
        analytics = self.streams.get(stream)
        if analytics is None:
            analytics = StreamAnalytics(self.pipelines[pipeline], self.class_names[pipeline])
            self.stream_pipeline[stream] = pipeline
            self.streams[stream] = analytics
        return analytics

    def _open(self, msg: Detections) -> None:
        """Build a stream's analytics on its first frame in this process: from the state stored with its
        checkpoint when this frame continues it (this stage was restarted: the same ring; or the whole daemon
        was, and the file resumes after its checkpoint), else fresh."""
        analytics = self._analytics(msg.stream, msg.pipeline)
        stored = self.store.stream_state(msg.stream)
        if stored is None:
            return
        source, frame, raw = stored
        try:
            checkpoint = decode_checkpoint(raw)
        except StateError as exc:
            self.log.warning("state_unreadable", stream=msg.stream, error=str(exc))
            return
        same_ring = bool(msg.ring) and checkpoint.ring == msg.ring
        resumed = source == self.sources.get(msg.stream, "") and msg.frame_index > frame
        if not (same_ring or resumed) or checkpoint.config != analytics.config_hash:
            return  # a new pass of the source, or the pipeline changed meanwhile: fresh state
        try:
            analytics.restore(checkpoint.analytics)
        except StateError as exc:
            self.log.warning("state_unreadable", stream=msg.stream, error=str(exc))
            self.streams.pop(msg.stream)
            self._analytics(msg.stream, msg.pipeline)
            return
        if same_ring:
            self.last_seq[msg.stream] = checkpoint.seq  # frames up to the checkpoint are replays
        self.last_frame[msg.stream] = (checkpoint.frame, checkpoint.wall_offset)
        # frames between the checkpoint and this one were lost in flight (sent before the kill, never analysed)
        self.log.info("state_restored", stream=msg.stream, frame=checkpoint.frame, next_frame=msg.frame_index,
                      same_ring=same_ring, tracks=len(checkpoint.analytics.tracker.tracks))

    def _checkpoint(self, msg: Detections, analytics: StreamAnalytics, frame: tuple[int, float]) -> bytes:
        return encode_checkpoint(StreamCheckpoint(
            version=STATE_VERSION, config=analytics.config_hash, ring=msg.ring, seq=msg.seq, frame=frame[0],
            wall_offset=frame[1], analytics=analytics.snapshot()))

    def _reset(self, stream: str) -> None:
        """Forget a stream's tracker and counters state (also the stored one); open zone visits end at their
        last sighting."""
        analytics = self.streams.pop(stream, None)
        if analytics is not None and analytics.zones:
            last = self.last_frame.get(stream, (0, 0.0))
            events = [self._zone_event(stream, analytics, zone, change, last) for zone, change in analytics.close()]
            self._record_and_publish(stream, [], events, last[0], clear_state=True)
        else:
            self.store.clear_state(stream, epoch=self.analytics_params.epochs.get(stream))
        self.last_seq.pop(stream, None)
        self.rings.pop(stream, None)

    def _remove(self, msg: StreamRemoved) -> None:
        """A reload stopped the stream. The supervisor tells this stage directly and through inference (which may
        be gone already): the first of the two acts. Frames of the ring still on their way are ignored from now
        on, so nothing recorded for it can overwrite what the stream's next start imports or resets."""
        if msg.ring in self._retired:
            return
        self._retired.append(msg.ring)
        if self.rings.get(msg.stream) == msg.ring and msg.handed_over:
            self._forget(msg.stream)
        elif self.rings.get(msg.stream) == msg.ring:
            self._reset(msg.stream)
        self._send(encoder.encode(msg))

    def _forget(self, stream: str) -> None:
        """The stream moved to another node: drop it here but keep its stored state (tracks in transit, open zone
        visits) and checkpoint, which its new owner continues from."""
        self.streams.pop(stream, None)
        self.last_seq.pop(stream, None)
        self.rings.pop(stream, None)
        self.log.info("state_kept_for_hand_over", stream=stream, frame=self.last_frame.get(stream, (None,))[0])

    def _on_detections(self, msg: Detections) -> None:
        if msg.ring and msg.ring in self._retired:
            self.late_frames += 1  # of a ring a reload removed: its stream is gone or starts again elsewhere
            return
        if msg.ring and self.rings.get(msg.stream) != msg.ring:
            if msg.stream in self.rings:
                self._reset(msg.stream)  # restarted by a reload: a new ring, sequence numbers start over
            self.rings[msg.stream] = msg.ring
        if msg.pipeline not in self.pipelines:
            # The supervisor reconfigures analytics before it starts a stream on a new pipeline, so this is a
            # late frame of a pipeline a reload just removed.
            self.unknown_pipeline += 1
            return
        if msg.stream not in self.streams:
            self._open(msg)
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
                id=f"{msg.stream}/{self._pass(msg.stream)}/{line_name}/{msg.frame_index}/{crossing.track_id}/{crossing.direction}",
                stream=msg.stream, line=line_name, direction=crossing.direction, track_id=crossing.track_id,
                class_id=crossing.class_id, class_name=analytics.class_name(crossing.class_id),
                frame=msg.frame_index, pts_s=msg.pts_s, ts=msg.wall_ts, t_decoded_ns=msg.t_decoded_ns,
                t_analysed_ns=t_analysed,
            )
            for line_name, crossing in result.crossings
        ]
        frame = self.last_frame[msg.stream] = (msg.frame_index, msg.wall_ts - msg.pts_s)
        zone_events = [self._zone_event(msg.stream, analytics, zone, change, frame, msg.t_decoded_ns, t_analysed)
                       for zone, change in result.zone_events]
        self._record_and_publish(msg.stream, events, zone_events, msg.frame_index,
                                 state=self._checkpoint(msg, analytics, frame))
        tracked = result.tracked
        tracks = [
            Track(track_id=int(tid), class_id=int(cid), class_name=analytics.class_name(int(cid)),
                  confidence=round(float(conf), 4), xyxy=tuple(round(float(v), 1) for v in box))  # type: ignore[arg-type]
            for tid, cid, conf, box in zip(_column(tracked.tracker_id, len(tracked)),
                                           _column(tracked.class_id, len(tracked)),
                                           _column(tracked.confidence, len(tracked)), tracked.xyxy)
            if tid >= 0
        ]
        tracked_frame = encoder.encode(TrackedFrame(
            stream=msg.stream, frame=msg.frame_index, pts_s=msg.pts_s, ts=msg.wall_ts, tracks=tracks,
            t_decoded_ns=msg.t_decoded_ns, t_analysed_ns=t_analysed, seq=msg.seq, ring=msg.ring))
        self._send(tracked_frame)
        try:
            self.preview.send_multipart([msg.stream.encode(), tracked_frame], zmq.NOBLOCK)
        except zmq.Again:
            pass
        self.frames[msg.stream] = self.frames.get(msg.stream, 0) + 1
        self._tally(msg.stream, len(xyxy), msg.t_decoded_ns)
        durations = ((msg.t_batched_ns - msg.t_decoded_ns) / 1e6, (msg.t_inferred_ns - msg.t_batched_ns) / 1e6,
                     (t_analysed - msg.t_inferred_ns) / 1e6)
        self.stage_ms.setdefault(msg.stream, deque(maxlen=1000)).append(durations)
        hists = self.stage_hist.setdefault(msg.stream, {k: Histogram() for k in ("queue", "infer", "analyse")})
        for key, value in zip(("queue", "infer", "analyse"), durations):
            hists[key].observe(value)

    def _pass(self, stream: str) -> str:
        """The run and ring generation event ids carry: a file a reload restarts reuses frame indices and track
        ids, and its second pass must not be taken for a replay of the first."""
        generation = ring_generation(self.rings.get(stream, ""))
        return f"{self.run_id}.{generation}" if generation else self.run_id

    def _zone_event(self, stream: str, analytics: StreamAnalytics, zone: str, change: ZoneChange,
                    frame: tuple[int, float], t_decoded_ns: int = 0, t_analysed_ns: int = 0) -> ZoneEvent:
        """frame: (index, wall clock minus stream time) of the frame being analysed."""
        visit_id = f"{stream}/{self._pass(stream)}/{zone}/{change.visit_track}/{round(change.entered_t * 1000)}"
        zone_counter = next(z for z in analytics.zones if z.name == zone)
        return ZoneEvent(
            id=visit_id if change.kind == "enter" else f"{visit_id}/exit", stream=stream, zone=zone,
            event=change.kind, track_id=change.track_id, class_id=change.class_id,
            class_name=analytics.class_name(change.class_id), frame=frame[0], pts_s=change.t,
            ts=frame[1] + change.t, dwell_s=round(change.dwell_s, 3) if change.kind == "exit" else None,
            lost=change.lost,
            occupancy={analytics.class_name(c): n for c, n in zone_counter.occupancy().items()},
            t_decoded_ns=t_decoded_ns, t_analysed_ns=t_analysed_ns,
        )

    def _record_and_publish(self, stream: str, crossings: list[LineCrossing], zone_events: list[ZoneEvent],
                            frame: int, state: bytes | None = None, clear_state: bool = False) -> None:
        # Durable first: events and the frame checkpoint commit together, then they are published.
        added, added_zone = self.store.record(
            [CrossingRow(e.id, e.stream, e.line, e.class_name, e.direction, e.ts, e.frame) for e in crossings],
            stream, self.sources.get(stream, ""), frame,
            [ZoneEventRow(e.id, e.id.removesuffix("/exit"), e.stream, e.zone, e.class_name, e.event, e.ts, e.frame,
                          e.dwell_s) for e in zone_events], state=state, clear_state=clear_state,
            epoch=self.analytics_params.epochs.get(stream))  # fleet: PostgreSQL refuses a stale lease's rows
        new_ids = {r.id for r in added} | {z.id for z in added_zone}
        for event in crossings:
            if event.id in new_ids:  # else recorded by an earlier process, and published then
                self._publish_count(event, event.line, event.direction, "line")
        for zone_event in zone_events:
            if zone_event.id not in new_ids:
                continue
            if zone_event.event == "enter":
                self._publish_count(zone_event, zone_event.zone, "enter", "zone")
            else:
                self._send(encoder.encode(zone_event))

    def _publish_count(self, event: LineCrossing | ZoneEvent, name: str, direction: str, kind: str) -> None:
        key = (event.stream, name, event.class_name, direction)
        self.totals[key] = self.totals.get(key, 0) + 1
        self._send(encoder.encode(event))
        self._send(encoder.encode(CountUpdate(stream=event.stream, line=name, class_name=event.class_name,
                                              direction=direction, total=self.totals[key], ts=event.ts, kind=kind)))
        self.crossings[event.stream] = self.crossings.get(event.stream, 0) + 1

    def _send(self, payload: bytes) -> None:
        while True:
            try:
                self.outbox.send(payload, zmq.NOBLOCK)
                return
            except zmq.Again:
                self.outbox.poll(500, zmq.POLLOUT)
                self.beat()
