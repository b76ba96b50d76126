"""streamd.analytics.lines: LineCounter on frame-by-frame scripted tracks."""

from __future__ import annotations

import numpy as np
import pytest

from streamd.analytics.lines import Crossing, LineCounter, anchor_points

# A horizontal line drawn left to right at y = 100 from x = 0 to x = 200: `in` is downward.
START, END = (0.0, 100.0), (200.0, 100.0)


def frame(counter: LineCounter, t: float, *tracks: tuple) -> list[Crossing]:
    """tracks: (track_id, x, y_of_box_bottom[, class_id[, box_height]]); boxes are 10 px wide."""
    tids, boxes, classes = [], [], []
    for tr in tracks:
        tid, x, y = tr[:3]
        cid = tr[3] if len(tr) > 3 else 0
        height = tr[4] if len(tr) > 4 else 20
        tids.append(tid)
        boxes.append([x - 5, y - height, x + 5, y])
        classes.append(cid)
    return counter.update(np.array(tids, np.int64), np.array(boxes, np.float64).reshape(-1, 4),
                          np.array(classes, np.int64), t)


def run(counter: LineCounter, path: list[float], tid: int = 1, x: float = 100.0, cid: int = 0) -> list[str]:
    out = []
    for i, y in enumerate(path):
        out += [c.direction for c in frame(counter, i * 0.1, (tid, x, y, cid))]
    return out


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ([80, 90, 99, 101, 110, 120], ["in"]),
        ([120, 110, 101, 99, 90, 80], ["out"]),
        ([80, 120], ["in"]),  # one big jump still crosses
        ([80, 90, 110, 90], ["in", "out"]),  # crossing then coming back
        ([80, 110, 90, 110, 90, 110], ["in", "out"]),  # each direction counts once per track
        ([80, 97, 103, 98, 104, 96, 99], []),  # jitter inside the +-5 px band never counts
        ([80, 97, 103, 104, 106], ["in"]),  # leaves the band on the far side: counts
        ([80, 97, 103, 98, 90], []),  # enters the band and goes back: nothing
        ([100, 103, 110], []),  # first seen inside the band: its side is unknown, nothing counts
        ([90, 90, 90], []),
    ],
)
def test_scripted_tracks(path: list[float], expected: list[str]) -> None:
    counter = LineCounter("l", START, END, min_distance_px=5)
    assert run(counter, path) == expected
    assert counter.counts[(0, "in")] == expected.count("in")
    assert counter.counts[(0, "out")] == expected.count("out")


@pytest.mark.parametrize(
    ("x", "counts"),
    [(-20, False), (-0.5, False), (0, True), (100, True), (200, True), (200.5, False), (260, False)],
)
def test_crossing_beyond_the_segment_ends_does_not_count(x: float, counts: bool) -> None:
    counter = LineCounter("l", START, END, min_distance_px=2)
    assert run(counter, [90, 110], x=x) == (["in"] if counts else [])


def test_direction_follows_the_line_orientation() -> None:
    reversed_line = LineCounter("l", END, START, min_distance_px=2)  # drawn right to left: `in` is upward
    assert run(reversed_line, [90, 110]) == ["out"]
    vertical = LineCounter("v", (100.0, 0.0), (100.0, 200.0), min_distance_px=2)  # drawn top to bottom
    directions = []
    for i, x in enumerate([120, 80]):  # right to left on screen
        directions += [c.direction for c in frame(vertical, i, (1, x, 100))]
    assert directions == ["in"]


def test_class_filter() -> None:
    counter = LineCounter("l", START, END, class_ids=frozenset({2}))
    crossings = frame(counter, 0.0, (1, 50, 90, 0), (2, 100, 90, 2))
    crossings += frame(counter, 0.1, (1, 50, 110, 0), (2, 100, 110, 2))
    assert crossings == [Crossing(track_id=2, class_id=2, direction="in")]
    assert counter.counts == {(2, "in"): 1}
    assert counter.tracked == 1  # filtered classes keep no state


