"""Per-stream analytics: ByteTrack tracking and line counters, one frame at a time, deterministic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from streamd.analytics.lines import Crossing, LineCounter
from streamd.config.models import PipelineConfig
from streamd.infer.classnames import class_index

TRACKER_REFERENCE_FPS = 30.0  # trackers' lost_track_buffer is counted in 30-fps frames


@dataclass(frozen=True)
class FrameResult:
    tracked: sv.Detections  # with tracker_id; -1 for detections not (yet) part of a confirmed track
    crossings: list[tuple[str, Crossing]]  # (line name, crossing)
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
        self._last_pts: float | None = None
        self._offset = 0.0

    def update(self, xyxy: np.ndarray, confidence: np.ndarray, class_id: np.ndarray, pts_s: float) -> FrameResult:
        t = self._timeline(pts_s)
        detections = sv.Detections(xyxy=xyxy.astype(np.float32), confidence=confidence, class_id=class_id)
        tracked = self.tracker.update(detections, timestamp=t)
        crossings = []
        if len(tracked):
            ids = np.asarray(tracked.tracker_id, dtype=np.int64)
            cls = np.asarray(tracked.class_id, dtype=np.int64)
            for line in self.lines:
                crossings.extend((line.name, c) for c in line.update(ids, tracked.xyxy, cls, t))
        else:
            for line in self.lines:
                line.update(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64), t)
        return FrameResult(tracked=tracked, crossings=crossings, t=t)

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
