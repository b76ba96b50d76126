"""Hot reload on a running daemon: add, change and remove streams by editing the YAML, SIGHUP and POST
/api/reload; an invalid edit is rejected and the running config stays."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from streamd.demo import package_file
from streamd.ipc.ring import ring_generation
from streamd.synth.conveyor import SceneConfig, render_video
from tests.conftest import write_config

pytestmark = pytest.mark.integration

FPS = 10


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    video = tmp_path_factory.mktemp("reload") / "belt.mp4"
    render_video(SceneConfig(seed=5, fps=FPS, seconds=8.0, belt_speed=18.0, density=1.0), video)
    return video


def config(tmp_path: Path, video: Path, streams: list[str], **extra: object) -> dict:
    return {
        "streams": [{"name": n, "url": str(video), "pipeline": "conveyor", "realtime": True, "loop": True}
                    for n in streams],
        "pipelines": {"conveyor": {
            "model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35,
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}],
        }},
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl"), "include_tracks": True}],
        "counts": {"path": str(tmp_path / "counts.db")},
        "supervisor": {"stats_interval_s": 1},
        **extra,
    }


def api_url(daemon) -> str:
    return daemon.wait_for("api_listening", timeout=60)["url"].rstrip("/")


def tracked_frames(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        if '"type":"tracks"' in line:
            out.append(json.loads(line))
    return out


def wait_streaming(url: str, names: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        streams = httpx.get(f"{url}/api/streams").json()["streams"]
        if names <= set(streams) and all(streams[n]["frames_analysed"] > 0 for n in names):
            return streams
        time.sleep(0.2)
    raise AssertionError(f"{names} not all analysing frames within {timeout}s: {streams}")


def max_gap_s(frames: list[dict], stream: str, since: float, until: float) -> float:
    stamps = sorted(f["ts"] for f in frames if f["stream"] == stream and since <= f["ts"] <= until)
    assert len(stamps) > 10, f"{stream}: only {len(stamps)} frames in the window"
    return max(b - a for a, b in zip(stamps, stamps[1:]))


def test_add_a_stream_by_editing_the_file(belt: Path, tmp_path: Path, daemon_factory) -> None:
    cfg_path = write_config(tmp_path / "streamd.yaml", config(tmp_path, belt, ["a", "b"]))
    daemon = daemon_factory(cfg_path)
    url = api_url(daemon)
    wait_streaming(url, {"a", "b"})
    time.sleep(2.0)
    edited = time.time()
    write_config(cfg_path, config(tmp_path, belt, ["a", "b", "c"]))
    applied = daemon.wait_for("reload_applied", timeout=30)
    assert applied["added"] == ["c"] and applied["reason"] == "file"
    deadline = time.monotonic() + 15
    first_c = None
    while time.monotonic() < deadline and first_c is None:
        first_c = next((f["ts"] for f in tracked_frames(tmp_path / "events.jsonl") if f["stream"] == "c"), None)
        time.sleep(0.1)
    assert first_c is not None, "the added stream produced no frame"
    time.sleep(3.0)
    frames = tracked_frames(tmp_path / "events.jsonl")
    gaps = {s: max_gap_s(frames, s, edited - 1.0, edited + 6.0) for s in ("a", "b")}
    print(f"first frame of the new stream {first_c - edited:.2f} s after the edit; largest gaps of the others "
          f"{ {s: round(g * 1000) for s, g in gaps.items()} } ms (frame interval {1000 // FPS} ms)")
    assert first_c - edited < 5.0
    assert all(g <= 2.0 / FPS + 0.02 for g in gaps.values()), gaps
    streams = httpx.get(f"{url}/api/streams").json()["streams"]
    assert set(streams) == {"a", "b", "c"}


def test_invalid_edit_is_rejected_and_the_old_config_keeps_running(belt: Path, tmp_path: Path, daemon_factory) -> None:
    cfg_path = write_config(tmp_path / "streamd.yaml", config(tmp_path, belt, ["a"]))
    daemon = daemon_factory(cfg_path)
    url = api_url(daemon)
    wait_streaming(url, {"a"})
    broken = config(tmp_path, belt, ["a", "b"])
    broken["streams"][1]["pipeline"] = "nope"
    write_config(cfg_path, broken)
    rejected = daemon.wait_for("reload_rejected", timeout=30)
    assert "streamd.yaml:" in rejected["error"] and "nope" in rejected["error"]
    before = httpx.get(f"{url}/api/streams").json()
    assert before["reload"]["ok"] is False and "nope" in before["reload"]["error"]
    assert set(before["streams"]) == {"a"}
    metrics = httpx.get(f"{url}/metrics").text
    assert "streamd_config_last_reload_ok 0.0" in metrics
    assert 'streamd_config_reloads_total{result="rejected"} 1.0' in metrics
    frames = before["streams"]["a"]["frames_analysed"]
    time.sleep(1.5)
    assert httpx.get(f"{url}/api/streams").json()["streams"]["a"]["frames_analysed"] > frames  # still running


def test_remove_and_change_streams_with_sighup_and_the_api(belt: Path, tmp_path: Path, daemon_factory) -> None:
    cfg_path = write_config(tmp_path / "streamd.yaml", config(tmp_path, belt, ["a", "b"], watch_config=False))
    daemon = daemon_factory(cfg_path)
    url = api_url(daemon)
    streams = wait_streaming(url, {"a", "b"})
    ring_a, ring_b = streams["a"]["ring"], Path("/dev/shm") / streams["b"]["ring"]
    assert ring_b.exists()
    # remove b (SIGHUP): its decoder stops and its shared memory is gone; a runs on
    write_config(cfg_path, config(tmp_path, belt, ["a"], watch_config=False))
    daemon.proc.send_signal(signal.SIGHUP)
    applied = daemon.wait_for("reload_applied", timeout=30)
    assert applied["removed"] == ["b"] and applied["reason"] == "signal"
    assert not ring_b.exists()
    assert not any(p.startswith(f"decode-b") for p in httpx.get(f"{url}/api/streams").json()["stages"])
    # change a's pipeline (a new line): POST /api/reload restarts a alone, on a new ring
    changed = config(tmp_path, belt, ["a"], watch_config=False)
    changed["pipelines"]["conveyor"]["lines"].append({"name": "mid", "points": [[200, 360], [200, 0]]})
    changed["sinks"] = [{"type": "jsonl", "path": str(tmp_path / "other.jsonl")}]  # needs a restart: reported
    write_config(cfg_path, changed)
    response = httpx.post(f"{url}/api/reload", timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changes"]["restarted"] == ["a"] and body["changes"]["needs_restart"] == ["sinks"]
    streams = wait_streaming(url, {"a"})
    assert streams["a"]["ring"] != ring_a  # restarted on a new ring
    assert not (Path("/dev/shm") / ring_a).exists()
    assert httpx.get(f"{url}/api/config").json()["needs_restart"] == ["sinks"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = httpx.get(f"{url}/api/streams").json()["streams"]["a"]["line_counts"]
        if any(k.startswith("mid/") for k in counts):
            break
        time.sleep(0.3)
    assert any(k.startswith("mid/") for k in counts), f"the new line never counted: {counts}"
    # The restarted file starts again at frame 0 with fresh track ids: its crossings are recorded under ids of
    # their own (the ring generation is in them), not dropped as replays of the first pass.
    generation = ring_generation(streams["a"]["ring"])
    assert generation >= 1
    with sqlite3.connect(tmp_path / "counts.db") as db:
        ids = [row[0] for row in db.execute("SELECT id FROM crossings WHERE stream='a' AND line='mid'")]
    assert ids and all(i.split("/")[1].endswith(f".{generation}") for i in ids), ids
