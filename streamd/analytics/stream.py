"""Per-stream analytics: ByteTrack tracking, line counters and zones, one frame at a time, deterministic.

One object, one track: a detector with class-aware NMS may give one object two boxes of different classes (a
car that is also a bit of a truck). Boxes of different classes that overlap by ``CROSS_CLASS_MERGE_IOU`` or
more are merged before tracking, keeping the most confident one (and with it its class); the track's class is
then the one with the most summed confidence over its frames. Different objects side by side overlap far less.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import supervision as sv
from trackers import BIoU, ByteTrackTracker

from streamd.analytics.lines import Crossing, LineCounter
from streamd.analytics.state import AnalyticsState, VoteState, restore_tracker, tracker_state
from streamd.analytics.zones import ZoneCounter, ZoneEvent
from streamd.config.models import PipelineConfig
from streamd.infer.classnames import class_index

TRACKER_REFERENCE_FPS = 30.0  # trackers' lost_track_buffer is counted in 30-fps frames
# Boxes of different classes overlapping this much are one object. Class-aware NMS duplicates overlap by
# 0.7-0.98 (YOLOX-Nano on Traffic.mp4: 112 of 116 overlapping car/truck pairs); distinct neighbours far less.
CROSS_CLASS_MERGE_IOU = 0.7


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes a [n, 4] and b [m, 4]."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def merge_cross_class(xyxy: np.ndarray, confidence: np.ndarray, class_id: np.ndarray,
                      iou: float = CROSS_CLASS_MERGE_IOU) -> np.ndarray:
    """Indices (in input order) of the boxes to keep: of boxes of different classes overlapping by ``iou`` or
    more only the most confident stays. Same-class boxes are left to the detector's NMS. Inputs are not changed."""
    n = len(confidence)
    if n < 2:
        return np.arange(n)
    overlap = box_iou(xyxy.astype(np.float64), xyxy.astype(np.float64))
    other_class = class_id[:, None] != class_id[None, :]
    duplicate = (overlap >= iou) & other_class
    if not duplicate.any():
        return np.arange(n)
    order = np.argsort(-confidence, kind="stable")
    dropped = np.zeros(n, bool)
    for i in order:
        if not dropped[i]:
            dropped |= duplicate[i]
            dropped[i] = False
    return np.flatnonzero(~dropped)


class ClassVote:
    """A track's class is the one with the highest summed confidence over its detections, so a vehicle that
    the detector calls "car" in most frames and "truck" in a few counts as a car. Bounded: tracks unseen for
    ``ttl_s`` are forgotten, least recently seen first."""

    def __init__(self, ttl_s: float, max_tracks: int = 10_000):
        self.ttl_s = ttl_s
        self.max_tracks = max_tracks
        self._votes: OrderedDict[int, tuple[float, dict[int, float]]] = OrderedDict()  # id -> (last seen, votes)

    def __len__(self) -> int:
        return len(self._votes)

    def snapshot(self) -> list[VoteState]:
        return [VoteState(tid, seen, list(votes.items())) for tid, (seen, votes) in self._votes.items()]

    def restore(self, state: list[VoteState]) -> None:
        self._votes = OrderedDict((v.track_id, (v.last_seen, dict(v.votes))) for v in state)

    def update(self, track_ids: np.ndarray, class_ids: np.ndarray, confidence: np.ndarray, t: float) -> np.ndarray:
        voted = class_ids.copy()
        for i, (tid, cid, conf) in enumerate(zip(track_ids.tolist(), class_ids.tolist(), confidence.tolist())):
            if tid < 0:
                continue
            _, votes = self._votes.pop(tid, (t, {}))
            votes[cid] = votes.get(cid, 0.0) + conf
            self._votes[tid] = (t, votes)
            voted[i] = max(votes, key=votes.__getitem__)
        while self._votes:
            tid, (seen, _) = next(iter(self._votes.items()))
            if seen >= t - self.ttl_s and len(self._votes) <= self.max_tracks:
                break
            del self._votes[tid]
        return voted


@dataclass(frozen=True)
class FrameResult:
    tracked: sv.Detections  # with tracker_id; -1 for detections not (yet) part of a confirmed track
    crossings: list[tuple[str, Crossing]]  # (line name, crossing)
    zone_events: list[tuple[str, ZoneEvent]]  # (zone name, event)
    t: float  # the stream time used, monotonic within the stream


