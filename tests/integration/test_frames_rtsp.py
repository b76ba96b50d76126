"""tools.frames from a live RTSP camera (the real GStreamer server): paced sampling, a stop at --max, and a
manifest whose source has the credentials taken out."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import pytest

from tests.integration.test_rtsp import SERVER_FPS, SERVER_SIZE, rtsp_server, rtsp_server_handle, _gi_rtsp  # noqa: F401
from tests.tools import needs
from tools.frames.__main__ import main

pytestmark = pytest.mark.integration


def test_frames_from_a_live_rtsp_camera(rtsp_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needs("imagehash")
    url = rtsp_server.replace("rtsp://", "rtsp://admin:hunter2@")
    out = tmp_path / "frames"
    assert main([url, "--out", str(out), "--fps", "3", "--max", "6"]) == 0
    with (out / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6, rows  # a live source runs until --max
    images = sorted(out.glob("*.jpg"))
    assert [p.name for p in images] == sorted(r["file"] for r in rows)
    assert cv2.imread(str(images[0])).shape[:2] == (SERVER_SIZE[1], SERVER_SIZE[0])
    times = [float(r["timestamp_s"]) for r in rows]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 1 / 3 - 1 / SERVER_FPS, f"--fps 3 keeps at most 3 frames per second of video: {times}"
    frames = [int(r["frame_index"]) for r in rows]
    assert frames == sorted(set(frames)) and frames[-1] - frames[0] >= 5 * (SERVER_FPS // 3) - 1
    printed = capsys.readouterr()
    everything = (out / "manifest.csv").read_text() + printed.out + printed.err
    assert "hunter2" not in everything and all("127.0.0.1" in r["source"] for r in rows)
