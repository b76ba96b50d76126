"""Camera health checks frame by frame, on frames of the real clips (tools/health_eval.py holds the faults)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamd.config.models import HealthConfig, StreamConfig
from streamd.health.checks import CameraHealth, Hysteresis, sample_of
from streamd.health.store import HealthStore
from tools.health_eval import CLIPS, MEDIA, blur, darken, decode, rotate, shift, source_frames

pytestmark = pytest.mark.skipif(not (MEDIA / CLIPS["traffic"]).exists(), reason="needs ../shared/media/videos")


@pytest.fixture(scope="module")
def traffic() -> list[np.ndarray]:
    return [frame for _, frame in decode(MEDIA / CLIPS["traffic"], 2.0)]


@pytest.fixture(scope="module")
def clips(traffic) -> dict[str, list[np.ndarray]]:
    """The moved check's hard cases too: car (smooth asphalt, exposure changes, the only edges on the moving
    cars but a few marks) and the conveyor (a moving belt between two straight rails)."""
    found = {"traffic": traffic, "conveyor": list(source_frames("conveyor", 30.0, 2.0, Path()))}
    for name in ("bottle", "car"):
        found[name] = [frame for _, frame in decode(MEDIA / CLIPS[name], 2.0)]
    return found


def run(frames: list[np.ndarray], config: HealthConfig, fault=None, start: float = 6.0, end: float = 1e9,
        seconds: float = 20.0) -> list[tuple[float, str, str]]:
    """Feed the clip looped at 2 samples/s; ``fault`` transforms frames in [start, end)."""
    health = CameraHealth(config)
    changes = []
    first = None
    for i in range(int(seconds * 2)):
        t = i / 2
        frame = frames[i % len(frames)]
        if fault is not None and start <= t < end:
            first = frame if first is None else first
            frame = fault(frame, first)
        changes += [(t, c.check, c.state) for c in health.update(sample_of(frame), t)]
    return changes


def test_hysteresis_rises_after_its_time_and_clears_after_clear_s() -> None:
    h = Hysteresis(after_s=3, clear_s=2)
    assert [h.update(2, t) for t in (0, 1, 2, 3)] == [0, 0, 0, 2]
    assert [h.update(0, t) for t in (4, 5, 6)] == [2, 2, 0]
    h.update(1, 10)
    h.interrupt()  # could not measure: the run starts over
    assert [h.update(1, t) for t in (11, 13, 14)] == [0, 0, 1]


def test_untouched_clip_raises_nothing(traffic) -> None:
    assert run(traffic, HealthConfig(), seconds=60) == []


@pytest.mark.parametrize("fault, check", [
    (lambda f, first: first, "frozen"),
    (lambda f, first: np.zeros_like(f), "blackout"),
    (lambda f, first: darken(f), "blackout"),
    (lambda f, first: blur(f), "blur"),
    (lambda f, first: shift(f), "moved"),
    (lambda f, first: rotate(f), "moved"),
], ids=["frozen", "black", "dark", "blur", "shift", "rotation"])
def test_each_fault_is_detected_within_t_plus_2_s_and_clears(traffic, fault, check) -> None:
    config = HealthConfig()
    after = getattr(config, check).after_s
    start, end = 6.0, 6.0 + after + 4
    changes = run(traffic, config, fault, start, end, seconds=end + 8)
    raised = [t for t, c, s in changes if c == check and s != "ok"]
    cleared = [t for t, c, s in changes if c == check and s == "ok"]
    assert raised and start <= raised[0] <= start + after + 2, changes
    assert cleared and end <= cleared[0] <= end + config.clear_s + 2, changes
    assert {c for _, c, _ in changes} == {check}, changes  # one fault, one alarm


@pytest.mark.parametrize("source", ["traffic", "bottle", "car", "conveyor"])
@pytest.mark.parametrize("fault", [shift, rotate], ids=["shift", "rotation"])
def test_moved_is_detected_on_every_clip_within_t_plus_2_s_and_clears(clips, source, fault) -> None:
    config = HealthConfig()
    after = config.moved.after_s
    start, end = 10.0, 10.0 + after + 5
    changes = run(clips[source], config, lambda f, first: fault(f), start, end, seconds=end + 12)
    raised = [t for t, c, s in changes if c == "moved" and s != "ok"]
    cleared = [t for t, c, s in changes if c == "moved" and s == "ok"]
    assert raised and start <= raised[0] <= start + after + 2, changes
    # clearing needs the view measured: on bottle a hand and the bottles being moved hide most of the static
    # structure for a few seconds right after the fault, and the state holds until it can be seen again
    assert cleared and end <= cleared[0] <= end + config.clear_s + 7, changes
    assert {c for _, c, _ in changes} == {"moved"}, changes


@pytest.mark.parametrize("source", ["bottle", "car", "conveyor"])
def test_untouched_hard_clips_do_not_look_moved(clips, source) -> None:
    assert run(clips[source], HealthConfig(), seconds=90) == []


def test_reset_learns_the_moved_view_again(traffic) -> None:
    health = CameraHealth(HealthConfig())
    t = 0.0
    for i in range(40):
        t = i / 2
        frame = traffic[i % len(traffic)]
        health.update(sample_of(shift(frame) if t >= 6 else frame), t)
    assert health.states()["moved"] == "failed"
    changes = health.reset()
    assert [(c.check, c.state) for c in changes] == [("moved", "ok")]
    for i in range(40, 80):
        health.update(sample_of(shift(traffic[i % len(traffic)])), i / 2)
    assert health.unhealthy() == []


def test_health_is_on_by_default_and_configurable_per_stream() -> None:
    stream = StreamConfig(name="cam", url="a.mp4", pipeline="p", health={"frozen": {"after_s": 30}})
    assert stream.health.enabled and stream.health.frozen.after_s == 30 and stream.health.blur.after_s == 5


def test_store_records_intervals_and_reports_unhealthy_minutes(tmp_path: Path) -> None:
    store = HealthStore(tmp_path / "counts.db")
    store.open("cam", "frozen", "failed", 1000.0)
    store.close_interval("cam", "frozen", 1120.0)
    store.open("cam", "blackout", "failed", 1100.0)  # overlaps: counted once
    store.close_interval("cam", "blackout", 1180.0)
    store.open("cam", "moved", "warning", 5000.0)  # left open by a crash, last seen at 5060
    store.touch(5060.0)
    store.close()
    store = HealthStore(tmp_path / "counts.db")
    assert store.recover() == 1
    store.close()
    reader = HealthStore(tmp_path / "counts.db", readonly=True)
    found = reader.unhealthy(since=0.0, until=7200.0)["cam"]
    assert found.seconds == 180 + 60 and found.checks == ("blackout", "frozen", "moved")
    assert found.describe() == "4 of 120 min unhealthy (blackout, frozen, moved)"
    reader.close()
