"""Line crossing counter: one verb (`update`), bounded per-track state, counts by class and direction.

Direction follows the line's orientation from its first to its second point as drawn on screen:
``in`` is a move from the left-hand side to the right-hand side, ``out`` the reverse. For a line drawn
left to right, ``in`` is downward on the image.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np

from streamd.analytics.state import LineState, LineTrackState

Anchor = Literal["bottom_center", "center", "top_center"]


@dataclass(frozen=True)
class Crossing:
    track_id: int
    class_id: int
    direction: Literal["in", "out"]


@dataclass
class _TrackState:
    side: int  # -1 left, +1 right of the line, 0 unknown (first seen inside the hysteresis band)
    last_seen: float
    counted: set[str]
    class_id: int
    anchor: tuple[float, float]


def anchor_points(xyxy: np.ndarray, anchor: Anchor) -> np.ndarray:
    x = (xyxy[:, 0] + xyxy[:, 2]) / 2
    if anchor == "center":
        y = (xyxy[:, 1] + xyxy[:, 3]) / 2
    elif anchor == "top_center":
        y = xyxy[:, 1]
    else:
        y = xyxy[:, 3]
    return np.stack([x, y], axis=1)


class LineCounter:
    """Counts tracks whose anchor point crosses a line segment, once per track, line and direction.

    ID switches: when the tracker gives an object a new id next to the line (it lost the old one), the
    new id takes over the state of a track of the same class that vanished at most ``id_switch_s`` ago
    within one box size of it. The object then counts once: not twice when the switch follows its
    crossing, and not zero times when the switch happens inside the hysteresis band.
    """

    def __init__(self, name: str, start: tuple[float, float], end: tuple[float, float],
                 class_ids: frozenset[int] | None = None, anchor: Anchor = "bottom_center",
                 min_distance_px: float = 2.0, track_ttl_s: float = 30.0, max_tracks: int = 10_000,
                 id_switch_s: float = 1.0):
        self.name = name
        self.anchor = anchor
        self.class_ids = class_ids
        self.min_distance = min_distance_px
        self.track_ttl_s = track_ttl_s
        self.max_tracks = max_tracks
        self.id_switch_s = id_switch_s
        self._start = np.asarray(start, np.float64)
        vector = np.asarray(end, np.float64) - self._start
        self._length = float(np.hypot(*vector))
        self._unit = vector / self._length
        self._tracks: OrderedDict[int, _TrackState] = OrderedDict()  # least recently seen first
        self.counts: Counter[tuple[int, str]] = Counter()  # (class_id, direction) -> count
        self.id_switches = 0

    @property
    def tracked(self) -> int:
        return len(self._tracks)

    def snapshot(self) -> LineState:
        return LineState(
            name=self.name,
            tracks=[LineTrackState(tid, s.side, s.last_seen, sorted(s.counted), s.class_id, s.anchor)
                    for tid, s in self._tracks.items()],
            counts=[(cid, direction, n) for (cid, direction), n in self.counts.items()],
            id_switches=self.id_switches)

    def restore(self, state: LineState) -> None:
        self._tracks = OrderedDict(
            (s.track_id, _TrackState(s.side, s.last_seen, set(s.counted), s.class_id, (s.anchor[0], s.anchor[1])))
            for s in state.tracks)
        self.counts = Counter({(cid, direction): n for cid, direction, n in state.counts})
        self.id_switches = state.id_switches

    def update(self, track_ids: np.ndarray, xyxy: np.ndarray, class_ids: np.ndarray, t: float) -> list[Crossing]:
        """Feed one frame of tracked boxes (track id -1 = unconfirmed, ignored); returns new crossings."""
        crossings: list[Crossing] = []
        if len(track_ids):
            points = anchor_points(xyxy, self.anchor)
            rel = points - self._start
            # signed distance: positive on the right-hand side on screen (image y grows downward)
            distance = rel[:, 1] * self._unit[0] - rel[:, 0] * self._unit[1]
            along = rel @ self._unit
            size = np.maximum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
            rows = [i for i, (tid, cid) in enumerate(zip(track_ids.tolist(), class_ids.tolist()))
                    if tid >= 0 and (self.class_ids is None or cid in self.class_ids)]
            # known tracks first, so a new id can only take over the state of a track absent from this frame
            rows.sort(key=lambda i: int(track_ids[i]) not in self._tracks)
            for i in rows:
                crossing = self._step(int(track_ids[i]), int(class_ids[i]), float(distance[i]), float(along[i]),
                                      (float(points[i, 0]), float(points[i, 1])), float(size[i]), t)
                if crossing is not None:
                    crossings.append(crossing)
        self._evict(t)
        return crossings

    def _step(self, tid: int, cid: int, dist: float, along: float, point: tuple[float, float], size: float,
              t: float) -> Crossing | None:
        side = 1 if dist >= self.min_distance else -1 if dist <= -self.min_distance else 0
        state = self._tracks.get(tid)
        if state is None:
            state = self._take_over(cid, point, size, t)
            if state is None:
                self._tracks[tid] = _TrackState(side, t, set(), cid, point)
                return None
            self._tracks[tid] = state
        state.last_seen, state.anchor = t, point
        self._tracks.move_to_end(tid)
        if side == 0 or side == state.side:
            return None
        previous, state.side = state.side, side
        if previous == 0 or not 0.0 <= along <= self._length:
            return None  # side was unknown, or it passed the infinite line beyond the segment's ends
        direction: Literal["in", "out"] = "in" if side > 0 else "out"
        if direction in state.counted:
            return None
        state.counted.add(direction)
        self.counts[(cid, direction)] += 1
        return Crossing(track_id=tid, class_id=cid, direction=direction)

    def _take_over(self, cid: int, point: tuple[float, float], size: float, t: float) -> _TrackState | None:
        """State of the nearest same-class track that vanished recently within one box size of ``point``."""
        best_tid, best_distance = None, size
        for tid in reversed(self._tracks):  # most recently seen first
            state = self._tracks[tid]
            if state.last_seen >= t:
                continue  # seen in this frame: not lost
            if state.last_seen < t - self.id_switch_s:
                break
            distance = float(np.hypot(state.anchor[0] - point[0], state.anchor[1] - point[1]))
            if state.class_id == cid and distance <= best_distance:
                best_tid, best_distance = tid, distance
        if best_tid is None:
            return None
        self.id_switches += 1
        return self._tracks.pop(best_tid)

    def _evict(self, t: float) -> None:
        while self._tracks:
            tid, state = next(iter(self._tracks.items()))
            if state.last_seen >= t - self.track_ttl_s and len(self._tracks) <= self.max_tracks:
                break
            del self._tracks[tid]