class StreamAnalytics:
    def __init__(self, pipeline: PipelineConfig, class_names: list[str]):
        self.class_names = class_names
        # what the state is the state of: a stored state restores only into the same pipeline configuration
        self.config_hash = hashlib.sha256(
            (pipeline.model_dump_json() + "\n" + "\n".join(class_names)).encode()).hexdigest()[:16]
        ids = class_index(class_names)
        cfg = pipeline.tracker
        self.tracker = ByteTrackTracker(
            lost_track_buffer=max(1, round(cfg.lost_track_s * TRACKER_REFERENCE_FPS)),
            frame_rate=TRACKER_REFERENCE_FPS,
            track_activation_threshold=cfg.activation_threshold,
            minimum_consecutive_frames=cfg.min_consecutive_frames,
            minimum_iou_threshold=cfg.min_iou,
            high_conf_det_threshold=cfg.high_confidence,
            iou=BIoU(buffer_ratio=cfg.iou_buffer),
        )
        self.lines = [
            LineCounter(
                line.name, line.points[0], line.points[1],
                class_ids=frozenset(ids[c] for c in line.classes) if line.classes else None,
                anchor=line.anchor, min_distance_px=line.min_distance_px,
                track_ttl_s=max(30.0, cfg.lost_track_s * 4),
            )
            for line in pipeline.lines
        ]
        self.zones = [
            ZoneCounter(
                zone.name, [tuple(p) for p in zone.polygon],  # type: ignore[misc]
                class_ids=frozenset(ids[c] for c in zone.classes) if zone.classes else None,
                anchor=zone.anchor, min_distance_px=zone.min_distance_px,
                # a track the tracker still keeps (lost_track_s) must not exit and re-enter
                exit_after_lost_s=max(zone.exit_after_lost_s, cfg.lost_track_s),
            )
            for zone in pipeline.zones
        ]
        self.class_vote = ClassVote(ttl_s=max(30.0, cfg.lost_track_s * 4))
        self._last_pts: float | None = None
        self._offset = 0.0

    def snapshot(self) -> AnalyticsState:
        """The state after the last frame, as plain data (see streamd.analytics.state)."""
        return AnalyticsState(last_pts=self._last_pts, offset=self._offset, tracker=tracker_state(self.tracker),
                              votes=self.class_vote.snapshot(), lines=[line.snapshot() for line in self.lines],
                              zones=[zone.snapshot() for zone in self.zones])

    def restore(self, state: AnalyticsState) -> None:
        """Continue from ``state`` (taken by :meth:`snapshot`). Lines and zones are matched by name: one a
        reload added starts empty, one it removed is dropped."""
        restore_tracker(self.tracker, state.tracker)
        self.class_vote.restore(state.votes)
        lines = {line.name: line for line in state.lines}
        for line in self.lines:
            if line.name in lines:
                line.restore(lines[line.name])
        zones = {zone.name: zone for zone in state.zones}
        for zone in self.zones:
            if zone.name in zones:
                zone.restore(zones[zone.name])
        self._last_pts, self._offset = state.last_pts, state.offset

    def update(self, xyxy: np.ndarray, confidence: np.ndarray, class_id: np.ndarray, pts_s: float) -> FrameResult:
        t = self._timeline(pts_s)
        keep = merge_cross_class(xyxy, confidence, class_id)
        if len(keep) < len(confidence):
            xyxy, confidence, class_id = xyxy[keep], confidence[keep], class_id[keep]
        detections = sv.Detections(xyxy=xyxy.astype(np.float32), confidence=confidence, class_id=class_id)
        tracked = self.tracker.update(detections, timestamp=t)
        if len(tracked):
            ids = np.asarray(tracked.tracker_id, dtype=np.int64)
            cls = self.class_vote.update(ids, np.asarray(tracked.class_id, dtype=np.int64),
                                         np.asarray(tracked.confidence, dtype=np.float64), t)
            tracked.class_id = cls
            xyxy_tracked = tracked.xyxy
        else:
            ids, cls, xyxy_tracked = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4))
        # counters see every frame, empty ones too: that is how lost tracks age out
        crossings = [(line.name, c) for line in self.lines for c in line.update(ids, xyxy_tracked, cls, t)]
        zone_events = [(zone.name, e) for zone in self.zones for e in zone.update(ids, xyxy_tracked, cls, t)]
        return FrameResult(tracked=tracked, crossings=crossings, zone_events=zone_events, t=t)

    def close(self) -> list[tuple[str, ZoneEvent]]:
        """The stream ended: open zone visits end at their tracks' last sightings."""
        return [(zone.name, e) for zone in self.zones for e in zone.close()]

    def _timeline(self, pts_s: float) -> float:
        """Stream time that never runs backwards (a reconnected camera may restart its clock at 0)."""
        t = pts_s + self._offset
        if self._last_pts is not None and t <= self._last_pts:
            self._offset += self._last_pts - t + 1e-3
            t = pts_s + self._offset
        self._last_pts = t
        return t

    def class_name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else f"class_{class_id}"
