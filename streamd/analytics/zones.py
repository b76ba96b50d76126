"""Zone counter: enter/exit events, occupancy, dwell time and visits per class, with bounded state.

A track is inside once its anchor point is ``min_distance_px`` inside the polygon and outside once it is
that far outside; in between it keeps its last state, so a box jittering on the edge does not flap. A
track inside that is not seen for ``exit_after_lost_s`` (stream time) exits then, with the time it was
last seen: objects that leave unseen, or whose track ends, do not stay in the occupancy for ever.

ID switches: as on lines, a new id takes over the visit of a same-class track that vanished at most
``id_switch_s`` ago within one box size of it, so an object whose id changes inside the zone is one visit
(its events keep the visit's first track id in ``visit_track_id``), not an exit and a second enter.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from streamd.analytics.lines import Anchor, anchor_points
from streamd.analytics.state import ZoneState, ZoneVisitState


@dataclass(frozen=True)
class ZoneEvent:
    kind: Literal["enter", "exit"]
    track_id: int
    class_id: int
    t: float  # stream time of the event (for an exit after a loss: when the track was last seen inside)
    entered_t: float  # stream time of the visit's enter event
    lost: bool = False  # exit because the track was not seen any more, not because it was seen outside
    visit_track_id: int | None = None  # the track id the visit entered with, when an id switch changed it since

    @property
    def visit_track(self) -> int:
        """The track id that names the visit: the one it entered with."""
        return self.track_id if self.visit_track_id is None else self.visit_track_id

    @property
    def dwell_s(self) -> float:
        return self.t - self.entered_t


@dataclass
class _Visit:
    class_id: int
    inside: bool
    entered_t: float
    last_seen: float
    visit_track_id: int  # the id the visit entered with
    anchor: tuple[float, float]


class ZoneCounter:
    def __init__(self, name: str, polygon: list[tuple[float, float]], class_ids: frozenset[int] | None = None,
                 anchor: Anchor = "bottom_center", min_distance_px: float = 2.0, exit_after_lost_s: float = 2.0,
                 max_tracks: int = 10_000, id_switch_s: float = 1.0):
        self.name = name
        self.anchor = anchor
        self.class_ids = class_ids
        self.min_distance = min_distance_px
        self.exit_after_lost_s = exit_after_lost_s
        self.max_tracks = max_tracks
        self.id_switch_s = id_switch_s
        self._contour = np.asarray(polygon, np.float32).reshape(-1, 1, 2)
        self._tracks: OrderedDict[int, _Visit] = OrderedDict()  # least recently seen first
        self.visits: Counter[int] = Counter()  # class_id -> enter events
        self.id_switches = 0

    @property
    def tracked(self) -> int:
        return len(self._tracks)

    def occupancy(self) -> Counter[int]:
        """class_id -> tracks inside now."""
        return Counter(v.class_id for v in self._tracks.values() if v.inside)

    def snapshot(self) -> ZoneState:
        return ZoneState(
            name=self.name,
            tracks=[ZoneVisitState(tid, v.visit_track_id, v.class_id, v.inside, v.entered_t, v.last_seen, v.anchor)
                    for tid, v in self._tracks.items()],
            visits=list(self.visits.items()), id_switches=self.id_switches)

    def restore(self, state: ZoneState) -> None:
        self._tracks = OrderedDict(
            (s.track_id, _Visit(s.class_id, s.inside, s.entered_t, s.last_seen, s.visit_track_id,
                                (s.anchor[0], s.anchor[1])))
            for s in state.tracks)
        self.visits = Counter(dict(state.visits))
        self.id_switches = state.id_switches

    def update(self, track_ids: np.ndarray, xyxy: np.ndarray, class_ids: np.ndarray, t: float) -> list[ZoneEvent]:
        """Feed one frame of tracked boxes (track id -1 = unconfirmed, ignored); returns enter/exit events."""
        events: list[ZoneEvent] = []
        if len(track_ids):
            points = anchor_points(xyxy, self.anchor)
            size = np.maximum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
            rows = [i for i, (tid, cid) in enumerate(zip(track_ids.tolist(), class_ids.tolist()))
                    if tid >= 0 and (self.class_ids is None or cid in self.class_ids)]
            # known tracks first, so a new id can only take over the visit of a track absent from this frame
            rows.sort(key=lambda i: int(track_ids[i]) not in self._tracks)
            for i in rows:
                x, y = float(points[i, 0]), float(points[i, 1])
                # signed distance to the edge: positive inside
                depth = cv2.pointPolygonTest(self._contour, (x, y), True)
                event = self._step(int(track_ids[i]), int(class_ids[i]), depth, (x, y), float(size[i]), t)
                if event is not None:
                    events.append(event)
        events.extend(self._expire(t))
        return events

    def _step(self, tid: int, cid: int, depth: float, point: tuple[float, float], size: float,
              t: float) -> ZoneEvent | None:
        visit = self._tracks.get(tid)
        if visit is None:
            visit = self._take_over(cid, point, size, t) or _Visit(
                class_id=cid, inside=False, entered_t=t, last_seen=t, visit_track_id=tid, anchor=point)
            self._tracks[tid] = visit
        visit.last_seen, visit.anchor = t, point
        self._tracks.move_to_end(tid)
        if not visit.inside and depth >= self.min_distance:
            visit.inside, visit.entered_t, visit.class_id, visit.visit_track_id = True, t, cid, tid
            self.visits[cid] += 1
            return ZoneEvent("enter", tid, cid, t, t)
        if visit.inside and depth <= -self.min_distance:
            visit.inside = False
            return ZoneEvent("exit", tid, visit.class_id, t, visit.entered_t, visit_track_id=visit.visit_track_id)
        return None

    def _take_over(self, cid: int, point: tuple[float, float], size: float, t: float) -> _Visit | None:
        """The visit of the nearest same-class track that vanished recently within one box size of ``point``."""
        best_tid, best_distance = None, size
        for tid in reversed(self._tracks):  # most recently seen first
            visit = self._tracks[tid]
            if visit.last_seen >= t:
                continue  # seen in this frame: not lost
            if visit.last_seen < t - self.id_switch_s:
                break
            distance = float(np.hypot(visit.anchor[0] - point[0], visit.anchor[1] - point[1]))
            if visit.class_id == cid and distance <= best_distance:
                best_tid, best_distance = tid, distance
        if best_tid is None:
            return None
        self.id_switches += 1
        return self._tracks.pop(best_tid)

    def close(self) -> list[ZoneEvent]:
        """The stream ended: every track still inside exits at its last sighting."""
        events = [ZoneEvent("exit", tid, v.class_id, v.last_seen, v.entered_t, lost=True,
                            visit_track_id=v.visit_track_id) for tid, v in self._tracks.items() if v.inside]
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
                events.append(ZoneEvent("exit", tid, visit.class_id, visit.last_seen, visit.entered_t, lost=True,
                                        visit_track_id=visit.visit_track_id))
            del self._tracks[tid]
        return events
