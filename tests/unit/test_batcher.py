"""streamd.infer.batcher: which frames go into the next inference batch, and when."""

from __future__ import annotations

import pytest

from streamd.infer.batcher import BatchItem, Batcher

WAIT = 0.005


def items(batch: list[BatchItem]) -> list[tuple[str, int]]:
    return [(b.stream, b.seq) for b in batch]


def with_idle_streams(b: Batcher, count: int) -> Batcher:
    """Streams the batcher has served that have no frame now: a batch below max_batch may wait for them."""
    for i in range(count):
        b.offer(f"idle{i}", 1, False, now=-1.0)
    while b.take(-1.0):
        pass
    return b


def test_nothing_pending() -> None:
    b = Batcher(max_batch=2, max_wait_s=WAIT)
    assert b.seconds_until_due(0.0) is None
    assert b.pending_streams() == 0
    assert b.take(0.0) == []


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(max_batch=0, max_wait_s=WAIT)


@pytest.mark.parametrize("max_batch", [1, 2, 4])
def test_due_at_once_when_max_batch_streams_have_a_frame(max_batch: int) -> None:
    b = with_idle_streams(Batcher(max_batch=max_batch, max_wait_s=10.0), 2)
    for i in range(max_batch - 1):
        b.offer(f"s{i}", 1, False, now=0.0)
        assert b.seconds_until_due(0.0) == pytest.approx(10.0)
    b.offer("last", 1, False, now=0.0)
    assert b.seconds_until_due(0.0) == 0.0
    assert len(b.take(0.0)) == max_batch


def test_due_max_wait_after_the_first_frame() -> None:
    b = with_idle_streams(Batcher(max_batch=4, max_wait_s=WAIT), 2)
    b.offer("a", 1, False, now=100.0)
    b.offer("b", 1, False, now=100.003)
    b.offer("a", 2, False, now=100.004)  # more frames of a waiting stream do not restart its clock
    assert b.seconds_until_due(100.0) == pytest.approx(WAIT)
    assert b.seconds_until_due(100.004) == pytest.approx(0.001)
    assert b.seconds_until_due(100.005) == 0.0
    assert b.seconds_until_due(200.0) == 0.0  # never negative
    assert items(b.take(100.005)) == [("a", 1), ("b", 1)]


def test_at_most_one_frame_per_stream_per_batch() -> None:
    b = Batcher(max_batch=4, max_wait_s=WAIT)
    b.offer("a", 3, False, now=0.0)  # seqs 1..3 exist
    b.offer("b", 2, False, now=0.0)
    batch = items(b.take(1.0))
    assert sorted(batch) == [("a", 1), ("b", 1)]
    assert len({s for s, _ in batch}) == len(batch)


def test_batch_is_capped_and_longest_waiting_streams_go_first() -> None:
    b = Batcher(max_batch=2, max_wait_s=WAIT)
    b.offer("late", 1, False, now=3.0)
    b.offer("early", 1, False, now=1.0)
    b.offer("mid", 1, False, now=2.0)
    assert items(b.take(3.0)) == [("early", 1), ("mid", 1)]
    assert items(b.take(3.0)) == [("late", 1)]
    assert b.pending_streams() == 0


def test_realtime_takes_the_newest_and_counts_drops() -> None:
    b = Batcher(max_batch=4, max_wait_s=WAIT)
    for seq in range(1, 6):
        b.offer("live", seq, True, now=seq * 0.001)
    assert items(b.take(1.0)) == [("live", 5)]
    assert b.dropped == {"live": 4}
    assert not b.has_pending("live")
    b.offer("live", 6, True, now=1.1)
    assert items(b.take(1.2)) == [("live", 6)]
    assert b.dropped == {"live": 4}  # nothing skipped this time
    for seq in (7, 8, 9):
        b.offer("live", seq, True, now=1.3)
    b.take(1.4)
    assert b.dropped == {"live": 6}
    assert b.next_seq("live") == 10


def test_non_realtime_takes_the_oldest_and_drops_nothing() -> None:
    b = Batcher(max_batch=2, max_wait_s=WAIT)
    taken: list[int] = []
    now = 0.0
    b.offer("file", 3, False, now=now)
    for seq in range(4, 11):
        now += 0.001
        b.offer("file", seq, False, now=now)
        taken += [s for _, s in items(b.take(now))]
    while b.has_pending("file"):
        taken += [s for _, s in items(b.take(now))]
    assert taken == list(range(1, 11))
    assert b.dropped == {}


def test_a_backlog_is_due_at_once_after_a_take() -> None:
    b = with_idle_streams(Batcher(max_batch=4, max_wait_s=1.0), 1)
    b.offer("file", 3, False, now=10.0)
    assert b.seconds_until_due(10.0) == pytest.approx(1.0)
    assert items(b.take(11.0)) == [("file", 1)]
    assert b.seconds_until_due(11.0) == 0.0  # seq 2 has already waited
    assert items(b.take(11.0)) == [("file", 2)]
    assert items(b.take(11.0)) == [("file", 3)]
    assert b.seconds_until_due(11.0) is None


