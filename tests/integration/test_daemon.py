"""The daemon as users run it: `streamd` subprocesses on real videos and the real YOLOX model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from tests.conftest import REPO, make_clip, write_config

pytestmark = pytest.mark.integration
TRAFFIC_FRAMES = 335
LINE_EVENT_FIELDS = {"type", "id", "stream", "line", "direction", "track_id", "class_name", "frame", "ts"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Counted by eye: contact sheets of every 8th frame, then every 2nd-3rd frame around each crossing, with the
# line drawn in. 11 cars cross y = 380 heading south; the frame where each one's front bumper passes the line:
MANUAL_CROSSING_FRAMES = [59, 59, 97, 130, 133, 237, 245, 255, 281, 305, 315]


def traffic_config(media: Path, tmp: Path, *, streams: list[dict] | None = None, **extra: object) -> dict:
    config: dict = {
        "streams": streams or [{"name": "highway", "url": str(media / "videos/Traffic.mp4"), "pipeline": "traffic"}],
        "pipelines": {
            "traffic": {
                "model": str(media / "models/yolox-nano/yolox_nano.onnx"),
                "labels": str(media / "models/coco.names"),
                "classes": ["car", "truck", "bus", "motorcycle"],
                "class_agnostic_nms": True,
                "lines": [{"name": "south", "points": [[0, 380], [960, 380]]}],
            }
        },
        "sinks": [{"type": "jsonl", "path": str(tmp / "out/events.jsonl")}],
        "supervisor": {"stats_interval_s": 1},
    }
    config.update(extra)
    return config


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "streamd", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("streamd ")


def test_validate_accepts_the_documented_example(media: Path, tmp_path: Path) -> None:
    # The example from the issue, verbatim except that media paths are absolute here.
    text = f"""
streams:
  - name: highway
    url: {media}/videos/Traffic.mp4
    pipeline: traffic
pipelines:
  traffic:
    model: {media}/models/yolox-nano/yolox_nano.onnx
    labels: {media}/models/coco.names
    classes: [car, truck, bus, motorcycle]
    lines:
      - name: south
        points: [[0, 380], [960, 380]]   # source-frame pixels
sinks:
  - type: jsonl
    path: out/events.jsonl