def test_two_simultaneous_crossings() -> None:
    counter = LineCounter("l", START, END)
    assert frame(counter, 0.0, (1, 50, 90, 0), (2, 150, 110, 3)) == []
    crossings = frame(counter, 0.1, (1, 50, 110, 0), (2, 150, 90, 3))
    assert sorted(crossings, key=lambda c: c.track_id) == [Crossing(1, 0, "in"), Crossing(2, 3, "out")]
    assert counter.counts == {(0, "in"): 1, (3, "out"): 1}


@pytest.mark.parametrize(
    ("anchor", "counts_at_frame"),
    [("bottom_center", 1), ("center", 2), ("top_center", 3)],
)
def test_anchor_choice_decides_when_a_box_crosses(anchor: str, counts_at_frame: int) -> None:
    # a 40 px tall box moving down: bottom at 90, 115, 135, 160 -> centre at 70, 95, 115, 140 -> top 50, 75, 95, 120
    counter = LineCounter("l", START, END, anchor=anchor, min_distance_px=2)
    frames = []
    for i, bottom in enumerate([90, 115, 135, 160]):
        if frame(counter, i * 0.1, (1, 100, bottom, 0, 40)):
            frames.append(i)
    assert frames == [counts_at_frame]


def test_anchor_points() -> None:
    xyxy = np.array([[10, 20, 30, 60]], np.float64)
    np.testing.assert_allclose(anchor_points(xyxy, "bottom_center"), [[20, 60]])
    np.testing.assert_allclose(anchor_points(xyxy, "center"), [[20, 40]])
    np.testing.assert_allclose(anchor_points(xyxy, "top_center"), [[20, 20]])


def test_unconfirmed_track_is_ignored() -> None:
    counter = LineCounter("l", START, END)
    assert run(counter, [80, 120], tid=-1) == []
    assert counter.tracked == 0 and not counter.counts


def test_empty_frames_are_fine() -> None:
    counter = LineCounter("l", START, END)
    assert counter.update(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64), 0.0) == []


def test_track_state_is_evicted_after_the_ttl() -> None:
    counter = LineCounter("l", START, END, track_ttl_s=1.0)
    frame(counter, 0.0, (1, 100, 90), (2, 50, 90))
    assert counter.tracked == 2
    frame(counter, 0.9, (2, 50, 91))
    assert counter.tracked == 2  # track 1 still within its ttl
    frame(counter, 1.5, (2, 50, 92))
    assert counter.tracked == 1  # track 1 last seen at 0.0: gone
    # track 1 comes back below the line: it starts afresh, so no crossing is counted
    assert frame(counter, 1.6, (1, 100, 110)) == []
    assert frame(counter, 1.7, (2, 50, 110)) == [Crossing(2, 0, "in")]
    frame(counter, 10.0)  # an empty frame still ages tracks out
    assert counter.tracked == 0


def test_track_state_is_capped_at_max_tracks() -> None:
    counter = LineCounter("l", START, END, max_tracks=3)
    for tid in range(5):
        frame(counter, tid * 0.01, (tid, 100, 90))
    assert counter.tracked == 3
    # the two least recently seen (0 and 1) were evicted; 2..4 remember their side
    crossings = frame(counter, 1.0, (0, 100, 110), (4, 100, 110))
    assert [c.track_id for c in crossings] == [4]
    assert counter.tracked == 3


def test_recently_seen_tracks_survive_the_cap() -> None:
    counter = LineCounter("l", START, END, max_tracks=2)
    frame(counter, 0.0, (1, 100, 90))
    frame(counter, 0.1, (2, 100, 90))
    frame(counter, 0.2, (1, 100, 91))  # 1 is now the most recently seen
    frame(counter, 0.3, (3, 100, 90))  # evicts 2, not 1
    assert frame(counter, 0.4, (1, 100, 110), (2, 100, 110)) == [Crossing(1, 0, "in")]
