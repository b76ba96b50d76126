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

Anchor = Literal["bottom_center", "center", "top_center"]


@dataclass(frozen=True)
class Crossing:
    track_id: int
    class_id: int
    direction: Literal["in", "out"]


@dataclass
class _TrackState:
    side: int  # -1 left, +1 right of the line; never 0 (inside the hysteresis band is no side)
    last_seen: float
    counted: set[str]


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
    def __init__(self, name: str, start: tuple[float, float], end: tuple[float, float],
                 class_ids: frozenset[int] | None = None, anchor: Anchor = "bottom_center",
                 min_distance_px: float = 2.0, track_ttl_s: float = 30.0, max_tracks: int = 10_000):
        self.name = name
        self.anchor = anchor
        self.class_ids = class_ids
        self.min_distance = min_distance_px
        self.track_ttl_s = track_ttl_s
        self.max_tracks = max_tracks
        self._start = np.asarray(start, np.float64)
        vector = np.asarray(end, np.float64) - self._start
        self._length = float(np.hypot(*vector))
        self._unit = vector / self._length
        self._tracks: OrderedDict[int, _TrackState] = OrderedDict()
        self.counts: Counter[tuple[int, str]] = Counter()  # (class_id, direction) -> count

    @property
    def tracked(self) -> int:
        return len(self._tracks)

    def update(self, track_ids: np.ndarray, xyxy: np.ndarray, class_ids: np.ndarray, t: float) -> list[Crossing]:
        """Feed one frame of tracked boxes (track id -1 = unconfirmed, ignored); returns new crossings."""
        crossings: list[Crossing] = []
        if len(track_ids):
            rel = anchor_points(xyxy, self.anchor) - self._start
            # signed distance: positive on the right-hand side on screen (image y grows downward)
            distance = rel[:, 1] * self._unit[0] - rel[:, 0] * self._unit[1]
            along = rel @ self._unit
            for tid, cid, dist, pos in zip(track_ids.tolist(), class_ids.tolist(), distance, along):
                if tid < 0 or (self.class_ids is not None and cid not in self.class_ids):
                    continue
                crossing = self._step(tid, cid, float(dist), float(pos), t)
                if crossing is not None:
                    crossings.append(crossing)
        self._evict(t)
        return crossings

    def _step(self, tid: int, cid: int, dist: float, along: float, t: float) -> Crossing | None:
        state = self._tracks.get(tid)
        side = 1 if dist >= self.min_distance else -1 if dist <= -self.min_distance else 0
        if state is None:
            if side != 0:
                self._tracks[tid] = _TrackState(side=side, last_seen=t, counted=set())
            return None
        state.last_seen = t
        self._tracks.move_to_end(tid)
        if side == 0 or side == state.side:
            return None
        state.side = side
        if not 0.0 <= along <= self._length:
            return None  # passed the infinite line beyond the segment's ends
        direction: Literal["in", "out"] = "in" if side > 0 else "out"
        if direction in state.counted:
            return None
        state.counted.add(direction)
        self.counts[(cid, direction)] += 1
        return Crossing(track_id=tid, class_id=cid, direction=direction)

    def _evict(self, t: float) -> None:
        while self._tracks:
            tid, state = next(iter(self._tracks.items()))
            if state.last_seen >= t - self.track_ttl_s and len(self._tracks) <= self.max_tracks:
                break
            del self._tracks[tid]