"""
    cfg = tmp_path / "streamd.yaml"
    cfg.write_text(text)
    ok = subprocess.run([sys.executable, "-m", "streamd", "validate", str(cfg)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    cfg.write_text(text.replace("classes: [car", "classes: [spaceship, car"))
    bad = subprocess.run([sys.executable, "-m", "streamd", "validate", str(cfg)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "spaceship" in bad.stderr and "known:" in bad.stderr
    cfg.write_text(text.replace("    pipeline: traffic", "    pipeline: traffic\n    ring_slots: 1"))
    bad = subprocess.run([sys.executable, "-m", "streamd", "validate", str(cfg)], capture_output=True, text=True)
    assert bad.returncode == 1 and f"{cfg}:6: streams[0].ring_slots" in bad.stderr, bad.stderr


def test_traffic_file_runs_every_frame_and_exits(media: Path, tmp_path: Path, daemon_factory) -> None:
    cfg = write_config(tmp_path / "streamd.yaml", traffic_config(media, tmp_path))
    daemon = daemon_factory(cfg)
    assert daemon.wait(180) == 0, daemon.log_path.read_text()[-3000:]
    summary = daemon.find("run_summary", stream="highway")[-1]
    assert summary["frames_decoded"] == TRAFFIC_FRAMES
    assert summary["frames_analysed"] == TRAFFIC_FRAMES, summary  # back-pressure: nothing dropped
    assert summary["dropped_stale"] == 0 and summary["dropped_overwritten"] == 0
    events = [e for e in read_jsonl(tmp_path / "out/events.jsonl") if e["type"] == "line_crossing"]
    assert sorted(e["frame"] for e in events) == pytest.approx(MANUAL_CROSSING_FRAMES, abs=4)
    assert {e["class_name"] for e in events} == {"car"}
    assert all(LINE_EVENT_FIELDS <= e.keys() for e in events)
    assert {e["class_name"] for e in events} <= {"car", "truck", "bus", "motorbike"}
    assert {e["direction"] for e in events} == {"in"}  # every vehicle drives toward the camera, downward
    assert len({(e["track_id"], e["line"], e["direction"]) for e in events}) == len(events)  # once per track
    assert summary["crossings"] == len(events) == summary["events_written"]


def test_realtime_file_is_paced_and_counts_drops(media: Path, tmp_path: Path, daemon_factory) -> None:
    streams = [{"name": "highway", "url": str(media / "videos/Traffic.mp4"), "pipeline": "traffic", "realtime": True}]
    cfg = write_config(tmp_path / "streamd.yaml", traffic_config(media, tmp_path, streams=streams))
    started = time.monotonic()
    daemon = daemon_factory(cfg)
    assert daemon.wait(180) == 0
    elapsed = time.monotonic() - started
    summary = daemon.find("run_summary", stream="highway")[-1]
    # 335 frames at 29.97 fps take 11.2 s when paced like a camera
    assert elapsed >= 10.5, f"a real-time file finished in {elapsed:.1f}s: not paced"
    assert summary["frames_decoded"] == TRAFFIC_FRAMES
    assert summary["frames_analysed"] + summary["dropped_stale"] + summary["dropped_overwritten"] == TRAFFIC_FRAMES
    assert summary["latency_p50_ms"] is not None and summary["latency_p50_ms"] > 0


def test_generated_clips_in_parallel_all_frames(media: Path, tmp_path: Path, daemon_factory) -> None:
    clips = [make_clip(tmp_path / f"clip{i}.mp4", frames=45 + 10 * i) for i in range(3)]
    streams = [{"name": f"cam{i}", "url": str(c), "pipeline": "traffic"} for i, c in enumerate(clips)]
    cfg = write_config(tmp_path / "streamd.yaml", traffic_config(media, tmp_path, streams=streams,
                                                                 inference={"max_batch": 4, "max_wait_ms": 5}))
    daemon = daemon_factory(cfg)
    assert daemon.wait(180) == 0, daemon.log_path.read_text()[-3000:]
    for i in range(3):
        summary = daemon.find("run_summary", stream=f"cam{i}")[-1]
        assert summary["frames_analysed"] == 45 + 10 * i, summary


def test_missing_file_fails_its_stream_only(media: Path, tmp_path: Path, daemon_factory) -> None:
    clip = make_clip(tmp_path / "ok.mp4", frames=30)
    streams = [
        {"name": "good", "url": str(clip), "pipeline": "traffic"},
        {"name": "broken", "url": str(tmp_path / "nope.mp4"), "pipeline": "traffic",
         "retry": {"max_attempts": 2, "initial_s": 0.1}},
    ]
    cfg = write_config(tmp_path / "streamd.yaml", traffic_config(media, tmp_path, streams=streams))
    daemon = daemon_factory(cfg)
    assert daemon.wait(120) == 1  # a stream failed: non-zero, but only after the good one finished
    assert daemon.find("run_summary", stream="good")[-1]["frames_analysed"] == 30
    failed = daemon.find("source_failed", stream="broken")
    assert failed and "nope.mp4" in failed[-1]["error"]


def _subscribe(port: int) -> zmq.Socket:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"tracks.")
    return sub


def _frames_within(sub: zmq.Socket, seconds: float) -> list[dict]:
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sub.poll(int(left * 1000)):
            got.append(json.loads(sub.recv_multipart()[1]))
    return got


def _first_frame_after(sub: zmq.Socket, killed_wall: float, timeout: float) -> float:
    """Seconds from the kill until a frame decoded after it comes out of the pipeline."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sub.poll(100):
            frame = json.loads(sub.recv_multipart()[1])
            if frame["ts"] > killed_wall:
                return time.time() - killed_wall
    raise AssertionError(f"no frame decoded after the kill came out within {timeout}s")


@pytest.mark.parametrize("victim", ["decode-highway", "infer-"])
def test_kill_9_of_a_stage_recovers_within_5s(victim: str, media: Path, tmp_path: Path, daemon_factory) -> None:
    port = free_port()
    streams = [{"name": "highway", "url": str(media / "videos/Traffic.mp4"), "pipeline": "traffic",
                "realtime": True, "loop": True}]
    config = traffic_config(media, tmp_path, streams=streams)
    config["sinks"].append({"type": "zmq", "endpoint": f"tcp://127.0.0.1:{port}"})
    daemon = daemon_factory(write_config(tmp_path / "streamd.yaml", config))
    sub = _subscribe(port)
    daemon.wait_for("source_state", state="streaming", timeout=60)
    assert _frames_within(sub, 2.0), "no frames before the kill"
    pid = next(e["pid"] for e in daemon.find("stage_started") if e["stage"].startswith(victim))
    killed_wall = time.time()
    os.kill(pid, signal.SIGKILL)
    recovery = _first_frame_after(sub, killed_wall, timeout=15)
    assert recovery < 5.0, f"frames flowed again only after {recovery:.1f}s"
    restarted = [e for e in daemon.find("stage_started") if e["stage"].startswith(victim) and e["pid"] != pid]
    assert restarted, "the supervisor did not restart the killed stage"
    assert daemon.find("stage_exited", stage=restarted[0]["stage"]), "the crash was not logged"
    assert daemon.stop() == 0


