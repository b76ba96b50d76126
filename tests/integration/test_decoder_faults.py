"""Damaged sources in a real daemon beside a healthy stream: frames larger than the ring (issue 19 item 9,
issue 14 item 3) and a truncated file (issue 19 item 11). A tiny ONNX model keeps inference cheap."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_clip, write_config
from tests.unit.test_model import KNOWN, ULTRA_META, constant_model
from tests.unit.test_sources import FRAMES, cut, faststart_clip

pytestmark = pytest.mark.integration


def config(tmp: Path, streams: list[dict]) -> Path:
    model = constant_model(tmp / "tiny.onnx", KNOWN, metadata=ULTRA_META)
    return write_config(tmp / "c.yaml", {
        "streams": streams,
        "pipelines": {"p": {"model": str(model)}},
        "sinks": [{"type": "jsonl", "path": str(tmp / "out/events.jsonl")}],
        "supervisor": {"stats_interval_s": 1},
    })


def summary(daemon, stream: str) -> dict:
    found = daemon.find("run_summary", stream=stream)
    assert found, f"no run_summary for {stream}; log:\n{daemon.log_path.read_text()[-4000:]}"
    return found[-1]


def test_frame_larger_than_the_ring_fails_that_stream_once(tmp_path: Path, daemon_factory) -> None:
    big = make_clip(tmp_path / "big.mp4", frames=30, size=(320, 240))
    ok = faststart_clip(tmp_path / "ok.mp4")
    daemon = daemon_factory(config(tmp_path, [
        {"name": "big", "url": str(big), "pipeline": "p", "max_width": 160, "max_height": 120},
        {"name": "ok", "url": str(ok), "pipeline": "p"},
    ]))
    daemon.wait(180)
    failed = daemon.find("source_failed", stream="big")
    assert len(failed) == 1, failed  # once: the supervisor does not restart a stage that exits EXIT_FAILED
    error = failed[0]["error"]
    for part in ("stream big", "320x240", "160x120", "raise streams[i].max_width/max_height"):
        assert part in error, error
    assert not daemon.find("stage_crashed") and not daemon.find("stage_exited", stage="decode-big")
    assert not daemon.find("source_state", stream="big", state="streaming")
    assert "Traceback" not in daemon.log_path.read_text()
    big_summary = summary(daemon, "big")
    assert big_summary["state"] == "failed"
    assert "max_width" in (big_summary.get("error") or ""), big_summary
    assert summary(daemon, "ok")["frames_decoded"] == FRAMES  # the healthy stream ran to its end


def test_truncated_file_is_reported_with_counts(tmp_path: Path, daemon_factory) -> None:
    whole = faststart_clip(tmp_path / "whole.mp4")
    short = cut(whole, tmp_path / "short.mp4", 0.4)
    daemon = daemon_factory(config(tmp_path, [
        {"name": "cut", "url": str(short), "pipeline": "p"},
        {"name": "ok", "url": str(whole), "pipeline": "p"},
    ]))
    assert daemon.wait(180) == 0
    (warning,) = daemon.find("source_truncated", stream="cut")
    assert warning["level"] == "warning"
    assert warning["frames_expected"] == FRAMES and 0 < warning["frames_decoded"] < FRAMES * 0.6
    assert "corrupt_packets" in warning and "corrupt_frames" in warning
    assert summary(daemon, "cut")["state"] == "finished"
    assert summary(daemon, "cut")["frames_decoded"] == warning["frames_decoded"]
    cut_summary = summary(daemon, "cut")
    assert cut_summary["truncated"] is True and cut_summary["frames_expected"] == FRAMES
    assert "ended after" in (cut_summary.get("warning") or ""), cut_summary
    assert summary(daemon, "ok")["truncated"] is False and summary(daemon, "ok")["warning"] is None
    assert not daemon.find("source_truncated", stream="ok")
    assert summary(daemon, "ok")["frames_decoded"] == FRAMES
