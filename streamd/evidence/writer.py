"""The evidence writer: a sink in the sinks process that documents every line crossing and zone event.

Frames: analytics sends each frame's events, then its ``TrackedFrame`` (ring name and seq). An event waits here
for its frame's TrackedFrame (same stream and frame; at most ``WAIT_S`` and ``MAX_PENDING`` events), and the
pixels are copied out of the stream's shared-memory ring at once, on the sinks' thread, before the decoder can
reuse the slot: ``read(seq)``, copy, then ``still_valid(seq)``. A slot overwritten before or during the copy is
a miss (``missed_overwritten``); an event whose frame never came is ``missed_no_frame``; a zone exit of a track
that was lost (its frame is long gone) is ``skipped_lost``.

Work: the copy goes to one worker thread through a bounded queue (``QUEUE_SIZE``; a full queue drops the job,
``dropped_queue``). The worker draws, encodes and writes the JPEGs, builds clips from the decoder's segments
(streamd/evidence/segments.py), records everything in the index and applies retention. Whatever it writes is
announced as an :class:`Evidence` record that the sinks stage hands to the other sinks.

Failures: a write that fails (full disk, unwritable folder) is counted (``failed``) and re-raised from the next
``flush`` on the sinks' thread, so the sink guard marks evidence down, logs it once, counts what is dropped and
re-opens it with backoff. The other sinks and the counts never wait for any of this.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np
import structlog

from streamd.errors import RingError
from streamd.evidence.draw import render
from streamd.evidence.index import EventEvidence, EvidenceIndex
from streamd.evidence.paths import INDEX_FILE, segments_dir
from streamd.evidence.segments import build_clip, covering, list_segments
from streamd.ipc.messages import Evidence, LineCrossing, TrackedFrame, ZoneEvent
from streamd.ipc.ring import FrameRing
from streamd.runtime.params import StreamEvidence
from streamd.sinks.base import SinkMessage

WAIT_S = 2.0  # an event waits this long for its frame's TrackedFrame
MAX_PENDING = 256  # events waiting for their frame, all streams together
QUEUE_SIZE = 64  # copied frames and clip requests waiting for the worker
RECORDS_MAX = 10_000  # Evidence records waiting for the sinks stage
RETENTION_EVERY_S = 5.0
SHUTDOWN_GRACE_S = 5.0  # on close, finish queued work and due clips this long (the supervisor kills at 10 s)
CLIP_MAX_S = 120.0  # merged clips grow no longer than this
CLIP_FINISHED_S = 1.0  # no segment being written for this long: the source ended, build with what exists

Event = LineCrossing | ZoneEvent
COUNTER_NAMES = ("snapshots", "clips", "missed_overwritten", "missed_no_frame", "missed_no_ring", "skipped_lost",
                 "dropped_queue", "dropped_pending", "clip_missing", "failed", "deleted", "bytes",
                 "copy_us", "cpu_us")  # copy_us: ring copies on the sinks' thread; cpu_us: the worker's CPU time


class EvidenceShared:
    """What outlives one writer instance (the guard re-creates it after a failure): counters and records."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[str, int]] = {}
        self.records: deque[Evidence] = deque(maxlen=RECORDS_MAX)
        self.lock = threading.Lock()

    def add(self, stream: str, name: str, n: int = 1) -> None:
        with self.lock:
            table = self.counters.setdefault(stream, dict.fromkeys(COUNTER_NAMES, 0))
            table[name] += n

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {stream: dict(table) for stream, table in self.counters.items()}

    def take_records(self) -> list[Evidence]:
        out = []
        while self.records:
            out.append(self.records.popleft())
        return out


@dataclass
class SnapshotJob:
    tracked: TrackedFrame
    events: list[Event]
    image: np.ndarray


@dataclass
class ClipRequest:
    event: Event
    pts_s: float


@dataclass
class ClipPlan:
    stream: str
    t0: float
    t1: float
    events: list[Event] = field(default_factory=list)
    created: float = 0.0
    updated: float = 0.0


def event_url(event_id: str, kind: str) -> str:
    return f"/api/events/{quote(event_id, safe='')}/{kind}"


def event_name(event: Event) -> str:
    return event.line if isinstance(event, LineCrossing) else event.zone