def test_kill_9_of_inference_loses_no_frame_of_a_file(media: Path, tmp_path: Path, daemon_factory) -> None:
    cfg = write_config(tmp_path / "streamd.yaml", traffic_config(media, tmp_path))
    daemon = daemon_factory(cfg)
    daemon.wait_for("stream_stats", timeout=60, state="streaming")
    pid = next(e["pid"] for e in daemon.find("stage_started") if e["stage"].startswith("infer-"))
    os.kill(pid, signal.SIGKILL)
    assert daemon.wait(180) == 0, daemon.log_path.read_text()[-3000:]
    summary = daemon.find("run_summary", stream="highway")[-1]
    assert summary["frames_analysed"] == TRAFFIC_FRAMES, summary


def test_sigterm_drains_and_cleans_up(media: Path, tmp_path: Path, daemon_factory) -> None:
    streams = [{"name": "highway", "url": str(media / "videos/Traffic.mp4"), "pipeline": "traffic",
                "realtime": True, "loop": True}]
    cfg = write_config(tmp_path / "streamd.yaml", traffic_config(media, tmp_path, streams=streams))
    daemon = daemon_factory(cfg)
    daemon.wait_for("stream_stats", timeout=60, state="streaming")
    time.sleep(2)
    assert daemon.stop() == 0
    summary = daemon.find("run_summary", stream="highway")[-1]
    assert summary["frames_analysed"] > 0
    assert daemon.find("daemon_stopped")
    runtime_dirs = [p for p in Path("/tmp").glob(f"streamd-{daemon.proc.pid}")]
    assert not runtime_dirs, "runtime directory left behind"


def test_kill_9_of_the_supervisor_leaves_no_orphans(media: Path, tmp_path: Path, daemon_factory) -> None:
    from streamd.ipc.ring import remove_orphaned_rings

    streams = [{"name": "highway", "url": str(media / "videos/Traffic.mp4"), "pipeline": "traffic",
                "realtime": True, "loop": True}]
    cfg = write_config(tmp_path / "streamd.yaml", traffic_config(media, tmp_path, streams=streams))
    daemon = daemon_factory(cfg)
    daemon.wait_for("source_state", state="streaming", timeout=60)
    children = [e["pid"] for e in daemon.find("stage_started")]
    daemon.proc.kill()
    daemon.wait(10)
    deadline = time.monotonic() + 10
    alive = children
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists() and
                 "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
        time.sleep(0.2)
    assert not alive, f"stage processes outlived the supervisor: {alive}"
    removed = remove_orphaned_rings()  # what the next daemon start does
    assert any(f"-{daemon.proc.pid}-" in name for name in removed)


def test_a_silent_stage_is_killed_and_restarted(media: Path, tmp_path: Path, daemon_factory) -> None:
    streams = [{"name": "highway", "url": str(media / "videos/Traffic.mp4"), "pipeline": "traffic",
                "realtime": True, "loop": True}]
    cfg = write_config(tmp_path / "streamd.yaml", traffic_config(
        media, tmp_path, streams=streams, supervisor={"stats_interval_s": 1, "heartbeat_timeout_s": 3}))
    daemon = daemon_factory(cfg)
    daemon.wait_for("source_state", state="streaming", timeout=60)
    pid = next(e["pid"] for e in daemon.find("stage_started", stage="decode-highway"))
    os.kill(pid, signal.SIGSTOP)  # alive but stuck, like a hung FFmpeg call
    stalled = daemon.wait_for("stage_stalled", stage="decode-highway", timeout=15)
    assert stalled["silent_s"] >= 3
    deadline = time.monotonic() + 10
    while (replacement := daemon.find("stage_started", stage="decode-highway")[-1]["pid"]) == pid:
        assert time.monotonic() < deadline, "the stalled decoder was not replaced"
        time.sleep(0.2)
    daemon.wait_for("source_state", state="streaming", pid=replacement, timeout=30)
    assert daemon.stop() == 0


def test_crash_loop_stops_restarting_and_exits_non_zero(media: Path, tmp_path: Path, daemon_factory) -> None:
    streams = [{"name": "highway", "url": str(media / "videos/Traffic.mp4"), "pipeline": "traffic",
                "realtime": True, "loop": True}]
    config = traffic_config(media, tmp_path, streams=streams, supervisor={
        "restart": {"initial_s": 0.1, "max_s": 0.2}, "crash_loop_restarts": 3, "crash_loop_window_s": 60})
    daemon = daemon_factory(write_config(tmp_path / "streamd.yaml", config))
    daemon.kill_every_start("sinks", until="stage_crash_loop", timeout=120)  # a core stage that keeps dying
    assert daemon.wait(30) == 1
    loop = daemon.find("stage_crash_loop", stage="sinks")
    assert loop and loop[-1]["crashes"] == 3
    assert len(daemon.find("stage_started", stage="sinks")) == 3  # the first start and two restarts
    assert daemon.find("daemon_failed", stage="sinks")
