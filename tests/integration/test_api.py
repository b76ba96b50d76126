"""HTTP API, metrics, auth and the live preview page, on a running daemon, in a real headless browser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from streamd.demo import package_file
from streamd.synth.conveyor import SceneConfig, render_video
from tests.conftest import require, write_config

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    video = tmp_path_factory.mktemp("api") / "belt.mp4"
    render_video(SceneConfig(seed=7, fps=15, seconds=8.0, belt_speed=12.0, density=1.5), video)
    return video


def config(tmp_path: Path, video: Path, **extra: object) -> dict:
    return {
        "streams": [{"name": n, "url": str(video), "pipeline": "conveyor", "realtime": True, "loop": True}
                    for n in ("left", "right")]
        + [{"name": "gate", "url": "rtsp://admin:hunter2@127.0.0.1:1/cam", "pipeline": "conveyor", "enabled": False}],
        "pipelines": {"conveyor": {
            "model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35,
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}],
            "zones": [{"name": "inspection", "polygon": [[200, 0], [440, 0], [440, 360], [200, 360]]}],
        }},
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}],
        "counts": {"path": str(tmp_path / "counts.db")},
        "supervisor": {"stats_interval_s": 1},
        **extra,
    }


def wait_counts(url: str, headers: dict[str, str] | None = None, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        streams = httpx.get(f"{url}/api/streams", headers=headers).json()["streams"]
        # line_counts also holds zone entries ("inspection/<class>/enter"): wait for a line crossing
        if all(any(k.startswith("exit/") for k in streams.get(n, {}).get("line_counts", {})) for n in ("left", "right")):
            return streams
        time.sleep(0.3)
    raise AssertionError(f"no counts within {timeout}s: {streams}")


def test_api_endpoints_metrics_and_preview(belt: Path, tmp_path: Path, daemon_factory) -> None:
    daemon = daemon_factory(write_config(tmp_path / "streamd.yaml", config(tmp_path, belt)))
    url = daemon.wait_for("api_listening", timeout=60)["url"].rstrip("/")
    assert httpx.get(f"{url}/healthz").json()["ok"] is True
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{url}/readyz").status_code == 200
    streams = wait_counts(url)
    for name in ("left", "right"):
        s = streams[name]
        assert s["state"] == "streaming" and s["fps"] > 5 and s["latency_p99_ms"] is not None
        assert {"stale", "overwritten"} == set(s["dropped"]) and s["reconnects"] == 0 and s["last_error"] is None
    assert "gate" not in streams  # disabled
    text = httpx.get(f"{url}/api/config").text
    assert "hunter2" not in text and "admin:***@" in text
    counts = httpx.get(f"{url}/api/counts", params={"window": "total"}).json()
    assert {row["stream"] for row in counts["lines"]} == {"left", "right"}
    assert {row["zone"] for row in counts["zones"]} == {"inspection"}
    assert httpx.get(f"{url}/api/counts", params={"window": "year"}).status_code == 400
    metrics = httpx.get(f"{url}/metrics").text
    for needle in ('streamd_stream_fps{stream="left"}', 'streamd_stream_latency_seconds_bucket{le="0.05",stream="left"}',
                   'streamd_stage_latency_seconds_bucket{le="+Inf",step="infer",stream="right"}',
                   "streamd_batch_size_bucket", "streamd_inference_seconds_count",
                   'streamd_stream_dropped_frames_total{cause="stale",stream="left"}',
                   'streamd_stream_queue_depth{stream="left"}', 'streamd_config_reloads_total{result="applied"} 0.0',
                   "streamd_stage_up{stage=\"analytics\"} 1.0"):
        assert needle in metrics, needle
    assert "hunter2" not in metrics
    jpeg = httpx.get(f"{url}/preview/left.jpg", timeout=30)
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(jpeg.content, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 640, 3)
    assert httpx.get(f"{url}/preview/nope.jpg").status_code == 404
    with httpx.stream("GET", f"{url}/preview/right.mjpg", timeout=30) as response:
        assert response.headers["content-type"].startswith("multipart/x-mixed-replace")
        received = b""
        for chunk in response.iter_bytes():
            received += chunk
            if received.count(b"--frame") >= 3:
                break
    assert received.count(b"Content-Type: image/jpeg") >= 2
    # on loopback without a token, a web page the operator visits cannot trigger a reload
    for cross_site in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = httpx.post(f"{url}/api/reload", headers=cross_site)
        assert refused.status_code == 403 and "cross-site" in refused.json()["error"]
    api_reloads = [e for e in daemon.events() if str(e.get("event")).startswith("reload_") and e.get("reason") == "api"]
    assert not api_reloads  # nothing reached the daemon


def test_non_loopback_bind_needs_a_token_and_checks_it(belt: Path, tmp_path: Path, daemon_factory) -> None:
    open_cfg = write_config(tmp_path / "open.yaml", config(tmp_path, belt, api={"host": "0.0.0.0", "port": 0}))
    out = subprocess.run([sys.executable, "-m", "streamd", "validate", str(open_cfg)], capture_output=True, text=True)
    assert out.returncode == 1 and "api.token" in out.stderr and "open.yaml:" in out.stderr
    cfg = write_config(tmp_path / "streamd.yaml",
                       config(tmp_path, belt, api={"host": "0.0.0.0", "port": 0, "token": "${STREAMD_API_TOKEN}"}))
    daemon = daemon_factory(cfg, env={"STREAMD_API_TOKEN": TOKEN})
    port = daemon.wait_for("api_listening", timeout=60)["url"].rstrip("/").rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/healthz").status_code == 200  # health checks stay open for orchestrators
    assert httpx.get(f"{url}/api/streams").status_code == 401
    assert httpx.get(f"{url}/api/streams", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.post(f"{url}/api/reload").status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{url}/api/streams", headers=good).status_code == 200
    # ?token= only where a browser cannot send a header: GET of the preview page and images
    assert httpx.get(f"{url}/api/streams", params={"token": TOKEN}).status_code == 401
    assert httpx.get(f"{url}/metrics", params={"token": TOKEN}).status_code == 401
    assert httpx.get(f"{url}/api/config", params={"token": TOKEN}).status_code == 401
    assert httpx.post(f"{url}/api/reload", params={"token": TOKEN}).status_code == 401
    assert httpx.get(f"{url}/", params={"token": TOKEN}).status_code == 200
    assert httpx.get(f"{url}/preview/nope.jpg", params={"token": TOKEN}).status_code == 404  # past auth
    # a state-changing request from another site is refused even with the token
    assert httpx.post(f"{url}/api/reload", headers={**good, "Origin": "https://evil.example"}).status_code == 403
    assert TOKEN not in httpx.get(f"{url}/api/config", headers=good).text
    assert TOKEN not in daemon.log_path.read_text()


@pytest.mark.parametrize("with_token", [False, True], ids=["open", "token"])
def test_preview_page_in_a_real_browser(belt: Path, tmp_path: Path, daemon_factory, with_token: bool) -> None:
    """Opened as /?token=... the page sends the token as a header to the JSON API and as ?token= for <img>."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require(chromium is not None, "chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    extra = {"api": {"port": 0, "token": TOKEN}} if with_token else {}
    daemon = daemon_factory(write_config(tmp_path / "streamd.yaml", config(tmp_path, belt, **extra)))
    url = daemon.wait_for("api_listening", timeout=60)["url"]
    wait_counts(url.rstrip("/"), headers={"Authorization": f"Bearer {TOKEN}"} if with_token else None)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + (f"?token={TOKEN}" if with_token else ""))
        page.wait_for_selector(".stream[data-stream='right'] td.count", timeout=30_000)
        assert sorted(page.eval_on_selector_all(".stream", "els => els.map(e => e.dataset.stream)")) == ["left", "right"]

        def total() -> int:
            return sum(int(t) for t in page.eval_on_selector_all("td.count", "els => els.map(e => e.textContent)"))

        first = total()
        deadline = time.monotonic() + 45
        while total() <= first and time.monotonic() < deadline:
            time.sleep(0.5)
        assert total() > first, "counts on the page never changed"
        # the MJPEG previews render: every <img> has decoded a frame
        page.wait_for_function("[...document.querySelectorAll('.stream img')].every(i => i.naturalWidth > 0)",
                               timeout=30_000)
        shot = Path(os.environ.get("STREAMD_ARTIFACTS", tmp_path)) / f"preview-page{'-token' if with_token else ''}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        browser.close()
    assert shot.stat().st_size > 10_000