def event_type(event: Event) -> str:
    return "line_crossing" if isinstance(event, LineCrossing) else "zone_event"


def _file_stem(event_id: str, ts: float) -> str:
    """A file name for an event's files: its time and a digest of its id (an id is never used as a path)."""
    stamp = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y%m%dT%H%M%S%f")[:-3]
    return f"{stamp}-{hashlib.sha256(event_id.encode()).hexdigest()[:16]}"


class EvidenceSink:
    """Sink protocol (streamd/sinks/base.py); see the module docstring."""

    def __init__(self, root: Path, streams: dict[str, StreamEvidence], shared: EvidenceShared):
        self.root = root
        self.streams = streams
        self.shared = shared
        self.log = structlog.get_logger().bind(sink="evidence")
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.write_bytes(b"")  # an unwritable folder fails here, at open, not at the first event
        probe.unlink()
        self.index = EvidenceIndex(root / INDEX_FILE)
        self._pending: dict[str, deque[tuple[float, Event]]] = {}
        self._n_pending = 0
        self._rings: dict[str, FrameRing] = {}
        self._jobs: queue.Queue[SnapshotJob | ClipRequest | None] = queue.Queue(QUEUE_SIZE)
        self._plans: dict[str, list[ClipPlan]] = {}
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._grace_until = 0.0
        self._last_retention = 0.0
        self._thread = threading.Thread(target=self._work, name="evidence", daemon=True)
        self._thread.start()

    # --- Sink protocol (sinks thread) ---------------------------------------------------------------------

    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        if isinstance(message, TrackedFrame):
            self._on_frame(message)
            return
        if not isinstance(message, (LineCrossing, ZoneEvent)):
            return
        settings = self.streams.get(message.stream)
        if settings is None:
            return
        if settings.clips is not None:
            self._submit(message.stream, ClipRequest(message, message.pts_s))
        if not settings.pipeline.evidence.snapshots:
            return
        if isinstance(message, ZoneEvent) and message.lost:
            self.shared.add(message.stream, "skipped_lost")  # its last frame left the ring long ago
            return
        if self._n_pending >= MAX_PENDING:
            self.shared.add(message.stream, "dropped_pending")
            return
        self._pending.setdefault(message.stream, deque()).append((time.monotonic(), message))
        self._n_pending += 1

    def flush(self) -> None:
        now = time.monotonic()
        for stream, waiting in self._pending.items():
            while waiting and now - waiting[0][0] > WAIT_S:
                waiting.popleft()
                self._n_pending -= 1
                self.shared.add(stream, "missed_no_frame")
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        self._grace_until = time.monotonic() + SHUTDOWN_GRACE_S
        self._stop_worker(self._grace_until)
        self._release()
        for stream, numbers in self.shared.snapshot().items():
            self.log.info("evidence_summary", stream=stream, **numbers)

    def discard(self) -> int:
        self._abort.set()
        lost = self._n_pending + self._jobs.qsize()
        self._stop_worker(time.monotonic() + 1.0)
        self._release()
        return lost

    # --- frames (sinks thread) ----------------------------------------------------------------------------

    def _on_frame(self, tracked: TrackedFrame) -> None:
        waiting = self._pending.get(tracked.stream)
        if not waiting:
            return
        events: list[Event] = []
        while waiting and waiting[0][1].frame <= tracked.frame:
            _, event = waiting.popleft()
            self._n_pending -= 1
            if event.frame == tracked.frame:
                events.append(event)
            else:
                self.shared.add(tracked.stream, "missed_no_frame")  # its TrackedFrame went by unseen
        if not events:
            return
        started = time.perf_counter()
        image = self._copy(tracked)
        self.shared.add(tracked.stream, "copy_us", round((time.perf_counter() - started) * 1e6))
        if image is None:
            return
        self._submit(tracked.stream, SnapshotJob(tracked, events, image), len(events))

    def _copy(self, tracked: TrackedFrame) -> np.ndarray | None:
        ring = self._rings.get(tracked.stream)
        if ring is None or ring.name != tracked.ring:
            if ring is not None:
                self._rings.pop(tracked.stream).close()
            try:
                ring = self._rings[tracked.stream] = FrameRing.attach(tracked.ring)
            except (RingError, OSError, ValueError):
                self.shared.add(tracked.stream, "missed_no_ring")
                return None
        found = ring.read(tracked.seq)
        if found is None:
            self.shared.add(tracked.stream, "missed_overwritten")
            return None
        meta, view = found
        image = np.array(view)
        del view
        if not ring.still_valid(tracked.seq) or meta.frame_index != tracked.frame:
            self.shared.add(tracked.stream, "missed_overwritten")
            return None
        return image

    def _submit(self, stream: str, job: SnapshotJob | ClipRequest, n_events: int = 1) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.shared.add(stream, "dropped_queue", n_events)

    # --- worker thread ---------------------------------------------------------------------------------------

    def _work(self) -> None:
        stopping = False
        while not self._abort.is_set():
            try:
                job = self._jobs.get(timeout=0.1)
            except queue.Empty:
                job = None
                if stopping:
                    break
            cpu = time.thread_time()
            try:
                if job is None and not stopping and self._grace_until:
                    stopping = True
                elif isinstance(job, SnapshotJob):
                    self._snapshot(job)
                elif isinstance(job, ClipRequest):
                    self._plan_clip(job)
                built = self._build_due_clips(force=stopping)
                if time.monotonic() - self._last_retention >= RETENTION_EVERY_S:
                    self._last_retention = time.monotonic()
                    self._retention()
                stream = job.tracked.stream if isinstance(job, SnapshotJob) else (
                    job.event.stream if isinstance(job, ClipRequest) else built)
                if stream:
                    self.shared.add(stream, "cpu_us", round((time.thread_time() - cpu) * 1e6))
            except Exception as exc:  # noqa: BLE001 - reported through flush() to the sink guard
                stream = job.tracked.stream if isinstance(job, SnapshotJob) else (
                    job.event.stream if isinstance(job, ClipRequest) else "")
                if stream:
                    self.shared.add(stream, "failed", len(job.events) if isinstance(job, SnapshotJob) else 1)
                if self._error is None:
                    self._error = exc
            if self._grace_until and time.monotonic() > self._grace_until:
                break

    def _stop_worker(self, deadline: float) -> None:
        if not self._grace_until:
            self._grace_until = deadline
        try:
            self._jobs.put(None, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            self._abort.set()
        self._thread.join(max(0.1, deadline - time.monotonic() + 0.5))
        self._abort.set()

    def _release(self) -> None:
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        try:
            self.index.close()
        except Exception:  # noqa: BLE001 - the worker may still hold it for a moment at a kill
            pass

    def _write(self, path: Path, data: bytes) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return len(data)

    def _snapshot(self, job: SnapshotJob) -> None:
        tracked = job.tracked
        settings = self.streams[tracked.stream]
        tracks = {t.track_id: t for t in tracked.tracks}
        day = datetime.fromtimestamp(tracked.ts, timezone.utc).strftime("%Y-%m-%d")
        for event in job.events:
            track = tracks.get(event.track_id)
            box = track.xyxy if track is not None else None
            what = (f"{event.line} {event.direction}" if isinstance(event, LineCrossing)
                    else f"{event.zone} {event.event}")
            stamp = datetime.fromtimestamp(event.ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            pictures = render(job.image.copy() if len(job.events) > 1 else job.image, box,
                              f"#{event.track_id} {event.class_name}",
                              f"{event.stream}  {what}  frame {event.frame}  {stamp} UTC",
                              settings.pipeline, event_name(event), settings.pipeline.evidence)
            stem = _file_stem(event.id, event.ts)
            rel = Path(tracked.stream) / day
            files: dict[str, tuple[str, int]] = {}
            size = self._write(self.root / rel / f"{stem}.jpg", pictures.snapshot)
            files["snapshot"] = (str(rel / f"{stem}.jpg"), size)
            if pictures.crop is not None:
                crop_size = self._write(self.root / rel / f"{stem}-crop.jpg", pictures.crop)
                files["crop"] = (str(rel / f"{stem}-crop.jpg"), crop_size)
            self.index.add_event(EventEvidence(
                event_id=event.id, stream=event.stream, event_type=event_type(event), name=event_name(event),
                ts=event.ts, frame=event.frame, track_id=event.track_id, class_name=event.class_name,
                box=[round(float(v), 1) for v in box] if box is not None else None,
                crop_box=list(pictures.crop_box) if pictures.crop_box is not None else None, files=files))
            total = sum(n for _, n in files.values())
            self.shared.add(event.stream, "snapshots")
            self.shared.add(event.stream, "bytes", total)
            self.shared.records.append(Evidence(
                id=event.id, stream=event.stream, event_type=event_type(event), ts=event.ts,
                snapshot=event_url(event.id, "snapshot.jpg"),
                crop=event_url(event.id, "crop.jpg") if "crop" in files else None, bytes=total))

    # --- clips (worker thread) ----------------------------------------------------------------------------------

    def _plan_clip(self, request: ClipRequest) -> None:
        event = request.event
        clips = self.streams[event.stream].clips
        assert clips is not None
        t0, t1 = request.pts_s - clips.pre_s, request.pts_s + clips.post_s
        now = time.monotonic()
        plans = self._plans.setdefault(event.stream, [])
        for plan in plans:
            if t0 <= plan.t1 and t1 >= plan.t0 and max(t1, plan.t1) - min(t0, plan.t0) <= CLIP_MAX_S:
                plan.t0, plan.t1 = min(plan.t0, t0), max(plan.t1, t1)
                plan.events.append(event)
                plan.updated = now
                return
        plans.append(ClipPlan(event.stream, t0, t1, [event], created=now, updated=now))

    def _build_due_clips(self, force: bool = False) -> str | None:
        """Build the clips that are due; returns a stream that got one (for the CPU account), else None."""
        now = time.monotonic()
        built = None
        for stream, plans in self._plans.items():
            if not plans:
                continue
            clips = self.streams[stream].clips
            assert clips is not None
            folder = segments_dir(self.root, stream)
            segments = list_segments(folder)
            writing = any(p.suffix == ".part" for p in folder.glob("*.part"))
            newest = segments[-1].end_s if segments else float("-inf")
            deadline_s = clips.post_s + 3 * clips.segment_s + 10.0
            for plan in list(plans):
                due = (force or newest >= plan.t1 or now - plan.updated > deadline_s
                       or (not writing and now - plan.updated >= CLIP_FINISHED_S))
                if due:
                    plans.remove(plan)
                    self._build_clip(plan, segments)
                    built = stream
        return built

    def _build_clip(self, plan: ClipPlan, segments: list) -> None:
        chosen = covering(segments, plan.t0, plan.t1)
        if not chosen:
            self.shared.add(plan.stream, "clip_missing", len(plan.events))
            return
        first = plan.events[0]
        rel = Path(plan.stream) / "clips" / f"{_file_stem(first.id, first.ts)}.mp4"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        covered = build_clip(chosen, plan.t0, plan.t1, path)
        if covered is None:
            self.shared.add(plan.stream, "clip_missing", len(plan.events))
            return
        size = path.stat().st_size
        for event in plan.events:  # events without a snapshot still get their row
            if self.index.get(event.id) is None:
                self.index.add_event(EventEvidence(
                    event_id=event.id, stream=event.stream, event_type=event_type(event), name=event_name(event),
                    ts=event.ts, frame=event.frame, track_id=event.track_id, class_name=event.class_name))
        self.index.add_clip(str(rel), plan.stream, size, covered[0], covered[1], [e.id for e in plan.events])
        self.shared.add(plan.stream, "clips")
        self.shared.add(plan.stream, "bytes", size)
        for event in plan.events:
            self.shared.records.append(Evidence(id=event.id, stream=event.stream, event_type=event_type(event),
                                                ts=event.ts, clip=event_url(event.id, "clip.mp4"), bytes=size))

    # --- retention (worker thread) ------------------------------------------------------------------------------

    def _retention(self) -> None:
        for stream, settings in self.streams.items():
            config = settings.pipeline.evidence
            expired = self.index.expired(stream, config.max_age_s, config.max_bytes)
            if not expired:
                continue
            for stored in expired:
                try:
                    (self.root / stored.path).unlink()
                except FileNotFoundError:
                    pass
            self.index.forget([f.path for f in expired])
            self.shared.add(stream, "deleted", len(expired))


def evidence_accepts(message: SinkMessage) -> bool:
    """What the evidence sink counts as dropped while it is down: the events (frames are only its input)."""
    return isinstance(message, (LineCrossing, ZoneEvent))
