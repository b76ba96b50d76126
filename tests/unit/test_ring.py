"""streamd.ipc.ring: shared-memory frame ring (seqlock slots, back-pressure, orphan cleanup)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from streamd.errors import RingError
from streamd.ipc import ring as ring_module
from streamd.ipc.ring import (
    SHM_DIR,
    FrameRing,
    FrameTooLarge,
    remove_orphaned_rings,
    ring_bytes,
    ring_generation,
    ring_name,
    unlink_ring,
)


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
    assert isinstance(info.value, FrameTooLarge)  # the decoder fails the stream on this type, no restart
    assert (info.value.max_width, info.value.max_height) == (16, 8)
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


# --- shared memory too small (issue 19 item 10) -----------------------------------------------------


class _FakeStatvfs:
    def __init__(self, free: int):
        self.f_bavail, self.f_frsize = free // 4096, 4096


def test_create_refuses_a_ring_larger_than_the_free_shared_memory(monkeypatch) -> None:
    size = ring_bytes(8, 1920, 1080)
    free = size // 3 // 4096 * 4096
    seen: list[object] = []

    def statvfs(path: object) -> _FakeStatvfs:
        seen.append(path)
        return _FakeStatvfs(free)

    monkeypatch.setattr(ring_module.os, "statvfs", statvfs)
    name = _unique("full")
    with pytest.raises(RingError) as info:
        FrameRing.create(name, 8, 1920, 1080)
    message = str(info.value)
    assert seen == [SHM_DIR]
    assert "/dev/shm" in message and name in message
    assert f"needs {size} bytes" in message and f"{free} bytes" in message
    for fix in ("--shm-size", "shm_size", "emptyDir", "medium: Memory", "ring_slots", "max_width", "max_height"):
        assert fix in message, fix
    assert not (SHM_DIR / name).exists()


def test_ring_bytes_is_what_create_maps(make_ring) -> None:
    ring = make_ring(n_slots=5, max_width=33, max_height=7)
    assert (SHM_DIR / ring.name).stat().st_size == ring_bytes(5, 33, 7)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs standing in for a small /dev/shm (a Docker container's default is 64 MiB)."""
    mount = tmp_path / "shm"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the statvfs test covers the check")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_create_reserves_the_whole_ring_and_refuses_the_next_one(small_tmpfs: Path) -> None:
    first = FrameRing.create("streamd-1-a", 5, 640, 480, directory=small_tmpfs)  # 4.4 MiB of 8
    try:
        size = ring_bytes(5, 640, 480)
        assert os.stat(small_tmpfs / first.name).st_blocks * 512 >= size  # allocated, not sparse
        with pytest.raises(RingError, match=rf"not enough shared memory in {small_tmpfs}.*--shm-size"):
            FrameRing.create("streamd-1-b", 5, 640, 480, directory=small_tmpfs)
        assert sorted(p.name for p in small_tmpfs.iterdir()) == ["streamd-1-a"]
    finally:
        first.close()
        unlink_ring(first.name, small_tmpfs)


def test_reservation_failure_is_a_ring_error_and_leaves_nothing(small_tmpfs: Path, monkeypatch) -> None:
    # statvfs can be stale (another process allocating at the same time): posix_fallocate is the real test.
    monkeypatch.setattr(ring_module.os, "statvfs", lambda path: _FakeStatvfs(1 << 40))
    with pytest.raises(RingError, match=r"not enough shared memory .* needs \d+ bytes"):
        FrameRing.create("streamd-1-big", 8, 1280, 720, directory=small_tmpfs)  # 22 MiB
    assert list(small_tmpfs.iterdir()) == []


_FILL_AND_WRITE = """
import sys
from pathlib import Path
import numpy as np
from streamd.ipc.ring import FrameRing
directory = Path(sys.argv[1])
ring = FrameRing.create("streamd-1-w", 6, 640, 480, directory=directory)
try:  # another process fills the rest of the tmpfs
    with open(directory / "filler", "wb") as f:
        while True:
            f.write(b"x" * 65536)
            f.flush()
except OSError:
    pass
for i in range(12):  # every slot, whole frames: pages first touched now
    ring.write(np.full((480, 640, 3), i, np.uint8), i, 0.0, 0.0, 0)
print("wrote", ring.write_seq)
"""


def test_frame_writes_cannot_hit_sigbus_when_shared_memory_fills_up(small_tmpfs: Path) -> None:
    """Without the reservation the writer dies with SIGBUS (rc -7) on the first untouched page."""
    done = subprocess.run([sys.executable, "-c", _FILL_AND_WRITE, str(small_tmpfs)], capture_output=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, (done.returncode, done.stderr.decode(errors="replace")[-2000:])
    assert done.stdout.decode().split() == ["wrote", "12"]


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


def _i420(width: int = 16, height: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(16, 236, (height * 3 // 2, width), dtype=np.uint8)


def test_i420_frames_read_back_as_full_resolution_bgr(make_ring) -> None:
    import cv2

    ring = make_ring(n_slots=4, max_width=16, max_height=8)
    yuv = _i420()
    seq = ring.write_i420(yuv, 16, 8, frame_index=3, pts_s=0.1, wall_ts=1.0, t_decoded_ns=5)
    meta, image = ring.read(seq)
    assert (meta.width, meta.height, meta.frame_index) == (16, 8, 3)
    assert np.array_equal(image, cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)) and ring.still_valid(seq)
    assert ring.read_model(seq, 1) is None  # nobody asked for model-ready pixels


def test_model_ready_pixels_follow_the_consumers_request(make_ring) -> None:
    from streamd.infer.preprocess import PreprocessSpec, letterbox_i420_into, letterbox_into, model_input_request

    ring = make_ring(n_slots=4, max_width=64, max_height=32)
    reader = FrameRing.attach(ring.name)
    try:
        spec = PreprocessSpec()
        gen = reader.request_model_input(model_input_request(spec, (16, 16)))
        yuv = _i420(64, 32)
        seq = ring.write_i420(yuv, 64, 32, 0, 0.0, 0.0, 0, letterbox_i420_into)
        meta, view, transform = reader.read_model(seq, gen)
        _, bgr = reader.read(seq)
        expected = np.zeros((16, 16, 3), np.uint8)
        t = letterbox_into(bgr, expected, spec)
        assert np.array_equal(view, expected)  # the decoder's pixels are the inference stage's own
        assert transform == (t.scale_x, t.scale_y, t.pad_x, t.pad_y)
        newer = reader.request_model_input(model_input_request(PreprocessSpec(letterbox=False), (8, 16)))
        assert reader.read_model(seq, newer) is None  # made for the old request
        seq = ring.write_i420(yuv, 64, 32, 1, 0.0, 0.0, 0, letterbox_i420_into)
        assert reader.read_model(seq, newer)[1].shape == (8, 16, 3)
        seq = ring.write(np.zeros((32, 64, 3), np.uint8), 2, 0.0, 0.0, 0)
        assert reader.read_model(seq, newer) is None  # a BGR frame has none
    finally:
        reader.close()


def test_model_input_that_does_not_fit_is_not_requested(make_ring) -> None:
    ring = make_ring(n_slots=4, max_width=16, max_height=8)
    assert not ring.model_input_fits(320, 320) and ring.model_input_fits(4, 4)
    assert not ring.fits_i420(15, 8)
