"""One source of truth for what each stage runs (issue 14): stages restarted after reloads run the current config,
reloads are all-or-nothing and never stall the watch loop, a pipeline whose model failed is retried."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from streamd.demo import package_file
from streamd.synth.conveyor import SceneConfig, render_video
from tests.conftest import write_config

pytestmark = pytest.mark.integration

FPS = 10
MODEL = package_file("models", "conveyor.onnx")
MODEL_INT8 = package_file("models", "conveyor.int8.onnx")


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    video = tmp_path_factory.mktemp("reconfigure") / "belt.mp4"
    render_video(SceneConfig(seed=7, fps=FPS, seconds=6.0, belt_speed=18.0, density=1.0), video)
    return video


def pipeline(model: Path | str, confidence: float = 0.35) -> dict:
    return {"model": str(model), "confidence": confidence,
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}]}


def config(tmp_path: Path, video: Path, streams: dict[str, str], pipelines: dict[str, dict], **extra: object) -> dict:
    return {
        "streams": [{"name": n, "url": str(video), "pipeline": p, "realtime": True, "loop": True}
                    for n, p in streams.items()],
        "pipelines": pipelines,
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")}],
        "counts": {"path": str(tmp_path / "counts.db")},
        "supervisor": {"stats_interval_s": 1},
        **extra,
    }


def api_url(daemon) -> str:
    return daemon.wait_for("api_listening", timeout=90)["url"].rstrip("/")


def streams_state(url: str) -> dict:
    return httpx.get(f"{url}/api/streams", timeout=10).json()


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout}s (last: {last})")


def analysing(url: str, names: set[str], after: dict[str, int] | None = None) -> dict | None:
    """The streams' state once each of ``names`` analysed frames (beyond ``after``), else None."""
    body = streams_state(url)
    streams = body["streams"]
    if not names <= set(streams):
        return None
    if all(streams[n]["frames_analysed"] > (after or {}).get(n, 0) for n in names):
        return body
    return None


def all_stages_current(url: str) -> dict | None:
    stages = streams_state(url)["stages"]
    running = {n: s for n, s in stages.items() if s["state"] == "running"}
    if running and all(s["config_current"] for s in running.values()):
        return stages
    return None


def stage_pid(url: str, name: str) -> int:
    return streams_state(url)["stages"][name]["pid"]


def test_new_pipeline_then_kill_9_of_analytics_and_inference(belt: Path, tmp_path: Path, daemon_factory) -> None:
    """The scenario of issue 14: a stream added on a new pipeline, then kill -9 of analytics (and inference):
    the restarted stages know the new pipeline and run the current thresholds."""
    cfg_path = write_config(tmp_path / "streamd.yaml", config(tmp_path, belt, {"a": "p1"}, {"p1": pipeline(MODEL)}))
    daemon = daemon_factory(cfg_path)
    url = api_url(daemon)
    wait_until(lambda: analysing(url, {"a"}), 60, "stream a analysing")
    write_config(cfg_path, config(tmp_path, belt, {"a": "p1", "b": "p2"},
                                  {"p1": pipeline(MODEL), "p2": pipeline(MODEL_INT8, confidence=0.4)}))
    applied = daemon.wait_for("reload_applied", timeout=90)
    assert applied["added"] == ["b"]
    body = wait_until(lambda: analysing(url, {"a", "b"}), 60, "streams a and b analysing")
    wait_until(lambda: all_stages_current(url), 30, "every stage on the current config")
    analytics_pid = stage_pid(url, "analytics")
    before = {n: s["frames_analysed"] for n, s in body["streams"].items()}
    os.kill(analytics_pid, signal.SIGKILL)
    wait_until(lambda: stage_pid(url, "analytics") not in (None, analytics_pid), 30, "analytics restarted")
    wait_until(lambda: analysing(url, {"a", "b"}, before), 60, "both streams analysing after the analytics restart")
    # a threshold change reaches the running inference stage, and a killed one restarts with it
    write_config(cfg_path, config(tmp_path, belt, {"a": "p1", "b": "p2"},
                                  {"p1": pipeline(MODEL), "p2": pipeline(MODEL_INT8, confidence=0.6)}))
    daemon.wait_for("reload_applied", timeout=60, reason="file", restarted=["b"])
    stages = wait_until(lambda: all_stages_current(url), 30, "every stage on the changed config")
    infer = sorted(n for n, s in stages.items() if s["kind"] == "inference")[-1]
    expected = {n: s["expected_config_hash"] for n, s in stages.items() if s["kind"] == "inference"}
    os.kill(stages[infer]["pid"], signal.SIGKILL)
    stages = wait_until(lambda: (s := all_stages_current(url)) and s[infer]["pid"] != stages[infer]["pid"] and s,
                        60, "the killed inference stage restarted on the current config")
    assert {n: s["config_hash"] for n, s in stages.items() if s["kind"] == "inference"} == expected
    body = streams_state(url)
    wait_until(lambda: analysing(url, {"a", "b"}, {n: s["frames_analysed"] for n, s in body["streams"].items()}),
               60, "both streams analysing after the inference restart")
    assert daemon.proc.poll() is None
    assert not daemon.find("daemon_failed")