def test_no_wait_when_every_stream_served_has_a_frame() -> None:
    b = Batcher(max_batch=8, max_wait_s=10.0)
    b.offer("only", 1, True, now=0.0)
    assert b.seconds_until_due(0.0) == 0.0  # a single camera is never held back for partners it does not have
    assert items(b.take(0.0)) == [("only", 1)]
    b.offer("second", 1, True, now=1.0)
    assert b.seconds_until_due(1.0) == pytest.approx(10.0)  # "only" may send its next frame
    b.offer("only", 2, True, now=1.5)
    assert b.seconds_until_due(1.5) == 0.0
    assert len(b.take(1.5)) == 2
    b.offer("only", 3, True, now=2.0)
    assert b.seconds_until_due(2.0) == pytest.approx(10.0)  # "second" may still send a frame
    b.offer("second", 2, True, now=2.001)
    assert b.seconds_until_due(2.001) == 0.0
    b.forget("second")
    b.take(2.001)
    b.offer("only", 4, True, now=3.0)
    assert b.seconds_until_due(3.0) == 0.0  # a removed stream is not waited for


def test_a_silent_stream_never_delays_the_others() -> None:
    b = Batcher(max_batch=3, max_wait_s=WAIT)
    for s in ("a", "b", "c"):
        b.offer(s, 1, True, now=0.0)
    assert items(b.take(0.0)) == [("a", 1), ("b", 1), ("c", 1)]
    # c stops sending; a and b keep going
    b.offer("a", 2, True, now=1.0)
    b.offer("b", 2, True, now=1.001)
    assert b.seconds_until_due(1.0) == pytest.approx(WAIT)
    assert b.seconds_until_due(1.0 + WAIT) == 0.0
    assert items(b.take(1.0 + WAIT)) == [("a", 2), ("b", 2)]
    assert not b.has_pending("c")


@pytest.mark.parametrize("realtime", [True, False])
def test_duplicate_and_old_announcements_are_ignored(realtime: bool) -> None:
    b = with_idle_streams(Batcher(max_batch=4, max_wait_s=WAIT), 1)
    b.offer("a", 1, realtime, now=0.0)
    assert items(b.take(0.01)) == [("a", 1)]
    b.offer("a", 1, realtime, now=0.02)  # duplicate of a frame already taken
    assert b.seconds_until_due(0.02) is None and not b.has_pending("a")
    b.offer("a", 2, realtime, now=0.03)
    b.offer("a", 2, realtime, now=0.04)  # same frame announced again
    b.offer("a", 1, realtime, now=0.05)  # an older one
    assert b.seconds_until_due(0.03) == pytest.approx(WAIT)  # clock of the first announcement
    assert items(b.take(0.1)) == [("a", 2)]
    assert b.pending_streams() == 0
    assert b.dropped.get("a", 0) == 0


@pytest.mark.parametrize(
    ("realtime", "expected_seq", "dropped"),
    [(False, 8, 0), (True, 10, 2)],
)
def test_first_unseen_seeds_a_new_stream(realtime: bool, expected_seq: int, dropped: int) -> None:
    b = Batcher(max_batch=4, max_wait_s=WAIT)
    b.offer("a", 10, realtime, now=0.0, first_unseen=8)
    assert items(b.take(1.0)) == [("a", expected_seq)]
    assert b.dropped.get("a", 0) == dropped


def test_first_unseen_is_only_used_for_a_new_stream_and_ignores_older_seqs() -> None:
    b = Batcher(max_batch=4, max_wait_s=WAIT)
    b.offer("a", 5, False, now=0.0, first_unseen=5)
    assert b.next_seq("a") == 5
    b.offer("a", 4, False, now=0.0, first_unseen=1)  # below the seed: already done elsewhere
    assert items(b.take(1.0)) == [("a", 5)]
    b.offer("a", 6, False, now=1.0, first_unseen=1)  # seed no longer applies
    assert items(b.take(2.0)) == [("a", 6)]


def test_first_unseen_below_one_is_clamped() -> None:
    b = Batcher(max_batch=4, max_wait_s=WAIT)
    b.offer("a", 2, False, now=0.0, first_unseen=0)
    assert items(b.take(1.0)) == [("a", 1)]


def test_realtime_none_keeps_the_current_policy() -> None:
    b = Batcher(max_batch=4, max_wait_s=WAIT)
    b.offer("a", 1, True, now=0.0)
    b.offer("a", 4, None, now=0.001)  # e.g. an end-of-stream nudge
    assert items(b.take(1.0)) == [("a", 4)]
    b.offer("new", 3, None, now=1.0)  # unseen stream with no policy: frame by frame
    assert items(b.take(2.0)) == [("new", 1)]


