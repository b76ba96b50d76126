"""Camera health on a real daemon: a conveyor clip with a black segment, written with PyAV in the test."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from streamd.config.models import HealthConfig
from streamd.demo import package_file
from tests.conftest import write_config
from tools.health_eval import faulted_clip

pytestmark = pytest.mark.integration


def jsonl_events(path: Path, kind: str) -> list[dict]:
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("type") == kind]


def poll(what, timeout: float, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def test_black_segment_reaches_sinks_api_metrics_and_reset_works(tmp_path: Path, daemon_factory) -> None:
    video = tmp_path / "black.mp4"
    start, end = faulted_clip("conveyor", "black", video, HealthConfig())  # black from 10 s to 18 s, 28 s long
    events = tmp_path / "events.jsonl"
    config = write_config(tmp_path / "streamd.yaml", {
        "streams": [{"name": "cam", "url": str(video), "pipeline": "conveyor", "realtime": True, "loop": True}],
        "pipelines": {"conveyor": {"model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35,
                                   "lines": [{"name": "exit", "points": [[320, 360], [320, 0]]}]}},
        "sinks": [{"type": "jsonl", "path": str(events)}],
        "counts": {"path": str(tmp_path / "counts.db")},
    })
    daemon = daemon_factory(config)
    url = daemon.wait_for("api_listening", timeout=60)["url"].rstrip("/")
    # the black segment starts 10 s into the clip; blackout fails after 3 s of it (+2 s allowed, + start-up)
    failed = poll(lambda: [e for e in jsonl_events(events, "camera_health")
                           if e["check"] == "blackout" and e["state"] == "failed"], timeout=60)
    assert failed[0]["stream"] == "cam" and failed[0]["previous"] == "ok" and failed[0]["id"].startswith("cam/health/")
    assert daemon.find("camera_health", stream="cam", check="blackout", state="failed")
    streams = poll(lambda: (s := httpx.get(f"{url}/api/streams").json()["streams"])["cam"]["health"].get("blackout")
                   != "ok" and s, timeout=10)
    assert set(streams["cam"]["health"]) == {"frozen", "blackout", "blur", "moved"}
    metrics = httpx.get(f"{url}/metrics").text
    assert 'streamd_camera_health{check="blackout",stream="cam"} 2.0' in metrics
    assert 'streamd_camera_health{check="frozen",stream="cam"} 0.0' in metrics
    # the picture comes back at 18 s: blackout clears after clear_s (3 s)
    poll(lambda: [e for e in jsonl_events(events, "camera_health") if e["check"] == "blackout" and e["state"] == "ok"],
         timeout=30)
    # the reset endpoint: guarded like every state-changing request, forwarded to the health stage
    refused = httpx.post(f"{url}/api/streams/cam/health/reset", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert httpx.post(f"{url}/api/streams/nope/health/reset").status_code == 404
    assert httpx.post(f"{url}/api/streams/cam/health/reset").status_code == 202
    daemon.wait_for("camera_health_reset", timeout=10, stream="cam")
    # the unhealthy interval is durable and shows with the counts
    counts = poll(lambda: (c := httpx.get(f"{url}/api/counts").json()).get("unhealthy", {}).get("cam") and c,
                  timeout=15)
    assert counts["unhealthy"]["cam"]["checks"] == ["blackout"] and counts["unhealthy"]["cam"]["seconds"] > 3
    printed = subprocess.run([sys.executable, "-m", "streamd", "counts", str(config)], capture_output=True, text=True,
                             timeout=60)
    assert "camera health:" in printed.stdout and "unhealthy (blackout)" in printed.stdout, printed
