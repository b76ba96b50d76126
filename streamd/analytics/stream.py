"""Per-stream analytics: ByteTrack tracking, line counters and zones, one frame at a time, deterministic."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import supervision as sv
from trackers import BIoU, ByteTrackTracker

from streamd.analytics.lines import Crossing, LineCounter
from streamd.analytics.zones import ZoneCounter, ZoneEvent
from streamd.config.models import PipelineConfig
from streamd.infer.classnames import class_index

TRACKER_REFERENCE_FPS = 30.0  # trackers' lost_track_buffer is counted in 30-fps frames


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

    def update(self, xyxy: np.ndarray, confidence: np.ndarray, class_id: np.ndarray, pts_s: float) -> FrameResult:
        t = self._timeline(pts_s)
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
