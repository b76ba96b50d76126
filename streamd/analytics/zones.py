"""Zone counter: enter/exit events, occupancy, dwell time and visits per class, with bounded state.

A track is inside once its anchor point is ``min_distance_px`` inside the polygon and outside once it is
that far outside; in between it keeps its last state, so a box jittering on the edge does not flap. A
track inside that is not seen for ``exit_after_lost_s`` (stream time) exits then, with the time it was
last seen: objects that leave unseen, or whose track ends, do not stay in the occupancy for ever.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from streamd.analytics.lines import Anchor, anchor_points


@dataclass(frozen=True)
class ZoneEvent:
    kind: Literal["enter", "exit"]
    track_id: int
    class_id: int
    t: float  # stream time of the event (for an exit after a loss: when the track was last seen inside)
    entered_t: float  # stream time of the visit's enter event
    lost: bool = False  # exit because the track was not seen any more, not because it was seen outside

    @property
    def dwell_s(self) -> float:
        return self.t - self.entered_t


@dataclass
class _Visit:
    class_id: int
    inside: bool
    entered_t: float
    last_seen: float


class ZoneCounter:
    def __init__(self, name: str, polygon: list[tuple[float, float]], class_ids: frozenset[int] | None = None,
                 anchor: Anchor = "bottom_center", min_distance_px: float = 2.0, exit_after_lost_s: float = 2.0,
                 max_tracks: int = 10_000):
        self.name = name
        self.anchor = anchor
        self.class_ids = class_ids
        self.min_distance = min_distance_px
        self.exit_after_lost_s = exit_after_lost_s
        self.max_tracks = max_tracks
        self._contour = np.asarray(polygon, np.float32).reshape(-1, 1, 2)
        self._tracks: OrderedDict[int, _Visit] = OrderedDict()  # least recently seen first
        self.visits: Counter[int] = Counter()  # class_id -> enter events

    @property
    def tracked(self) -> int:
        return len(self._tracks)

    def occupancy(self) -> Counter[int]:
        """class_id -> tracks inside now."""
        return Counter(v.class_id for v in self._tracks.values() if v.inside)

    def update(self, track_ids: np.ndarray, xyxy: np.ndarray, class_ids: np.ndarray, t: float) -> list[ZoneEvent]:
        """Feed one frame of tracked boxes (track id -1 = unconfirmed, ignored); returns enter/exit events."""
        events: list[ZoneEvent] = []
        if len(track_ids):
            points = anchor_points(xyxy, self.anchor)
            for tid, cid, (x, y) in zip(track_ids.tolist(), class_ids.tolist(), points.tolist()):
                if tid < 0 or (self.class_ids is not None and cid not in self.class_ids):
                    continue
                # signed distance to the edge: positive inside
                depth = cv2.pointPolygonTest(self._contour, (float(x), float(y)), True)
                event = self._step(tid, cid, depth, t)
                if event is not None:
                    events.append(event)
        events.extend(self._expire(t))
        return events

    def _step(self, tid: int, cid: int, depth: float, t: float) -> ZoneEvent | None:
        visit = self._tracks.get(tid)
        if visit is None:
            visit = self._tracks[tid] = _Visit(class_id=cid, inside=False, entered_t=t, last_seen=t)
        visit.last_seen = t
        self._tracks.move_to_end(tid)
        if not visit.inside and depth >= self.min_distance:
            visit.inside, visit.entered_t, visit.class_id = True, t, cid
            self.visits[cid] += 1
            return ZoneEvent("enter", tid, cid, t, t)
        if visit.inside and depth <= -self.min_distance:
            visit.inside = False
            return ZoneEvent("exit", tid, visit.class_id, t, visit.entered_t)
        return None

    def close(self) -> list[ZoneEvent]:
        """The stream ended: every track still inside exits at its last sighting."""
        events = [ZoneEvent("exit", tid, v.class_id, v.last_seen, v.entered_t, lost=True)
                  for tid, v in self._tracks.items() if v.inside]
        self._tracks.clear()
        return events

    def _expire(self, t: float) -> list[ZoneEvent]:
        # A track unseen for exit_after_lost_s is forgotten (an outside track's state is the default one);
        # the dict is ordered by last sighting, so the expired tracks are a prefix.
        events = []
        while self._tracks:
            tid, visit = next(iter(self._tracks.items()))
            if t - visit.last_seen <= self.exit_after_lost_s and len(self._tracks) <= self.max_tracks:
                break
            if visit.inside:
                events.append(ZoneEvent("exit", tid, visit.class_id, visit.last_seen, visit.entered_t, lost=True))
            del self._tracks[tid]
        return events
