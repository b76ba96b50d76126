"""Hostile edits and hard faults on a running daemon beside a healthy stream (issue 19 items 1, 2, 4, 10): each is
rejected or fails only its own stream, the watch loop keeps answering and the healthy stream keeps analysing."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from streamd.demo import package_file
from streamd.synth.conveyor import SceneConfig, render_video
from tests.conftest import write_config
from tests.unit.test_model import KNOWN, ULTRA_META, constant_model

pytestmark = pytest.mark.integration

FPS = 10
MODEL = package_file("models", "conveyor.onnx")
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdef", "bcdefg"))


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    video = tmp_path_factory.mktemp("hostile") / "belt.mp4"
    render_video(SceneConfig(seed=3, fps=FPS, seconds=6.0, belt_speed=18.0, density=1.0), video)
    return video


def base(tmp_path: Path, belt: Path, **extra: object) -> dict:
    return {
        "streams": [{"name": "ok", "url": str(belt), "pipeline": "good", "realtime": True, "loop": True}],
        "pipelines": {"good": {"model": str(MODEL), "confidence": 0.35}},
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}],
        "counts": {"path": str(tmp_path / "counts.db")},
        "supervisor": {"stats_interval_s": 1},
        **extra,
    }


class HealthProbe:
    """Polls /healthz and the healthy stream's frame counter in the background."""

    def __init__(self, url: str):
        self.url = url
        self.ages: list[float] = []
        self.failures: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=5)
                self.ages.append(r.json()["age_s"])
                if r.status_code != 200:
                    self.failures.append(r.text)
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            time.sleep(0.1)

    def close(self) -> None:
        self._done.set()
        self._thread.join(10)


def frames(url: str, stream: str = "ok") -> int:
    return httpx.get(f"{url}/api/streams", timeout=10).json()["streams"][stream]["frames_analysed"]


