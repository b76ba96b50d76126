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
    stage_pids = [e["pid"] for e in victim.find("stage_started")]
    moved = held["node-1"]
    killed_at = time.monotonic()
    victim.proc.kill()
    victim.wait(10)
    for pid in stage_pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = killed_at + FAILOVER_S + 60
    while time.monotonic() < deadline and not set(STREAMS) <= analysing(urls["node-2"]):
        time.sleep(0.5)
    took = time.monotonic() - killed_at
    assert set(STREAMS) <= analysing(urls["node-2"]), f"not all streams on the survivor after {took:.1f} s"
    acquired = [e for e in nodes["node-2"].find("lease_acquired") if e["stream"] in moved]
    assert {e["stream"] for e in acquired} == moved and all(e["epoch"] >= 2 for e in acquired), acquired
    from streamd.ipc.ring import remove_orphaned_rings

    removed = remove_orphaned_rings()  # what the dead node's next start does with the rings it left
    assert removed and all(f"-{victim.proc.pid}-" in name for name in removed), removed
    print(f"failover of {sorted(moved)}: analysing on the survivor {took:.1f} s after the kill "
          f"(leases: failover_s {FAILOVER_S})")
