"""detect_fps: which frames a stream analyses, chosen by timestamp."""

from __future__ import annotations

import pytest

from streamd.decode.sampling import FrameSampler


def kept(fps: float, pts: list[float]) -> list[int]:
    sampler = FrameSampler(fps)
    return [i for i, t in enumerate(pts) if sampler.keep(t)]


@pytest.mark.parametrize(("source_fps", "detect_fps", "stride"), [(30, 15, 2), (30, 10, 3), (30, 7.5, 4),
                                                                   (30, 5, 6), (15, 5, 3), (25, 25, 1)])
def test_an_even_multiple_keeps_every_nth_frame(source_fps: int, detect_fps: float, stride: int) -> None:
    pts = [i / source_fps for i in range(300)]
    assert kept(detect_fps, pts) == list(range(0, 300, stride))


def test_an_uneven_ratio_keeps_the_rate_on_average_never_two_in_one_slot() -> None:
    pts = [i / 25 for i in range(250)]  # 10 s at 25 fps, analysed at 10
    frames = kept(10, pts)
    assert len(frames) == 100
    slots = [int(pts[i] * 10 + 1e-6) for i in frames]
    assert slots == list(range(100))


def test_a_higher_detect_fps_than_the_source_keeps_every_frame() -> None:
    assert kept(60, [i / 15 for i in range(45)]) == list(range(45))


def test_jittered_camera_timestamps_give_the_rate_not_the_jitter() -> None:
    import random

    rng = random.Random(7)
    pts = [i / 30 + rng.uniform(-0.004, 0.004) for i in range(900)]  # 30 s of a camera with a jittery clock
    assert abs(len(kept(5, pts)) - 150) <= 1


def test_a_clock_that_restarts_starts_the_slots_again() -> None:
    pts = [i / 30 for i in range(30)] + [i / 30 for i in range(30)]  # a camera reconnected with its clock at 0
    frames = kept(5, pts)
    assert frames == [0, 6, 12, 18, 24, 30, 36, 42, 48, 54]


def test_detect_fps_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameSampler(0)
