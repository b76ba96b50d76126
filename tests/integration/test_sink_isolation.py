"""One broken sink degrades only itself: the real sinks stage with a JSONL sink on a full disk (a 64 KiB
tmpfs), one under a regular file and two ZeroMQ sinks on one endpoint, beside a working JSONL sink. The
working sinks get every event; the broken ones are down in the heartbeat, count exactly what they drop, and
come back up once their path is usable again."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import zmq

from streamd.config.models import JsonlSinkConfig, ZmqSinkConfig
from tests.conftest import require
from tests.integration.mqtt_broker import free_port
from tests.sink_helpers import SinksStageRun, crossing, wait_until

pytestmark = pytest.mark.integration


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    require(done.returncode == 0, f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_and_a_taken_endpoint_degrade_only_their_sink(tmp_path: Path, small_tmpfs: Path) -> None:
    good, full = tmp_path / "good" / "events.jsonl", small_tmpfs / "events.jsonl"
    endpoint = f"ipc://{tmp_path}/events.pub"
    other = zmq.Context()  # "another process" holds this port until the test lets it go
    squatter = other.socket(zmq.PUB)
    port = free_port()
    squatter.bind(f"tcp://127.0.0.1:{port}")
    run = SinksStageRun(tmp_path, [
        JsonlSinkConfig(type="jsonl", path=str(good)),
        JsonlSinkConfig(type="jsonl", path=str(full)),
        ZmqSinkConfig(type="zmq", endpoint=endpoint),
        ZmqSinkConfig(type="zmq", endpoint=endpoint),
        ZmqSinkConfig(type="zmq", endpoint=f"tcp://127.0.0.1:{port}"),
    ])
    full_name, pub, pub2, tcp = f"jsonl:{full}", f"zmq:{endpoint}", f"zmq:{endpoint}[3]", f"zmq:tcp://127.0.0.1:{port}"
    sub = run.ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    try:
        wait_until(lambda: run.health(pub2) is not None, what="first heartbeat")
        assert run.health(pub2).state == "down" and "already used by sink" in str(run.health(pub2).error)
        assert run.health(tcp).state == "down" and "Address already in use" in str(run.health(tcp).error)
        assert run.health(pub).state == "up" and run.health(f"jsonl:{good}").state == "up"
        squatter.close(0)
        other.term()
        wait_until(lambda: run.health(tcp).state == "up", timeout=30, what="zmq sink up once the port is free")

        sent = 0
        while run.health(full_name).state == "up":  # ~300 bytes each: the 64 KiB disk fills after a few hundred
            for _ in range(50):
                run.send(crossing(sent))
                sent += 1
            wait_until(lambda: len(lines(good)) == sent, what="good sink caught up")
            assert sent < 5000, "the small disk never filled"
        down = run.health(full_name)
        assert "No space left on device" in str(down.error) and down.failures >= 1
        for _ in range(500):  # while down: refused and counted
            run.send(crossing(sent))
            sent += 1
        wait_until(lambda: len(lines(good)) == sent, what="good sink caught up")
        wait_until(lambda: run.health(full_name).dropped + len(lines(full)) == sent, timeout=10,
                   what="the full sink accounts for every event (kept + dropped)")
        received = 0
        while sub.poll(100):
            sub.recv_multipart()
            received += 1
        assert received > 0, "the first zmq sink published nothing"

        subprocess.run(["mount", "-o", "remount,size=4m", str(small_tmpfs)], check=True)
        wait_until(lambda: run.health(full_name).state == "up", timeout=30, what="full sink back up")
        before = len(lines(full))
        for _ in range(100):
            run.send(crossing(sent))
            sent += 1
        wait_until(lambda: len(lines(good)) == sent and len(lines(full)) == before + 100, what="both sinks write")
        health = run.health(full_name)
        assert health.dropped + len(lines(full)) == sent
        assert [e["id"] for e in lines(good)] == [crossing(i).id for i in range(sent)]
        assert len({e["id"] for e in lines(full)}) == len(lines(full)), "a line written twice"
        assert run.health(pub2).state == "down"
    finally:
        sub.close(0)
        assert run.close() == 0


def test_a_jsonl_folder_that_is_a_regular_file_recovers_when_it_becomes_a_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the sink's folder should be\n")
    good, broken = tmp_path / "good.jsonl", blocker / "events.jsonl"
    run = SinksStageRun(tmp_path, [JsonlSinkConfig(type="jsonl", path=str(good)),
                                   JsonlSinkConfig(type="jsonl", path=str(broken))])
    name = f"jsonl:{broken}"
    try:
        wait_until(lambda: run.health(name) is not None, what="first heartbeat")
        assert run.health(name).state == "down" and run.health(name).error
        for i in range(200):
            run.send(crossing(i))
        wait_until(lambda: len(lines(good)) == 200, what="good sink")
        wait_until(lambda: run.health(name).dropped == 200, what="drops counted")
        os.remove(blocker)
        wait_until(lambda: run.health(name).state == "up", timeout=30, what="sink back up")
        for i in range(200, 250):
            run.send(crossing(i))
        wait_until(lambda: len(lines(broken)) == 50 and len(lines(good)) == 250, what="both write")
        assert run.health(name).dropped == 200
    finally:
        assert run.close() == 0


def test_the_daemon_reports_a_broken_sink_keeps_counting_and_recovers(tmp_path: Path, small_tmpfs: Path,
                                                                      daemon_factory) -> None:
    """The real daemon: a JSONL sink whose disk fills up while it runs and a zmq sink on a port another process
    holds are down in /api/streams and /metrics while the working sinks get every event; once space is freed,
    the JSONL sink comes back up; the daemon never stops and its counts match the working sink exactly.
    (Paths under a regular file and two zmq sinks on one endpoint are refused by the config check before
    the daemon starts; the stage-level tests above cover them.)"""
    import httpx

    from streamd.demo import package_file
    from streamd.synth.conveyor import SceneConfig, render_video
    from tests.conftest import write_config

    video = tmp_path / "belt.mp4"
    render_video(SceneConfig(seed=7, fps=15, seconds=8.0, belt_speed=12.0, density=1.5), video)
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as f:  # leave about 4 KiB: a few events fit, then the disk is full
        f.write(b"x" * (64 * 1024 - 4096))
    good, broken = tmp_path / "events.jsonl", small_tmpfs / "events.jsonl"
    endpoint, taken = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    other = zmq.Context()  # "another process" holds the port of the fourth sink throughout
    squatter = other.socket(zmq.PUB)
    squatter.bind(taken)
    config = write_config(tmp_path / "streamd.yaml", {
        "streams": [{"name": "belt", "url": str(video), "pipeline": "conveyor", "realtime": True, "loop": True}],
        "pipelines": {"conveyor": {
            "model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35,
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}],
        }},
        "sinks": [{"type": "jsonl", "path": str(good)}, {"type": "jsonl", "path": str(broken)},
                  {"type": "zmq", "endpoint": endpoint}, {"type": "zmq", "endpoint": taken}],
        "counts": {"path": str(tmp_path / "counts.db")},
        "inference": {"intra_op_threads": 1},
        "supervisor": {"stats_interval_s": 1},
    })
    good_name, broken_name, pub, pub2 = f"jsonl:{good}", f"jsonl:{broken}", f"zmq:{endpoint}", f"zmq:{taken}"
    daemon = daemon_factory(config)
    try:
        url = daemon.wait_for("api_listening", timeout=90)["url"].rstrip("/")

        def sinks() -> dict:
            return httpx.get(f"{url}/api/streams", timeout=10).json().get("sinks", {})

        def crossings(path: Path) -> int:
            return sum(1 for e in lines(path) if e["type"] == "line_crossing")

        wait_until(lambda: len(sinks()) == 4 and crossings(good) > 0, timeout=120, poll_s=0.5,
                   what="sinks reported and events flowing")
        health = sinks()
        assert health[pub2]["state"] == "down" and "Address already in use" in health[pub2]["error"], health
        assert health[good_name]["state"] == "up" and health[pub]["state"] == "up", health
        wait_until(lambda: sinks()[broken_name]["state"] == "down" and sinks()[broken_name]["dropped"] > 0,
                   timeout=120, poll_s=0.3, what="the full disk's sink down, drops counted")
        assert "No space left on device" in sinks()[broken_name]["error"]
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert f'streamd_sink_up{{sink="{good_name}"}} 1.0' in metrics
        assert f'streamd_sink_up{{sink="{pub2}"}} 0.0' in metrics
        assert f'streamd_sink_dropped_total{{sink="{broken_name}"}}' in metrics
        assert len(daemon.find("sink_down", sink=pub2)) == 1, "one line per transition, not per attempt"

        before = crossings(broken)
        os.remove(filler)
        wait_until(lambda: sinks()[broken_name]["state"] == "up", timeout=40, poll_s=0.5, what="sink back up")
        wait_until(lambda: crossings(broken) >= before + 2, timeout=90, poll_s=0.5, what="events after recovery")
        assert daemon.proc.poll() is None, "the daemon stopped"
        assert len(daemon.find("sink_down", sink=broken_name)) <= 10, "sink_down logged per event"
    finally:
        assert daemon.stop() == 0, daemon.log_path.read_text()[-3000:]
        squatter.close(0)
        other.term()

    kept, everything = lines(broken), lines(good)
    lost = daemon.find("sink_up", sink=broken_name)[-1]["dropped_total"]
    ids = [e.get("id") or json.dumps(e, sort_keys=True) for e in everything]
    assert len(set(ids)) == len(ids)
    kept_ids = [e.get("id") or json.dumps(e, sort_keys=True) for e in kept]
    position = {i: n for n, i in enumerate(ids)}
    assert all(i in position for i in kept_ids) and [position[i] for i in kept_ids] == sorted(position[i] for i in kept_ids)
    assert len(everything) == lost + len(kept), "the broken sink's loss is exactly what it reported"
    summary = daemon.find("run_summary", stream="belt")[-1]
    events = sum(1 for e in everything if e["type"] in ("line_crossing", "zone_event"))
    assert summary["events_written"] == events and summary["crossings"] == crossings(good), summary
