"""streamd.analytics.zones: ZoneCounter on frame-by-frame scripted tracks."""

from __future__ import annotations

import numpy as np
import pytest

from streamd.analytics.zones import ZoneCounter

SQUARE = [(100.0, 100.0), (200.0, 100.0), (200.0, 200.0), (100.0, 200.0)]


def step(zone: ZoneCounter, t: float, *tracks: tuple) -> list[tuple[str, int, float]]:
    """tracks: (track_id, x, y_of_box_bottom[, class_id]); returns [(kind, track id, dwell_s)]."""
    tids = np.array([tr[0] for tr in tracks], np.int64)
    boxes = np.array([[tr[1] - 5, tr[2] - 20, tr[1] + 5, tr[2]] for tr in tracks], np.float64).reshape(-1, 4)
    classes = np.array([tr[3] if len(tr) > 3 else 0 for tr in tracks], np.int64)
    return [(e.kind, e.track_id, round(e.dwell_s, 3)) for e in zone.update(tids, boxes, classes, t)]


def test_enter_exit_dwell_and_visits() -> None:
    zone = ZoneCounter("z", SQUARE, min_distance_px=3)
    events = []
    for i, x in enumerate([50, 90, 110, 150, 190, 210, 250]):
        events += step(zone, i * 0.5, (1, x, 150))
    assert events == [("enter", 1, 0.0), ("exit", 1, 1.5)]  # inside at 1.0 s, outside at 2.5 s
    assert zone.visits == {0: 1}
    assert zone.occupancy() == {}


def test_occupancy_per_class() -> None:
    zone = ZoneCounter("z", SQUARE)
    step(zone, 0.0, (1, 150, 150, 0), (2, 120, 180, 2), (3, 180, 130, 2), (4, 50, 50, 2))
    assert zone.occupancy() == {0: 1, 2: 2}
    step(zone, 0.1, (1, 150, 150, 0), (2, 120, 180, 2), (3, 250, 130, 2))
    assert zone.occupancy() == {0: 1, 2: 1}
    assert zone.visits == {0: 1, 2: 2}


def test_jitter_on_the_edge_does_not_flap() -> None:
    zone = ZoneCounter("z", SQUARE, min_distance_px=4)
    rng = np.random.default_rng(1)
    events = []
    for i, x in enumerate(list(100 + rng.uniform(-3.5, 3.5, 100)) + [120, 160]):
        events += step(zone, i * 0.04, (1, float(x), 150))
    assert [e[0] for e in events] == ["enter"]  # once clearly inside, never before
    assert zone.visits == {0: 1}


def test_track_lost_inside_exits_after_the_timeout_with_its_last_sighting() -> None:
    zone = ZoneCounter("z", SQUARE, exit_after_lost_s=2.0)
    assert step(zone, 0.0, (1, 150, 150)) == [("enter", 1, 0.0)]
    step(zone, 1.0, (1, 150, 150))
    assert step(zone, 2.9) == []  # 1.9 s unseen: still inside
    assert zone.occupancy() == {0: 1}
    assert step(zone, 3.1) == [("exit", 1, 1.0)]  # dwell up to the last sighting
    assert zone.occupancy() == {} and zone.tracked == 0


def test_brief_loss_inside_is_one_visit() -> None:
    zone = ZoneCounter("z", SQUARE, exit_after_lost_s=2.0)
    events = step(zone, 0.0, (1, 150, 150)) + step(zone, 1.0) + step(zone, 1.5, (1, 160, 150))
    assert events == [("enter", 1, 0.0)]
    assert zone.visits == {0: 1}


def test_class_filter_and_unconfirmed_tracks() -> None:
    zone = ZoneCounter("z", SQUARE, class_ids=frozenset({2}))
    assert step(zone, 0.0, (1, 150, 150, 0), (-1, 150, 150, 2), (3, 150, 150, 2)) == [("enter", 3, 0.0)]
    assert zone.tracked == 1


def test_concave_polygon() -> None:
    # an L shape: the notch at the top right is outside
    ell = [(0.0, 0.0), (100.0, 0.0), (100.0, 50.0), (50.0, 50.0), (50.0, 100.0), (0.0, 100.0)]
    zone = ZoneCounter("z", ell)
    assert step(zone, 0.0, (1, 75, 75)) == []
    assert step(zone, 0.1, (1, 25, 75)) == [("enter", 1, 0.0)]


@pytest.mark.parametrize("max_tracks", [10, 100])
def test_ten_thousand_visits_leave_bounded_state(max_tracks: int) -> None:
    zone = ZoneCounter("z", SQUARE, exit_after_lost_s=1.0, max_tracks=max_tracks)
    t, peak, exits = 0.0, 0, 0
    for tid in range(10_000):
        for x in (90, 150, 210):  # enters, is inside, leaves
            t += 0.05
            exits += sum(kind == "exit" for kind, _, _ in step(zone, t, (tid, x, 150)))
        peak = max(peak, zone.tracked)
    assert zone.visits == {0: 10_000}
    assert exits == 10_000
    assert peak <= max_tracks
    step(zone, t + 5.0)
    assert zone.tracked == 0


def full_step(zone: ZoneCounter, t: float, *tracks: tuple) -> list[tuple]:
    tids = np.array([tr[0] for tr in tracks], np.int64)
    boxes = np.array([[tr[1] - 5, tr[2] - 20, tr[1] + 5, tr[2]] for tr in tracks], np.float64).reshape(-1, 4)
    classes = np.array([tr[3] if len(tr) > 3 else 0 for tr in tracks], np.int64)
    return [(e.kind, e.track_id, e.visit_track, round(e.dwell_s, 3)) for e in zone.update(tids, boxes, classes, t)]


def test_id_switch_inside_the_zone_is_one_visit() -> None:
    zone = ZoneCounter("z", SQUARE, exit_after_lost_s=2.0)
    events = full_step(zone, 0.0, (1, 150, 150))
    events += full_step(zone, 0.5, (1, 152, 150))
    events += full_step(zone, 0.6)  # the tracker loses the object ...
    events += full_step(zone, 0.7, (2, 155, 150))  # ... and finds it again under a new id
    events += full_step(zone, 1.5, (2, 160, 150))
    events += full_step(zone, 2.0, (2, 250, 150))
    # one enter and one exit, both of the visit of track 1; the exit is reported by track 2
    assert events == [("enter", 1, 1, 0.0), ("exit", 2, 1, 2.0)]
    assert zone.visits == {0: 1}
    assert zone.id_switches == 1
    assert full_step(zone, 10.0) == []  # track 1's state went with the hand-over: no late "lost" exit


def test_new_id_far_away_or_of_another_class_inside_the_zone_is_a_new_visit() -> None:
    zone = ZoneCounter("z", SQUARE)
    full_step(zone, 0.0, (1, 120, 150))
    full_step(zone, 0.1)
    assert full_step(zone, 0.2, (2, 180, 190), (3, 121, 150, 1)) == [("enter", 2, 2, 0.0), ("enter", 3, 3, 0.0)]
    assert zone.visits == {0: 2, 1: 1}


def test_snapshot_and_restore_continue_a_visit() -> None:
    zone = ZoneCounter("z", SQUARE)
    full_step(zone, 0.0, (1, 150, 150))
    restored = ZoneCounter("z", SQUARE)
    restored.restore(zone.snapshot())
    assert restored.occupancy() == {0: 1} and restored.visits == {0: 1}
    assert full_step(restored, 1.0, (1, 250, 150)) == full_step(zone, 1.0, (1, 250, 150)) == [("exit", 1, 1, 1.0)]
