"""Explicit, versioned snapshot of one stream's analytics state, stored with the stream's frame checkpoint.

A restarted analytics process restores it and continues as if it had never stopped: the same track ids, the
same Kalman predictions, the same line sides and open zone visits, so frames after the checkpoint produce the
same crossings with the same ids. The snapshot is plain data (msgpack via msgspec, no pickle): numbers, and the
Kalman mean and covariance as little-endian float64 bytes, which round-trip bit for bit.

What a ByteTrack tracker holds (``trackers`` 2.6): its tracks in order (each a Kalman filter plus the counters
``tracker_id``, ``age``, ``time_since_update``, ``time_since_update_seconds`` and
``number_of_successful_consecutive_updates``), the next id to allocate and the last timestamp. The Kalman
transition and process-noise matrices are rebuilt from the frame step before every predict, so the filter's
mean and covariance are its whole state.
"""

from __future__ import annotations

import msgspec
import numpy as np
from trackers import ByteTrackTracker
from trackers.core.bytetrack.tracklet import ByteTrackTracklet

STATE_VERSION = 1

# The attributes of a ByteTrack tracklet this snapshot covers; a trackers release that adds one must be looked at
# (tests/unit/test_tracker_state.py checks the set).
TRACKLET_FIELDS = frozenset({"age", "state_estimator", "tracker_id", "time_since_update", "time_since_update_seconds",
                             "number_of_successful_consecutive_updates"})


class StateError(ValueError):
    """A stored snapshot that cannot be restored (another version, or a tracker of another shape)."""


class TrackletState(msgspec.Struct, array_like=True, frozen=True):
    tracker_id: int
    age: int
    time_since_update: int
    time_since_update_s: float
    consecutive_updates: int
    mean: bytes  # Kalman state vector, <f8
    covariance: bytes  # Kalman state covariance, <f8, dim_x x dim_x


class TrackerState(msgspec.Struct, array_like=True, frozen=True):
    next_id: int
    last_timestamp: float | None
    tracks: list[TrackletState]


class LineTrackState(msgspec.Struct, array_like=True, frozen=True):
    track_id: int
    side: int
    last_seen: float
    counted: list[str]
    class_id: int
    anchor: tuple[float, float]


class LineState(msgspec.Struct, array_like=True, frozen=True):
    name: str
    tracks: list[LineTrackState]  # least recently seen first
    counts: list[tuple[int, str, int]]  # (class id, direction, count)
    id_switches: int


class ZoneVisitState(msgspec.Struct, array_like=True, frozen=True):
    track_id: int
    visit_track_id: int
    class_id: int
    inside: bool
    entered_t: float
    last_seen: float
    anchor: tuple[float, float]


class ZoneState(msgspec.Struct, array_like=True, frozen=True):
    name: str
    tracks: list[ZoneVisitState]  # least recently seen first
    visits: list[tuple[int, int]]  # (class id, enter events)
    id_switches: int


class VoteState(msgspec.Struct, array_like=True, frozen=True):
    track_id: int
    last_seen: float
    votes: list[tuple[int, float]]  # (class id, summed confidence), in insertion order


class AnalyticsState(msgspec.Struct, array_like=True, frozen=True):
    """Everything a StreamAnalytics holds between frames."""

    last_pts: float | None
    offset: float
    tracker: TrackerState
    votes: list[VoteState]  # least recently seen first
    lines: list[LineState]
    zones: list[ZoneState]


class StreamCheckpoint(msgspec.Struct, frozen=True):
    """A stream's state after the frame of its checkpoint, and where that frame came from."""

    version: int
    config: str  # StreamAnalytics.config_hash: the pipeline configuration the state belongs to
    ring: str  # the frame ring the frame came from
    seq: int  # its sequence number in that ring: replays up to here are duplicates
    frame: int  # its frame index (the checkpoint's frame)
    wall_offset: float  # wall clock minus stream time of that frame
    analytics: AnalyticsState


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StreamCheckpoint)


def encode_checkpoint(checkpoint: StreamCheckpoint) -> bytes:
    return _encoder.encode(checkpoint)


def decode_checkpoint(raw: bytes) -> StreamCheckpoint:
    try:
        checkpoint = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise StateError(f"stored analytics state does not decode ({exc}); the stream starts with fresh state") from None
    if checkpoint.version != STATE_VERSION:
        raise StateError(f"stored analytics state has version {checkpoint.version}, this build reads "
                         f"{STATE_VERSION}; the stream starts with fresh state")
    return checkpoint


def tracker_state(tracker: ByteTrackTracker) -> TrackerState:
    tracks = []
    for t in tracker.tracks:
        kf = t.state_estimator.kf
        tracks.append(TrackletState(
            tracker_id=int(t.tracker_id), age=int(t.age), time_since_update=int(t.time_since_update),
            time_since_update_s=float(t.time_since_update_seconds),
            consecutive_updates=int(t.number_of_successful_consecutive_updates),
            mean=np.ascontiguousarray(kf.state, "<f8").tobytes(),
            covariance=np.ascontiguousarray(kf.state_covariance, "<f8").tobytes()))
    last = tracker._last_timestamp
    return TrackerState(next_id=int(tracker._next_track_id), last_timestamp=None if last is None else float(last),
                        tracks=tracks)


def restore_tracker(tracker: ByteTrackTracker, state: TrackerState) -> None:
    """Put ``state`` into a freshly built tracker of the same configuration."""
    tracks: list[ByteTrackTracklet] = []
    for s in state.tracks:
        # the constructor configures the filter's noise exactly as for a new track; the box only seeds the mean
        track = ByteTrackTracklet(initial_bbox=np.array([0.0, 0.0, 1.0, 1.0]),
                                  state_estimator_class=tracker.state_estimator_class)
        kf = track.state_estimator.kf
        mean = np.frombuffer(s.mean, "<f8")
        covariance = np.frombuffer(s.covariance, "<f8")
        if mean.size != kf.dim_x or covariance.size != kf.dim_x * kf.dim_x:
            raise StateError(f"stored track has a {mean.size}-element Kalman state, the tracker uses {kf.dim_x}")
        kf.state = mean.reshape(kf.dim_x, 1).astype(np.float64)
        kf.state_covariance = covariance.reshape(kf.dim_x, kf.dim_x).astype(np.float64)
        track.state_estimator.motion.reset_cache()
        track.tracker_id = s.tracker_id
        track.age = s.age
        track.time_since_update = s.time_since_update
        track.time_since_update_seconds = s.time_since_update_s
        track.number_of_successful_consecutive_updates = s.consecutive_updates
        tracks.append(track)
    tracker.tracks = tracks
    tracker._next_track_id = state.next_id
    tracker._last_timestamp = state.last_timestamp