def test_forget_resets_a_stream() -> None:
    b = Batcher(max_batch=4, max_wait_s=WAIT)
    b.offer("a", 5, True, now=0.0)
    b.take(1.0)
    assert b.dropped == {"a": 4} and b.next_seq("a") == 6
    b.offer("a", 7, True, now=1.0)
    b.forget("a")
    assert not b.has_pending("a") and b.dropped == {} and b.next_seq("a") == 1
    b.offer("a", 1, False, now=2.0)
    assert items(b.take(3.0)) == [("a", 1)]


def test_choose_batch_batches_only_where_it_pays() -> None:
    from streamd.infer.batcher import choose_batch

    assert choose_batch({1: 9.5, 2: 9.3, 4: 9.0}) == 1  # CPU: within 10 % of the best, no batching
    assert choose_batch({1: 4.0, 2: 2.2, 4: 1.2, 8: 1.1}) == 4  # GPU-like: batching pays
    assert choose_batch({}) == 1


def test_a_held_stream_is_not_taken_until_released() -> None:
    b = Batcher(max_batch=2, max_wait_s=0.005)
    b.offer("a", 1, True, 0.0)
    b.offer("b", 1, True, 0.0)
    assert {i.stream for i in b.take(0.0)} == {"a", "b"}
    b.hold("a")
    b.offer("a", 2, True, 0.01)
    b.offer("a", 3, True, 0.02)
    assert b.seconds_until_due(0.02) is None
    b.offer("b", 2, True, 0.02)
    assert b.seconds_until_due(0.02) == 0.0  # b is the only stream that could add a frame
    assert [(i.stream, i.seq) for i in b.take(0.02)] == [("b", 2)]
    b.unhold("a")
    assert [(i.stream, i.seq) for i in b.take(0.03)] == [("a", 3)]  # the newest; 2 dropped
    assert b.dropped["a"] == 1


def simulate_overload(streams: int, max_batch: int, image_s: float, seconds: float = 60.0,
                      fps: float = 15.0) -> tuple[dict[str, int], list[float]]:
    """Real-time cameras offering more frames than one inference worker can take (each image costs ``image_s``,
    a batch costs the sum): frames analysed per stream and each analysed frame's lag (arrival to result)."""
    import heapq
    import random

    rng = random.Random(1)
    arrivals = []  # (time, stream, seq)
    for i in range(streams):
        phase = rng.uniform(0, 1 / fps)
        arrivals += [(phase + k / fps, f"cam{i}", k + 1) for k in range(int(seconds * fps))]
    heapq.heapify(arrivals)
    b = Batcher(max_batch=max_batch, max_wait_s=WAIT)
    arrived: dict[tuple[str, int], float] = {}
    analysed: dict[str, int] = {f"cam{i}": 0 for i in range(streams)}
    lags: list[float] = []
    now, busy_until = 0.0, 0.0
    while arrivals:
        now = arrivals[0][0] if now < arrivals[0][0] else now
        while arrivals and arrivals[0][0] <= now:
            t, stream, seq = heapq.heappop(arrivals)
            arrived[(stream, seq)] = t
            b.offer(stream, seq, True, now=t)
        due = b.seconds_until_due(now)
        if now >= busy_until and due is not None and due <= 0:
            batch = b.take(now)
            busy_until = now + image_s * len(batch)
            for item in batch:
                analysed[item.stream] += 1
                lags.append(busy_until - arrived[(item.stream, item.seq)])
            now = busy_until
        else:
            nxt = [x for x in (arrivals[0][0] if arrivals else None, now + due if due else None,
                               busy_until if busy_until > now else None) if x is not None]
            now = min(nxt) if nxt else now + 1e-3
    return analysed, lags


@pytest.mark.parametrize(("streams", "max_batch"), [(6, 1), (12, 1), (12, 4)])
def test_overload_sheds_evenly_across_streams_and_lag_stays_bounded(streams: int, max_batch: int) -> None:
    """Fair load shedding: 6 or 12 cameras at 15 fps against a worker that analyses 50 images a second. Every
    stream's analysed rate falls by the same share, and lag stays at about one batch plus one frame interval
    instead of growing with a queue."""
    image_s = 0.02
    analysed, lags = simulate_overload(streams, max_batch, image_s)
    counts = list(analysed.values())
    mean = sum(counts) / len(counts)
    assert sum(counts) == pytest.approx(60 / image_s, rel=0.05)  # the worker never idles while frames wait
    assert max(counts) - min(counts) <= max(2, 0.05 * mean), analysed
    bound = image_s * max_batch * 2 + image_s * streams / max_batch + 1 / 15
    early, late = lags[: len(lags) // 4], lags[-len(lags) // 4:]
    assert max(lags) <= bound, (max(lags), bound)
    assert sum(late) / len(late) <= 1.1 * sum(early) / len(early) + 1e-3  # no queue building up
