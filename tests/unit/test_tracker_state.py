"""streamd.analytics.state: a StreamAnalytics restored from its snapshot continues exactly as one that never stopped."""

from __future__ import annotations

import numpy as np
import pytest
from trackers.core.bytetrack.tracklet import ByteTrackTracklet

from streamd.analytics.state import (STATE_VERSION, TRACKLET_FIELDS, StateError, StreamCheckpoint, decode_checkpoint,
                                     encode_checkpoint)
from streamd.analytics.stream import StreamAnalytics, merge_cross_class
from streamd.config.models import PipelineConfig

CLASSES = ["box", "bottle", "can"]
FPS = 30.0


def pipeline() -> PipelineConfig:
    return PipelineConfig.model_validate({
        "model": "conveyor.onnx", "confidence": 0.35, "tracker": {"lost_track_s": 0.5},
        "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}],
        "zones": [{"name": "middle", "polygon": [[200, 0], [440, 0], [440, 360], [200, 360]], "anchor": "center"}],
    })


def recorded_sequence(seed: int = 7, frames: int = 300) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Detections of products moving right along three lanes, as a noisy detector gives them: jitter, missed
    frames, low-confidence frames and now and then a second box of another class on the same product."""
    rng = np.random.default_rng(seed)
    products = [(start, lane, speed, cls) for start, lane, speed, cls in zip(
        np.sort(rng.uniform(0, frames - 60, 24)), rng.integers(0, 3, 24), rng.uniform(4, 9, 24), rng.integers(0, 3, 24))]
    out = []
    for f in range(frames):
        boxes, conf, cls = [], [], []
        for start, lane, speed, c in products:
            x = -60 + (f - start) * speed
            if f < start or x > 700 or rng.random() < 0.05:
                continue
            y = 40 + lane * 110
            box = np.array([x, y, x + 60, y + 70]) + rng.normal(0, 1.5, 4)
            boxes.append(box)
            conf.append(rng.uniform(0.3, 0.95))
            cls.append(c)
            if rng.random() < 0.1:  # a class-aware-NMS duplicate
                boxes.append(box + rng.normal(0, 1.0, 4))
                conf.append(rng.uniform(0.3, 0.6))
                cls.append((c + 1) % 3)
        out.append((np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(conf, np.float32),
                    np.asarray(cls, np.int64), f / FPS))
    return out


def run(analytics: StreamAnalytics, frames: list, first: int = 0) -> list[tuple]:
    events: list[tuple] = []
    for i, (xyxy, conf, cls, pts) in enumerate(frames, start=first):
        result = analytics.update(xyxy, conf, cls, pts)
        events += [(i, "line", name, c.track_id, c.class_id, c.direction) for name, c in result.crossings]
        events += [(i, "zone", name, e.kind, e.track_id, e.visit_track, e.class_id, e.t, e.entered_t, e.lost)
                   for name, e in result.zone_events]
        events += [(i, "track", tuple(np.asarray(result.tracked.tracker_id).tolist()),
                    np.asarray(result.tracked.xyxy).round(3).tobytes())]
    return events


def round_trip(analytics: StreamAnalytics) -> StreamAnalytics:
    raw = encode_checkpoint(StreamCheckpoint(version=STATE_VERSION, config=analytics.config_hash, ring="r", seq=1,
                                             frame=1, wall_offset=0.0, analytics=analytics.snapshot()))
    restored = StreamAnalytics(pipeline(), CLASSES)
    restored.restore(decode_checkpoint(raw).analytics)
    return restored


@pytest.mark.parametrize("cut", [1, 37, 150, 151, 299])
def test_restored_analytics_continue_exactly(cut: int) -> None:
    frames = recorded_sequence()
    reference = run(StreamAnalytics(pipeline(), CLASSES), frames)
    assert sum(1 for e in reference if e[1] == "line") >= 15  # the sequence does cross the line
    assert any(e[1] == "zone" for e in reference)

    first = StreamAnalytics(pipeline(), CLASSES)
    before = run(first, frames[:cut])
    after = run(round_trip(first), frames[cut:], first=cut)
    assert before + after == reference


def test_restore_survives_many_restarts() -> None:
    frames = recorded_sequence(seed=11)
    reference = run(StreamAnalytics(pipeline(), CLASSES), frames)
    analytics, events = StreamAnalytics(pipeline(), CLASSES), []
    for start in range(0, len(frames), 13):  # "killed" every 13 frames
        events += run(analytics, frames[start:start + 13], first=start)
        analytics = round_trip(analytics)
    assert events == reference


def test_the_snapshot_covers_every_attribute_of_a_bytetrack_tracklet() -> None:
    # a trackers release that adds per-track state must be looked at before the snapshot claims exactness
    assert set(vars(ByteTrackTracklet(np.array([0.0, 0.0, 1.0, 1.0])))) == TRACKLET_FIELDS


def test_a_state_of_another_version_is_refused() -> None:
    analytics = StreamAnalytics(pipeline(), CLASSES)
    raw = encode_checkpoint(StreamCheckpoint(version=STATE_VERSION + 1, config="", ring="", seq=0, frame=0,
                                             wall_offset=0.0, analytics=analytics.snapshot()))
    with pytest.raises(StateError, match="version"):
        decode_checkpoint(raw)
    with pytest.raises(StateError, match="does not decode"):
        decode_checkpoint(b"\x00garbage")


def test_cross_class_duplicates_merge_and_neighbours_do_not() -> None:
    xyxy = np.array([[100, 100, 200, 180],   # car
                     [102, 101, 201, 182],   # the same vehicle as a truck (IoU ~0.95)
                     [205, 100, 305, 180],   # a bus beside it
                     [100, 100, 200, 180]], np.float32)  # same class, same box: left to the detector's NMS
    conf = np.array([0.6, 0.8, 0.7, 0.5], np.float32)
    cls = np.array([2, 7, 5, 2])
    keep = merge_cross_class(xyxy, conf, cls)
    assert keep.tolist() == [1, 2]  # the truck box wins the vehicle (and drops both car boxes), the bus stays
    assert merge_cross_class(xyxy[[0, 2]], conf[[0, 2]], cls[[0, 2]]).tolist() == [0, 1]
    assert merge_cross_class(xyxy[:0], conf[:0], cls[:0]).tolist() == []
