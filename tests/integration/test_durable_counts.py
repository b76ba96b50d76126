"""Counts survive kill -9: of the analytics process, and of the whole daemon followed by a restart."""

from __future__ import annotations

import json
from datetime import datetime, timezone
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamd.demo import DEMO_SCENES, package_file
from streamd.ipc.ring import remove_orphaned_rings
from streamd.synth import render_video
from tests.conftest import write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    video = tmp_path_factory.mktemp("scene") / "conveyor.mp4"
    truth = render_video(DEMO_SCENES[3], video)
    return video, truth.counts


def conveyor_config(tmp_path: Path, video: Path) -> Path:
    return write_config(tmp_path / "streamd.yaml", {
        "streams": [{"name": "belt", "url": str(video), "pipeline": "conveyor", "realtime": True}],
        "pipelines": {"conveyor": {
            "model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35,
            "tracker": {"lost_track_s": 0.5},
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}],
        }},
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}],
        "counts": {"path": str(tmp_path / "counts.db")},
        "supervisor": {"stats_interval_s": 1},
    })


def stored_counts(config: Path, window: str = "total") -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "streamd", "counts", str(config), "--window", window, "--json"],
                         capture_output=True, text=True, check=True)
    totals: dict[str, int] = {}
    for row in json.loads(out.stdout)["counts"]:
        assert (row["stream"], row["line"], row["direction"]) == ("belt", "exit", "in")
        totals[row["class"]] = totals.get(row["class"], 0) + row["count"]
    return totals


def off_by(counts: dict[str, int], truth: dict[str, int]) -> int:
    return sum(abs(counts.get(name, 0) - n) for name, n in truth.items())


def wait_frames(daemon, frames: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = daemon.find("stream_stats", stream="belt")
        if stats and stats[-1]["frames"] >= frames:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {frames} frames analysed within {timeout}s")


def test_kill_9_of_analytics_keeps_counts(scene, tmp_path: Path, daemon_factory) -> None:
    video, truth = scene
    config = conveyor_config(tmp_path, video)
    daemon = daemon_factory(config)
    wait_frames(daemon, 250)
    before = stored_counts(config)
    pid = next(e["pid"] for e in daemon.find("stage_started", stage="analytics"))
    os.kill(pid, signal.SIGKILL)
    assert daemon.wait(120) == 0
    after = stored_counts(config)
    assert all(after.get(k, 0) >= v for k, v in before.items()), "counts went down after the restart"
    assert off_by(after, truth) <= 1, f"counted {after}, truth {truth}"


def test_kill_9_of_the_daemon_then_restart_resumes_the_file(scene, tmp_path: Path, daemon_factory) -> None:
    video, truth = scene
    config = conveyor_config(tmp_path, video)
    first = daemon_factory(config)
    wait_frames(first, 250)
    first.proc.kill()
    first.wait(10)
    time.sleep(1.0)  # stage processes follow their supervisor (PDEATHSIG)
    partial = stored_counts(config)
    assert 0 < sum(partial.values()) < sum(truth.values())
    second = daemon_factory(config)
    assert second.wait(120) == 0, second.log_path.read_text()[-3000:]
    resumed = second.find("resuming_files")
    assert resumed and resumed[-1]["frames"]["belt"] >= 250
    final = stored_counts(config)
    assert off_by(final, truth) <= 1, f"counted {final}, truth {truth} (partial before the kill: {partial})"
    remove_orphaned_rings()  # the first supervisor's rings, as its successor also removed them


def test_counts_command_windows(scene, tmp_path: Path, daemon_factory) -> None:
    video, truth = scene
    config = conveyor_config(tmp_path, video)
    started = datetime.now(timezone.utc)
    daemon = daemon_factory(config)
    assert daemon.wait(120) == 0
    total = stored_counts(config, "total")
    # Every crossing happened during this run, so the current hour and shift hold all of them,
    # unless the run straddled the window's boundary (UTC hours; shifts start at 06, 14, 22 UTC).
    now = datetime.now(timezone.utc)
    hour = stored_counts(config, "hour")
    assert hour == total or started.hour != now.hour, f"hour {hour} vs total {total}"
    shift = stored_counts(config, "shift")
    assert shift == total or (started.hour != now.hour and now.hour in (6, 14, 22)), f"shift {shift} vs {total}"
    text = subprocess.run([sys.executable, "-m", "streamd", "counts", str(config), "--stream", "belt"],
                          capture_output=True, text=True, check=True).stdout
    assert "belt" in text and "exit" in text
    assert off_by(total, truth) == 0, f"counted {total}, truth {truth}"
