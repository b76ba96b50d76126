"""Clips without re-encoding: the decoder's packet hook keeps rolling MP4 segments of the encoded video, and the
evidence writer remuxes the segments that cover an event into one MP4 (faststart, so a browser plays it while
loading).

Segments live in ``<evidence>/segments/<stream>/`` as ``<counter>_<start_ms>_<end_ms>.mp4``: ``counter`` orders
them, start and end are stream time (the ``pts_s`` of the decoder's frames, so an event's ``pts_s`` finds its
segments). A segment is cut at the first keyframe ``segment_s`` after its start and renamed to its final name
only when it is complete, so a reader never sees a half-written one. The decoder keeps what covers
``pre_s + post_s`` plus a margin: the writer builds a clip once ``post_s`` have passed, and needs ``pre_s``
before the event then.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import structlog

from streamd.config.models import ClipConfig

_NAME = re.compile(r"^(\d{8})_(-?\d+)_(-?\d+)\.mp4$")
RETRY_AFTER_FAILURE_S = 10.0


@dataclass(frozen=True)
class Segment:
    path: Path
    counter: int
    start_s: float
    end_s: float


def list_segments(folder: Path) -> list[Segment]:
    """Complete segments in ``folder``, oldest first."""
    out = []
    try:
        names = [p for p in folder.iterdir()]
    except OSError:
        return []
    for path in names:
        match = _NAME.match(path.name)
        if match:
            out.append(Segment(path, int(match[1]), int(match[2]) / 1000, int(match[3]) / 1000))
    return sorted(out, key=lambda s: s.counter)


def keep_seconds(clips: ClipConfig) -> float:
    """Stream time of segments the decoder keeps behind its newest packet."""
    return clips.pre_s + clips.post_s + 3 * clips.segment_s + 5.0


class SegmentRecorder:
    """Decoder hook: ``start(container, pts_offset)`` for each opened source, ``packet(p)`` for every demuxed video
    packet, ``close()`` at the end. It copies each packet (the decoder's own is left untouched) and never raises:
    a failed write (full disk, unwritable folder) is logged once, clips go missing, decoding goes on."""

    def __init__(self, folder: Path, clips: ClipConfig, stream: str):
        self.folder = folder
        self.segment_s = clips.segment_s
        self.keep_s = keep_seconds(clips)
        self.log = structlog.get_logger().bind(stream=stream, folder=str(folder))
        self._in: Any = None
        self._offset = 0.0
        self._out: Any = None
        self._out_stream: Any = None
        self._part: Path | None = None
        self._start = self._end = 0.0
        self._counter = 0
        self._failed_at: float | None = None
        self.segments_written = 0
        self.failures = 0
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():  # a new decoder starts a new timeline: earlier segments would confuse it
                old.unlink()
        except OSError as exc:
            self._fail(exc)

    def start(self, container: av.container.InputContainer, pts_offset: float) -> None:
        self._finish_segment()
        self._in = container.streams.video[0]
        self._offset = pts_offset

    def packet(self, packet: av.Packet) -> None:
        if self._failed_at is not None:
            if time.monotonic() - self._failed_at < RETRY_AFTER_FAILURE_S:
                return
        try:
            self._packet(packet)
        except Exception as exc:  # noqa: BLE001 - evidence never stops the decoder
            self._abandon()
            self._fail(exc)
            return
        if self._failed_at is not None:
            self._failed_at = None
            self.log.info("clip_segments_recovered")

    def close(self) -> None:
        try:
            self._finish_segment()
        except Exception as exc:  # noqa: BLE001
            self._abandon()
            self._fail(exc)

    # ---------------------------------------------------------------------------------------------------

    def _packet(self, packet: av.Packet) -> None:
        if self._in is None or packet.pts is None or packet.size == 0 or packet.time_base is None:
            return
        t = self._offset + float(packet.pts * packet.time_base)
        if self._out is None:
            if not packet.is_keyframe:
                return  # a segment starts at a keyframe
            self._open(t)
        elif packet.is_keyframe and t - self._start >= self.segment_s:
            self._finish_segment()
            self._open(t)
        copy = av.Packet(bytes(packet))
        copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
        copy.duration = packet.duration
        copy.is_keyframe = packet.is_keyframe
        copy.stream = self._out_stream
        self._out.mux(copy)
        duration = float(packet.duration * packet.time_base) if packet.duration else 0.0
        self._end = max(self._end, t + duration)

    def _open(self, t: float) -> None:
        self._counter += 1
        self._part = self.folder / f"{self._counter:08d}.part"
        self._out = av.open(str(self._part), "w", format="mp4")
        self._out_stream = self._out.add_stream_from_template(self._in)
        self._start = self._end = t

    def _finish_segment(self) -> None:
        if self._out is None or self._part is None:
            return
        out, self._out = self._out, None
        out.close()
        final = self.folder / f"{self._counter:08d}_{round(self._start * 1000)}_{round(self._end * 1000)}.mp4"
        self._part.replace(final)
        self._part = None
        self.segments_written += 1
        self._prune()

    def _prune(self) -> None:
        segments = list_segments(self.folder)
        if not segments:
            return
        newest = segments[-1].end_s
        for segment in segments[:-1]:
            if segment.end_s < newest - self.keep_s or segment.end_s > newest + 1:  # old, or of an earlier timeline
                segment.path.unlink(missing_ok=True)

    def _abandon(self) -> None:
        out, self._out = self._out, None
        if out is not None:
            try:
                out.close()
            except Exception:  # noqa: BLE001
                pass
        if self._part is not None:
            try:
                self._part.unlink(missing_ok=True)
            except OSError:
                pass
            self._part = None

    def _fail(self, exc: BaseException) -> None:
        self.failures += 1
        if self._failed_at is None:
            self.log.error("clip_segments_failed", error=f"{type(exc).__name__}: {exc}",
                           reason="clips of this stream are missing until the folder is writable again; "
                                  "decoding and counting go on", retry_in_s=RETRY_AFTER_FAILURE_S)
        self._failed_at = time.monotonic()


def covering(segments: Sequence[Segment], t0: float, t1: float) -> list[Segment]:
    """The newest consecutive run of segments that overlaps [t0, t1]."""
    hits = [s for s in segments if s.end_s > t0 and s.start_s <= t1]
    if not hits:
        return []
    run = [hits[-1]]
    for segment in reversed(hits[:-1]):
        if segment.counter != run[0].counter - 1:
            break
        run.insert(0, segment)
    return run


def build_clip(segments: Sequence[Segment], t0: float, t1: float, out_path: Path) -> tuple[float, float] | None:
    """Remux the packets of ``segments`` from the last keyframe at or before ``t0`` to ``t1`` into one MP4
    (H.264 as it came, faststart). Returns the stream time (start, end) it covers, None when nothing does."""
    packets: list[tuple[float, Any, Fraction, int]] = []  # (stream time, packet, time base, segment)
    template: Any = None
    containers = []
    try:
        for k, segment in enumerate(segments):
            container = av.open(str(segment.path))
            containers.append(container)
            video = container.streams.video[0]
            template = template or video
            first_pts: int | None = None
            for packet in container.demux(video):
                if packet.pts is None or packet.size == 0:
                    continue
                if first_pts is None:
                    first_pts = packet.pts
                assert packet.time_base is not None
                packets.append((segment.start_s + float((packet.pts - first_pts) * packet.time_base), packet,
                                packet.time_base, k))
        if not packets:
            return None
        keyframes = [i for i, (t, p, _, _) in enumerate(packets) if p.is_keyframe and t <= t0 + 1e-6]
        begin = keyframes[-1] if keyframes else next((i for i, (_, p, _, _) in enumerate(packets) if p.is_keyframe), 0)
        last = max((i for i, (t, _, _, _) in enumerate(packets) if t <= t1 + 1e-6), default=begin)
        chosen = packets[begin:last + 1]
        if not chosen:
            return None
        t_start = chosen[0][0]
        tmp = out_path.with_name(out_path.name + ".part")
        end = t_start
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream_from_template(template)
            shifts: dict[int, int] = {}
            for t, packet, tb, k in chosen:
                if k not in shifts:  # segment k's packets keep their spacing, placed at their stream time
                    shifts[k] = round((t - t_start) / tb) - int(packet.pts)
                shift = shifts[k]
                packet.pts = int(packet.pts) + shift
                if packet.dts is not None:
                    packet.dts = int(packet.dts) + shift
                packet.stream = stream
                out.mux(packet)
                end = max(end, t + (float(packet.duration * tb) if packet.duration else 0.0))
        tmp.replace(out_path)
        return t_start, end
    finally:
        for container in containers:
            container.close()
