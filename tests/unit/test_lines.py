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
        frame(counter, tid * 0.01, (tid, 20 + 40 * tid, 90))
    assert counter.tracked == 3
    # the two least recently seen (0 and 1) were evicted; 2..4 remember their side
    crossings = frame(counter, 1.0, (0, 20, 110), (4, 180, 110))
    assert [c.track_id for c in crossings] == [4]
    assert counter.tracked == 3


def test_recently_seen_tracks_survive_the_cap() -> None:
    counter = LineCounter("l", START, END, max_tracks=2)
    frame(counter, 0.0, (1, 100, 90))
    frame(counter, 0.1, (2, 100, 90))
    frame(counter, 0.2, (1, 100, 91))  # 1 is now the most recently seen
    frame(counter, 0.3, (3, 100, 90))  # evicts 2, not 1
    assert frame(counter, 0.4, (1, 100, 110), (2, 100, 110)) == [Crossing(1, 0, "in")]


def directions(counter: LineCounter, script: list[tuple[float, list[tuple]]]) -> list[tuple[int, str]]:
    """script: [(t, [track tuples as in frame()]), ...] -> [(track id, direction), ...]"""
    out = []
    for t, tracks in script:
        out += [(c.track_id, c.direction) for c in frame(counter, t, *tracks)]
    return out


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        # the tracker switches the id from 1 to 2 ...
        ([80, 90], [110, 120], [(2, "in")]),  # ... just before the crossing: counted once, under the new id
        ([80, 90, 110], [115, 120], [(1, "in")]),  # ... just after it: not counted again
        ([80, 90, 99], [101, 110], [(2, "in")]),  # ... inside the hysteresis band: still counted
    ],
)
def test_id_switch_next_to_the_line_counts_once(before: list[float], after: list[float],
                                                expected: list[tuple[int, str]]) -> None:
    counter = LineCounter("l", START, END, min_distance_px=5)
    script = [(i * 0.1, [(1, 100, y)]) for i, y in enumerate(before)]
    script += [((len(before) + i) * 0.1, [(2, 100 + 3 * i, y)]) for i, y in enumerate(after)]
    assert directions(counter, script) == expected
    assert counter.counts[(0, "in")] == 1
    assert counter.id_switches == 1


def test_new_id_far_away_or_of_another_class_is_a_new_object() -> None:
    counter = LineCounter("l", START, END, min_distance_px=5)
    script = [(0.0, [(1, 50, 90)]), (0.1, [(1, 50, 95)]),
              (0.2, [(2, 150, 110)]),  # 100 px away from where track 1 vanished: not a switch
              (0.3, [(3, 50, 110, 1)])]  # where track 1 vanished, but another class
    assert directions(counter, script) == []
    assert counter.id_switches == 0


def test_bunched_objects_id_switch_takes_over_the_vanished_neighbour_only() -> None:
    # two boxes 12 px apart cross side by side; track 1 becomes 3 in the band while 2 keeps its id
    counter = LineCounter("l", START, END, min_distance_px=5)
    script = [(0.0, [(1, 100, 90), (2, 112, 90)]), (0.1, [(1, 100, 98), (2, 112, 98)]),
              (0.2, [(3, 100, 104), (2, 112, 104)]), (0.3, [(3, 100, 112), (2, 112, 112)])]
    assert sorted(directions(counter, script)) == [(2, "in"), (3, "in")]
    assert counter.counts[(0, "in")] == 2


def test_old_lost_track_is_not_taken_over() -> None:
    counter = LineCounter("l", START, END, min_distance_px=5, id_switch_s=1.0)
    script = [(0.0, [(1, 100, 90)]), (0.1, [(1, 100, 98)]), (1.5, [(2, 100, 110)])]
    assert directions(counter, script) == []  # 1.4 s later: a new object first seen past the line


@pytest.mark.parametrize("missing_frames", [1, 3, 10])
def test_track_lost_for_a_few_frames_near_the_line_counts_once(missing_frames: int) -> None:
    # the detector misses the object while it is on the line; the tracker keeps its id and it reappears past it
    counter = LineCounter("l", START, END, min_distance_px=5)
    ys = [80, 90, 97] + [None] * missing_frames + [108, 115, 125]
    script = [(i * 0.05, [] if y is None else [(1, 100, y)]) for i, y in enumerate(ys)]
    assert directions(counter, script) == [(1, "in")]


def test_object_that_stops_on_the_line_and_jitters_counts_once() -> None:
    counter = LineCounter("l", START, END, min_distance_px=3)
    rng = np.random.default_rng(3)
    ys = [80, 90, 96] + list(100 + rng.uniform(-6, 6, 200)) + [110, 120]
    script = [(i * 0.05, [(1, 100, float(y))]) for i, y in enumerate(ys)]
    found = directions(counter, script)
    # jitter of +-6 px across a +-3 px band may cross back and forth: each direction counts at most once
    assert found.count((1, "in")) == 1 and found.count((1, "out")) <= 1
    assert counter.counts[(0, "in")] == 1


@pytest.mark.parametrize(("x", "expected"), [(0.0, ["in"]), (200.0, ["in"]), (3.0, ["in"])])
def test_crossing_at_the_frame_edge(x: float, expected: list[str]) -> None:
    # a line spanning a 200 px wide frame; a box clipped by the frame edge crosses at its very end
    counter = LineCounter("l", START, END, min_distance_px=2)
    out = []
    for i, y in enumerate([90, 95, 105, 110]):
        x1, x2 = max(0.0, x - 5), min(200.0, x + 5)  # clipped to the frame: anchor stays inside [0, 200]
        boxes = np.array([[x1, y - 20, x2, y]])
        out += [c.direction for c in counter.update(np.array([1]), boxes, np.array([0]), i * 0.1)]
    assert out == expected


def test_ten_thousand_tracks_leave_bounded_state() -> None:
    counter = LineCounter("l", START, END, min_distance_px=2, track_ttl_s=5.0, max_tracks=50)
    t = 0.0
    peak = 0
    for first in range(0, 10_000, 20):
        # 20 objects at a time cross the line in 4 frames, then are never seen again
        for y in (90, 95, 105, 110):
            t += 0.05
            tracks = [(tid, 5 + (tid % 20) * 10, y) for tid in range(first, first + 20)]
            frame(counter, t, *tracks)
            peak = max(peak, counter.tracked)
        t += 1.5  # the next group arrives later (sooner, where these vanished, it would look like id switches)
    assert counter.counts[(0, "in")] == 10_000
    assert peak <= 50
    frame(counter, t + 10.0)
    assert counter.tracked == 0


def test_class_vote_takes_the_class_with_the_most_confidence_and_forgets_old_tracks() -> None:
    from streamd.analytics.stream import ClassVote

    vote = ClassVote(ttl_s=1.0, max_tracks=10)
    ids = np.array([1, 2, -1])
    assert vote.update(ids, np.array([2, 7, 7]), np.array([0.9, 0.5, 0.5]), 0.0).tolist() == [2, 7, 7]
    # track 1 is called class 7 once with less confidence than its class-2 history: it stays 2
    assert vote.update(ids, np.array([7, 7, 2]), np.array([0.6, 0.5, 0.5]), 0.1).tolist() == [2, 7, 2]
    assert vote.update(ids[:1], np.array([7]), np.array([0.6]), 0.2).tolist() == [7]  # 1.2 > 0.9 now
    assert len(vote) == 2
    vote.update(np.array([3]), np.array([0]), np.array([0.9]), 5.0)
    assert len(vote) == 1  # 1 and 2 unseen for longer than the ttl
