"""Two real daemons as fleet nodes on one PostgreSQL (issue 16): every stream runs on exactly one node, and a
node killed with kill -9 has its streams running on the survivor within fleet.failover_s."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_clip, write_config
from tests.pg_helpers import pg_server, pg_url  # noqa: F401
from tests.unit.test_model import KNOWN, ULTRA_META, constant_model

pytestmark = pytest.mark.integration

STREAMS = ["cam-a", "cam-b", "cam-c", "cam-d"]
FAILOVER_S = 6.0


def node_config(tmp: Path, node: str, url: str, clip: Path, model: Path) -> Path:
    folder = tmp / node
    folder.mkdir()
    return write_config(folder / "streamd.yaml", {
        "streams": [{"name": n, "url": str(clip), "pipeline": "p", "realtime": True, "loop": True} for n in STREAMS],
        "pipelines": {"p": {"model": str(model)}},
        "counts": {"path": str(folder / "counts.db"), "url": url},
        "fleet": {"enabled": True, "node_id": node, "failover_s": FAILOVER_S, "heartbeat_s": 1.0},
        "supervisor": {"stats_interval_s": 2},
    })


def kill_9(daemon) -> list[str]:
    """kill -9 the daemon and its stage processes, as a machine dying would; returns the rings it left behind,
    removed as its next start would."""
    from streamd.ipc.ring import remove_orphaned_rings

    stage_pids = [e["pid"] for e in daemon.find("stage_started")]
    daemon.proc.kill()
    daemon.wait(10)
    for pid in stage_pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return remove_orphaned_rings()


def analysing(url: str) -> set[str]:
    streams = httpx.get(f"{url}/api/streams", timeout=10).json()["streams"]
    return {n for n, s in streams.items() if s["frames_analysed"] > 0 and s["state"] != "failed"}


def test_streams_spread_over_nodes_and_move_when_one_dies(tmp_path: Path, pg_url: str, daemon_factory) -> None:  # noqa: F811
    clip = make_clip(tmp_path / "clip.mp4", frames=90, fps=15)
    model = constant_model(tmp_path / "tiny.onnx", KNOWN, metadata=ULTRA_META)
    nodes = {n: daemon_factory(node_config(tmp_path, n, pg_url, clip, model)) for n in ("node-1", "node-2")}
    urls = {n: d.wait_for("api_listening", timeout=90)["url"].rstrip("/") for n, d in nodes.items()}
    deadline = time.monotonic() + 90
    held: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        held = {n: analysing(u) for n, u in urls.items()}
        if set.union(*held.values()) == set(STREAMS) and all(held.values()):
            break
        time.sleep(0.5)
    assert set.union(*held.values()) == set(STREAMS), held
    assert not held["node-1"] & held["node-2"], f"a stream runs on two nodes: {held}"
    assert all(held.values()), f"one node got no stream: {held}"
    # kill -9 node-1 and its stages (as a machine dying would): its streams move to node-2
    victim = nodes["node-1"]
    moved = held["node-1"]
    killed_at = time.monotonic()
    removed = kill_9(victim)
    deadline = killed_at + FAILOVER_S + 60
    while time.monotonic() < deadline and not set(STREAMS) <= analysing(urls["node-2"]):
        time.sleep(0.5)
    took = time.monotonic() - killed_at
    assert set(STREAMS) <= analysing(urls["node-2"]), f"not all streams on the survivor after {took:.1f} s"
    acquired = [e for e in nodes["node-2"].find("lease_acquired") if e["stream"] in moved]
    assert {e["stream"] for e in acquired} == moved and all(e["epoch"] >= 2 for e in acquired), acquired
    assert removed and all(f"-{victim.proc.pid}-" in name for name in removed), removed
    print(f"failover of {sorted(moved)}: analysing on the survivor {took:.1f} s after the kill "
          f"(leases: failover_s {FAILOVER_S})")



def conveyor_node_config(tmp: Path, node: str, url: str, video: Path, streams: list[str],
                         pipeline_per_stream: bool = False) -> Path:
    """A fleet node counting real-time conveyor files with the project's model, crossing one exit line."""
    from streamd.demo import package_file

    folder = tmp / node
    folder.mkdir()
    pipeline = {"model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35,
                "tracker": {"lost_track_s": 0.5},
                "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}]}
    names = {s: f"p-{s}" if pipeline_per_stream else "p" for s in streams}
    return write_config(folder / "streamd.yaml", {
        "streams": [{"name": s, "url": str(video), "pipeline": names[s], "realtime": True} for s in streams],
        "pipelines": {name: pipeline for name in sorted(set(names.values()))},
        "counts": {"path": str(folder / "counts.db"), "url": url},
        "fleet": {"enabled": True, "node_id": node, "failover_s": FAILOVER_S, "heartbeat_s": 1.0},
        "supervisor": {"stats_interval_s": 2},
    })


def fleet_counts(cfg: Path) -> int:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "streamd", "counts", str(cfg), "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return sum(c["count"] for c in json.loads(out.stdout)["counts"])


def test_a_file_handed_over_mid_way_counts_exactly_once_in_the_fleet_store(tmp_path: Path, pg_url: str,  # noqa: F811
                                                                          daemon_factory) -> None:
    """node-1 counts part of a file into PostgreSQL (local store + replicator) and stops; node-2 takes the stream
    over, resumes after the fleet's checkpoint with the handed-over tracker state, and the fleet's total
    (streamd counts, answered from PostgreSQL) equals the scene's ground truth."""
    from streamd.synth.conveyor import SceneConfig, render_video

    video = tmp_path / "belt.mp4"
    truth = render_video(SceneConfig(seed=3, belt_speed=6.0, density=1.2, seconds=14.0), video)
    expected = sum(truth.counts.values())

    def conveyor_node(node: str) -> Path:
        return conveyor_node_config(tmp_path, node, pg_url, video, ["belt"])

    cfg1 = conveyor_node("node-1")
    first = daemon_factory(cfg1)
    url = first.wait_for("api_listening", timeout=90)["url"].rstrip("/")
    deadline = time.monotonic() + 90
    counted = 0
    while time.monotonic() < deadline and not 0 < counted < expected:
        body = httpx.get(f"{url}/api/streams", timeout=10).json()["streams"]
        counted = body.get("belt", {}).get("events", 0)
        time.sleep(0.2)
    assert 0 < counted < expected, f"node-1 counted {counted} of {expected} before the hand-over"
    first.proc.terminate()  # drains, delivers to PostgreSQL, then releases the lease
    assert first.wait(60) == 0
    handed = fleet_counts(cfg1)
    assert 0 < handed < expected, (handed, expected)
    second = daemon_factory(conveyor_node("node-2"))
    over = second.wait_for("stream_handed_over", timeout=90, stream="belt")
    assert over["checkpoint_frame"] is not None and over["state"] is True, over
    second.wait_for("source_resume", timeout=60)
    url2 = second.wait_for("api_listening", timeout=90)["url"].rstrip("/")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if httpx.get(f"{url2}/api/streams", timeout=10).json()["streams"]["belt"]["state"] == "finished":
            break
        time.sleep(0.5)
    second.proc.terminate()
    assert second.wait(60) == 0
    total = fleet_counts(cfg1)
    print(f"hand-over: node-1 counted {handed}, the fleet {total} of {expected}")
    assert total == expected, f"fleet total {total}, ground truth {expected} (node-1 had {handed})"


def test_a_stream_moved_by_a_join_is_drained_then_released_and_counts_exactly_once(tmp_path: Path, pg_url: str,  # noqa: F811
                                                                                  daemon_factory) -> None:
    """node-1 runs two conveyor files; node-2 joins mid-way and the assignment moves one of them. node-1 stops it,
    delivers its last counts and only then releases the lease (drained=True); node-2 continues from the fleet's
    checkpoint and tracker state (the reload that stops it keeps that state stored for the new owner): the fleet
    total equals the ground truth."""
    from streamd.fleet.assign import assign
    from streamd.synth.conveyor import SceneConfig, render_video

    video = tmp_path / "belt.mp4"
    truth = render_video(SceneConfig(seed=3, belt_speed=6.0, density=1.2, seconds=14.0), video)
    expected = sum(truth.counts.values())
    streams = ["belt-a", "belt-b"]
    moving = [s for s, n in assign(streams, ["node-1", "node-2"], {s: "node-1" for s in streams}).items()
              if n == "node-2"]
    assert len(moving) == 1, moving

    def conveyor_node(node: str) -> Path:
        # a pipeline per stream: the moved stream's pipeline leaves node-1 with it (the reload's reconfigure of
        # analytics must not clear the state the hand-over keeps)
        return conveyor_node_config(tmp_path, node, pg_url, video, streams, pipeline_per_stream=True)

    cfg1 = conveyor_node("node-1")
    first = daemon_factory(cfg1)
    url = first.wait_for("api_listening", timeout=90)["url"].rstrip("/")
    deadline = time.monotonic() + 90
    counted = 0
    while time.monotonic() < deadline and not 0 < counted < expected:
        counted = httpx.get(f"{url}/api/streams", timeout=10).json()["streams"].get(moving[0], {}).get("events", 0)
        time.sleep(0.2)
    assert 0 < counted < expected, f"node-1 counted {counted} of {expected} before node-2 joined"
    second = daemon_factory(conveyor_node("node-2"))
    released = first.wait_for("lease_released", timeout=60, stream=moving[0])
    assert released["drained"] is True, released
    print(f"rebalance: node-1 drained {moving[0]} in {released['drain_s']} s")
    over = second.wait_for("stream_handed_over", timeout=60, stream=moving[0])
    assert over["checkpoint_frame"] is not None and over["state"] is True, over
    first.wait_for("state_kept_for_hand_over", timeout=30, stream=moving[0])
    url2 = second.wait_for("api_listening", timeout=90)["url"].rstrip("/")
    for node_url, stream in ((url2, moving[0]), (url, next(s for s in streams if s not in moving))):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = httpx.get(f"{node_url}/api/streams", timeout=10).json()["streams"]
            if body.get(stream, {}).get("state") == "finished":
                break
            time.sleep(0.5)
    for node in (first, second):
        node.proc.terminate()
        assert node.wait(60) == 0
    total = fleet_counts(cfg1)
    print(f"rebalance: the fleet counted {total} of {2 * expected}; hand-over {over}")
    assert total == 2 * expected, f"fleet total {total}, ground truth {2 * expected}"