def wait_more_frames(url: str, after: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = frames(url)
        if now > after + FPS:  # at least a second's worth
            return now
        time.sleep(0.2)
    raise AssertionError(f"the healthy stream stopped analysing (at {frames(url)} frames, was {after})")


def reload_status(url: str) -> dict:
    return httpx.get(f"{url}/api/streams", timeout=10).json()["reload"]


def wait_reload(url: str, after: float, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = reload_status(url)
        if (status.get("at") or 0) > after and not status.get("in_progress"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"no reload finished within {timeout}s: {reload_status(url)}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_hostile_edits_of_a_running_daemon_are_rejected(belt: Path, tmp_path: Path, daemon_factory) -> None:
    cfg_path = write_config(tmp_path / "streamd.yaml", base(tmp_path, belt))
    daemon = daemon_factory(cfg_path)
    url = daemon.wait_for("api_listening", timeout=90)["url"].rstrip("/")
    count = wait_more_frames(url, 0, timeout=60)
    valid = cfg_path.read_bytes()
    grey = constant_model(tmp_path / "grey.onnx", KNOWN, metadata=ULTRA_META, input_shape=["b", 1, 64, 64])
    with_grey = base(tmp_path, belt)
    with_grey["streams"].append({"name": "grey", "url": str(belt), "pipeline": "grey", "realtime": True, "loop": True})
    with_grey["pipelines"]["grey"] = {"model": str(grey)}
    edits = {
        "bad byte": valid + b"# S\xfcd\n",
        "NUL byte": valid + b"# \x00\n",
        "alias bomb": ALIAS_BOMB.encode(),
        "one-channel model": None,
    }
    rss_before = rss_mb(daemon.proc.pid)
    probe = HealthProbe(url)
    try:
        for what, data in edits.items():
            at = reload_status(url).get("at") or 0.0
            if data is None:
                write_config(cfg_path, with_grey)
            else:
                cfg_path.write_bytes(data)
            status = wait_reload(url, at)
            assert status["ok"] is False, f"{what}: {status}"
            assert str(cfg_path) in status["error"] or "grey" in status["error"], f"{what}: {status['error']}"
            if what == "one-channel model":
                assert "pipeline grey" in status["error"] and "1 channels" in status["error"], status["error"]
            assert daemon.proc.poll() is None, f"{what}: the daemon exited"
            count = wait_more_frames(url, count)
            assert set(httpx.get(f"{url}/api/streams").json()["streams"]) == {"ok"}
        cfg_path.write_bytes(valid)
    finally:
        probe.close()
    assert not probe.failures, probe.failures[:3]
    assert probe.ages and max(probe.ages) < 3.0, f"the watch loop stalled: snapshot {max(probe.ages):.1f} s old"
    assert rss_mb(daemon.proc.pid) < rss_before + 200, "the supervisor's memory grew with a hostile file"
    assert "Traceback" not in daemon.log_path.read_text()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0


def test_a_ring_that_does_not_fit_in_dev_shm_fails_its_stream_only(belt: Path, tmp_path: Path,
                                                                     daemon_factory) -> None:
    free = os.statvfs("/dev/shm")
    free_bytes = free.f_bavail * free.f_frsize
    slots = 256
    side = 16384
    if slots * side * side * 3 <= free_bytes:
        pytest.skip("/dev/shm is larger than the largest ring a config can ask for")
    cfg = base(tmp_path, belt)
    cfg["streams"].append({"name": "huge", "url": str(belt), "pipeline": "good", "realtime": True, "loop": True,
                           "ring_slots": slots, "max_width": side, "max_height": side})
    daemon = daemon_factory(write_config(tmp_path / "streamd.yaml", cfg))
    url = daemon.wait_for("api_listening", timeout=90)["url"].rstrip("/")
    wait_more_frames(url, 0, timeout=60)
    huge = httpx.get(f"{url}/api/streams").json()["streams"]["huge"]
    assert huge["state"] == "failed" and "/dev/shm" in huge["last_error"], huge
    assert "--shm-size" in huge["last_error"], huge["last_error"]
    assert daemon.proc.poll() is None


def test_an_inference_stage_in_a_crash_loop_fails_only_its_pipelines_streams(belt: Path, tmp_path: Path,
                                                                              daemon_factory) -> None:
    cfg = base(tmp_path, belt, supervisor={"stats_interval_s": 1, "crash_loop_restarts": 3,
                                           "restart": {"initial_s": 0.1, "max_s": 0.2}})
    cfg["pipelines"]["other"] = {"model": str(package_file("models", "conveyor.int8.onnx"))}
    cfg["streams"].append({"name": "victim", "url": str(belt), "pipeline": "other", "realtime": True, "loop": True})
    daemon = daemon_factory(write_config(tmp_path / "streamd.yaml", cfg))
    url = daemon.wait_for("api_listening", timeout=90)["url"].rstrip("/")
    count = wait_more_frames(url, 0, timeout=60)
    stages = httpx.get(f"{url}/api/streams").json()["stages"]
    inference = sorted(n for n, s in stages.items() if s["kind"] == "inference")
    assert len(inference) == 2
    # the victim's inference stage: the one whose pipelines include "other" (its log line names the model)
    ready = {e["stage"]: e["model"] for e in daemon.find("inference_ready")}
    victim = next(n for n in inference if ready.get(n, "").endswith("conveyor.int8.onnx"))
    daemon.kill_every_start(victim, until="stage_crash_loop", timeout=60)
    failed = daemon.wait_for("stream_failed", stream="victim", timeout=30)
    assert "pipeline other" in failed["error"], failed
    wait_more_frames(url, count)
    streams = httpx.get(f"{url}/api/streams").json()["streams"]
    assert streams["victim"]["state"] == "failed" and "pipeline other" in streams["victim"]["last_error"]
    assert daemon.proc.poll() is None and not daemon.find("daemon_failed")
