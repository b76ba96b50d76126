"""streamd.ipc.ring: shared-memory frame ring (seqlock slots, back-pressure, orphan cleanup)."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from streamd.errors import RingError
from streamd.ipc.ring import SHM_DIR, FrameRing, remove_orphaned_rings, ring_generation, ring_name, unlink_ring


def _unique(tag: str = "t", pid: int | None = None) -> str:
    return ring_name(os.getpid() if pid is None else pid, f"{tag}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def make_ring() -> Iterator[Callable[..., FrameRing]]:
    made: list[FrameRing] = []

    def make(n_slots: int = 4, max_width: int = 16, max_height: int = 8, channels: int = 3,
             name: str | None = None) -> FrameRing:
        ring = FrameRing.create(name or _unique(), n_slots, max_width, max_height, channels)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        ring.close()
        unlink_ring(ring.name)


def frame(value: int, width: int = 16, height: int = 8) -> np.ndarray:
    img = np.full((height, width, 3), value % 256, np.uint8)
    img[0, 0] = (1, 2, 3)  # channel order marker
    return img


def test_create_attach_round_trip_with_metadata(make_ring) -> None:
    writer = make_ring(n_slots=4, max_width=16, max_height=8)
    reader = FrameRing.attach(writer.name)
    try:
        assert (reader.n_slots, reader.max_width, reader.max_height, reader.channels) == (4, 16, 8, 3)
        assert reader.write_seq == 0 and reader.read(1) is None and reader.read(0) is None
        img = frame(77, width=10, height=6)
        seq = writer.write(img, frame_index=41, pts_s=1.25, wall_ts=1700000000.5, t_decoded_ns=123456789)
        assert seq == 1 and reader.write_seq == 1
        meta, pixels = reader.read(1)
        assert (meta.seq, meta.frame_index, meta.pts_s, meta.wall_ts, meta.t_decoded_ns) == (
            1, 41, 1.25, 1700000000.5, 123456789)
        assert (meta.height, meta.width) == (6, 10)
        assert pixels.shape == (6, 10, 3)
        np.testing.assert_array_equal(pixels, img)
        assert reader.still_valid(1)
        assert reader.read(2) is None  # not written yet
    finally:
        reader.close()


def test_frames_of_varying_size_share_slots(make_ring) -> None:
    ring = make_ring(n_slots=3)
    sizes = [(16, 8), (4, 2), (16, 1), (1, 8)]
    for i, (w, h) in enumerate(sizes):
        ring.write(frame(i * 10, w, h), i, 0.0, 0.0, 0)
    for seq in (2, 3, 4):
        meta, pixels = ring.read(seq)
        w, h = sizes[seq - 1]
        assert (meta.width, meta.height) == (w, h)
        np.testing.assert_array_equal(pixels, frame((seq - 1) * 10, w, h))


def test_reader_detects_an_overwritten_slot(make_ring) -> None:
    ring = make_ring(n_slots=4)
    for i in range(1, 4):
        ring.write(frame(i), i, 0.0, 0.0, 0)
    assert ring.read(1) is not None
    for i in range(4, 4 + 4):  # n_slots more writes: seq 1's slot now holds seq 5
        ring.write(frame(i), i, 0.0, 0.0, 0)
    assert ring.read(1) is None
    assert not ring.still_valid(1)
    assert ring.read(5)[0].frame_index == 5
    # the newest n_slots frames are all readable
    assert [ring.read(s)[0].seq for s in range(4, 8)] == [4, 5, 6, 7]


def test_still_valid_goes_false_when_a_held_view_is_overwritten(make_ring) -> None:
    ring = make_ring(n_slots=3)
    ring.write(frame(10), 0, 0.0, 0.0, 0)
    meta, view = ring.read(1)
    assert ring.still_valid(1)
    ring.write(frame(20), 1, 0.0, 0.0, 0)
    ring.write(frame(30), 2, 0.0, 0.0, 0)
    assert ring.still_valid(1)  # other slots written, ours untouched
    ring.write(frame(40), 3, 0.0, 0.0, 0)  # seq 4 reuses slot 1 % 3
    assert not ring.still_valid(1)
    assert view[1, 1, 0] == 40  # the view aliases shared memory: it now shows the new frame
    del view


def test_back_pressure_with_release(make_ring) -> None:
    ring = make_ring(n_slots=4)
    writable = []
    for i in range(5):
        writable.append(ring.can_write_without_drop())
        if writable[-1]:
            ring.write(frame(i), i, 0.0, 0.0, 0)
    # one slot stays spare: n_slots - 1 frames in flight at most
    assert writable == [True, True, True, False, False]
    assert ring.write_seq == 3
    ring.release(1)
    assert ring.released_seq == 1 and ring.can_write_without_drop()
    ring.write(frame(9), 9, 0.0, 0.0, 0)
    assert not ring.can_write_without_drop()
    ring.release(0)  # releases never go backwards
    assert ring.released_seq == 1
    ring.release(4)
    assert ring.can_write_without_drop()


def test_released_seq_is_shared_between_processes_views(make_ring) -> None:
    ring = make_ring(n_slots=3)
    other = FrameRing.attach(ring.name)
    try:
        ring.write(frame(1), 0, 0.0, 0.0, 0)
        ring.write(frame(2), 1, 0.0, 0.0, 0)
        assert not ring.can_write_without_drop()
        other.release(2)
        assert ring.released_seq == 2 and ring.can_write_without_drop()
        ring.mark_eof()
        assert other.eof_seq == 2
    finally:
        other.close()


@pytest.mark.parametrize(
    "shape",
    [(8, 17, 3), (9, 16, 3), (100, 100, 3), (8, 16, 4), (8, 16)],
    ids=["too-wide", "too-tall", "both", "channels", "grey"],
)
def test_frame_too_large_raises_with_the_fix(make_ring, shape: tuple[int, ...]) -> None:
    ring = make_ring(n_slots=3, max_width=16, max_height=8)
    with pytest.raises(RingError, match="raise the stream's max_width/max_height") as info:
        ring.write(np.zeros(shape, np.uint8), 0, 0.0, 0.0, 0)
    assert ring.name in str(info.value) and "16x8x3" in str(info.value)
    assert ring.write_seq == 0  # nothing published


def test_attach_to_missing_ring() -> None:
    name = _unique("missing")
    with pytest.raises(RingError, match=f"frame ring {name} does not exist"):
        FrameRing.attach(name)


def test_attach_to_foreign_segment_is_refused() -> None:
    name = _unique("foreign")
    path = SHM_DIR / name
    path.write_bytes(b"\0" * 4096)
    try:
        with pytest.raises(RingError, match="not a streamd frame ring"):
            FrameRing.attach(name)
    finally:
        path.unlink()


def test_create_refuses_too_few_slots_and_existing_names(make_ring) -> None:
    with pytest.raises(RingError, match="at least 3 slots"):
        FrameRing.create(_unique(), 2, 16, 8)
    ring = make_ring()
    with pytest.raises((FileExistsError, RingError)):  # never silently reuse another ring
        FrameRing.create(ring.name, 3, 16, 8)
    assert ring.n_slots == 4


def test_unlink_ring_reports_whether_it_existed(make_ring) -> None:
    ring = make_ring()
    assert unlink_ring(ring.name) is True
    assert unlink_ring(ring.name) is False


def _dead_pid() -> int:
    for pid in (999_999, 3_999_999, 4_194_000):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    pytest.skip("no dead pid found to name an orphaned ring")


def test_remove_orphaned_rings_keeps_live_owners(make_ring) -> None:
    dead = make_ring(name=_unique("orphan", pid=_dead_pid()))
    ours = make_ring(name=_unique("alive"))
    removed = remove_orphaned_rings()
    assert dead.name in removed
    assert not (SHM_DIR / dead.name).exists()
    assert ours.name not in removed
    assert (SHM_DIR / ours.name).exists()


# --- across processes ---------------------------------------------------------------------------


def _writer_child(name: str, count: int) -> None:
    ring = FrameRing.attach(name)
    deadline = time.monotonic() + 30
    for i in range(count):
        while not ring.can_write_without_drop():  # never drop: wait for the parent to release
            if time.monotonic() > deadline:
                raise SystemExit(3)
            time.sleep(0.0005)
        img = np.empty((6 + i % 3, 10, 3), np.uint8)
        img[...] = (i % 256, (2 * i) % 256, 255 - i % 256)
        ring.write(img, frame_index=i, pts_s=i / 30, wall_ts=0.0, t_decoded_ns=i)
    ring.mark_eof()
    ring.close()


def test_cross_process_writer_parent_reader(make_ring) -> None:
    count = 40
    ring = make_ring(n_slots=4, max_width=10, max_height=8)
    child = multiprocessing.get_context("spawn").Process(target=_writer_child, args=(ring.name, count))
    child.start()
    try:
        seen = []
        deadline = time.monotonic() + 60
        seq = 1
        while seq <= count:
            assert time.monotonic() < deadline, f"writer stalled at seq {seq}"
            if ring.write_seq < seq:
                time.sleep(0.0005)
                continue
            meta, pixels = ring.read(seq)
            i = meta.frame_index
            expected = np.empty((6 + i % 3, 10, 3), np.uint8)
            expected[...] = (i % 256, (2 * i) % 256, 255 - i % 256)
            np.testing.assert_array_equal(pixels, expected)
            assert ring.still_valid(seq)
            assert meta.pts_s == pytest.approx(i / 30)
            seen.append(i)
            ring.release(seq)
            seq += 1
        child.join(30)
        assert child.exitcode == 0
        assert seen == list(range(count))  # every frame, in order: back-pressure held
        assert ring.eof_seq == count
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_ring_generation_round_trips_through_the_name() -> None:
    for generation in (0, 1, 7, 123):
        assert ring_generation(ring_name(4321, "cam-1_a", generation)) == generation