def test_reload_with_a_model_that_does_not_load_is_rejected_whole(belt: Path, tmp_path: Path, daemon_factory) -> None:
    cfg_path = write_config(tmp_path / "streamd.yaml", config(tmp_path, belt, {"a": "p1"}, {"p1": pipeline(MODEL)}))
    daemon = daemon_factory(cfg_path)
    url = api_url(daemon)
    wait_until(lambda: analysing(url, {"a"}), 60, "stream a analysing")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model at all" * 10)
    # one edit that adds a stream on a new, broken model and removes nothing: rejected, nothing changes
    write_config(cfg_path, config(tmp_path, belt, {"a": "p1", "b": "p2"},
                                  {"p1": pipeline(MODEL), "p2": pipeline(broken)}))
    rejected = daemon.wait_for("reload_rejected", timeout=60)
    assert "p2" in rejected["error"] and "broken.onnx" in rejected["error"]
    body = streams_state(url)
    assert set(body["streams"]) == {"a"} and body["reload"]["ok"] is False
    frames = body["streams"]["a"]["frames_analysed"]
    wait_until(lambda: analysing(url, {"a"}, {"a": frames}), 30, "stream a still analysing")


def test_a_pipeline_whose_model_failed_at_start_is_retried_on_edit(belt: Path, tmp_path: Path,
                                                                    daemon_factory) -> None:
    model = tmp_path / "later.onnx"
    model.write_bytes(b"\0" * 100)  # broken at start
    cfg = config(tmp_path, belt, {"a": "good", "b": "later"}, {"good": pipeline(MODEL), "later": pipeline(model)})
    cfg_path = write_config(tmp_path / "streamd.yaml", cfg)
    daemon = daemon_factory(cfg_path)
    url = api_url(daemon)
    wait_until(lambda: analysing(url, {"a"}), 60, "stream a analysing")
    body = streams_state(url)
    assert body["streams"]["b"]["state"] == "failed" and "later" in body["streams"]["b"]["last_error"]
    shutil.copyfile(MODEL_INT8, model)  # the operator fixes the model ...
    cfg["streams"].append({"name": "c", "url": str(belt), "pipeline": "later", "realtime": True, "loop": True})
    write_config(cfg_path, cfg)  # ... and adds a stream on it
    wait_until(lambda: analysing(url, {"a", "b", "c"}), 90, "streams b and c analysing after the fix")
    assert daemon.proc.poll() is None


def test_the_watch_loop_keeps_beating_through_a_reload(belt: Path, tmp_path: Path, daemon_factory) -> None:
    """Loading a new model runs beside the watch loop: /healthz keeps answering 200 with a fresh snapshot."""
    cfg_path = write_config(tmp_path / "streamd.yaml", config(tmp_path, belt, {"a": "p1"}, {"p1": pipeline(MODEL)}))
    daemon = daemon_factory(cfg_path)
    url = api_url(daemon)
    wait_until(lambda: analysing(url, {"a"}), 60, "stream a analysing")
    ages: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            try:
                r = httpx.get(f"{url}/healthz", timeout=5)
                if r.status_code != 200:
                    failures.append(r.text)
                ages.append(r.json()["age_s"])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            time.sleep(0.1)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        for i in range(3):  # three reloads, each loading a model and starting an inference stage
            streams = {"a": "p1", **({"b": "p2"} if i % 2 == 0 else {})}
            write_config(cfg_path, config(tmp_path, belt, streams,
                                          {"p1": pipeline(MODEL), "p2": pipeline(MODEL_INT8, 0.3 + i / 10)}))
            wait_until(lambda: streams_state(url)["reload"].get("reloads", 0) >= i + 1, 90, f"reload {i + 1}")
    finally:
        done.set()
        thread.join()
    assert not failures, failures[:3]
    assert ages and max(ages) < 2.0, f"snapshot went stale during a reload: max age {max(ages):.2f} s"


def test_an_edit_of_a_pipeline_file_is_applied(belt: Path, tmp_path: Path, daemon_factory) -> None:
    """Pipeline files under pipelines/ that the config uses are watched with it."""
    import yaml

    (tmp_path / "pipelines").mkdir()
    pipeline_file = tmp_path / "pipelines" / "belt.yaml"
    pipeline_file.write_text(yaml.safe_dump(pipeline(MODEL)))
    cfg = config(tmp_path, belt, {"a": "belt"}, {})
    del cfg["pipelines"]
    cfg_path = write_config(tmp_path / "streamd.yaml", cfg)
    daemon = daemon_factory(cfg_path)
    url = api_url(daemon)
    wait_until(lambda: analysing(url, {"a"}), 60, "stream a analysing")
    pipeline_file.write_text(yaml.safe_dump(pipeline(MODEL, confidence=0.5)))
    applied = daemon.wait_for("reload_applied", timeout=60, reason="file")
    assert applied["restarted"] == ["a"] and applied["pipelines_changed"] == ["belt"]
    config_now = httpx.get(f"{url}/api/config").json()["config"]
    assert config_now["pipelines"]["belt"]["confidence"] == 0.5
    wait_until(lambda: all_stages_current(url), 30, "every stage on the edited pipeline")
