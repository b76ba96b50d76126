"""Issue 16, daemon level: a node cut off from the database (a TCP proxy between it and PostgreSQL, then closed)
is replaced -- the other node takes its stream over with a higher epoch -- and when the network heals, the cut-off
node stops analysing that stream, its replicator delivers its backlog, the changes recorded under the old epoch are
fenced, and the fleet's total (streamd counts, from PostgreSQL) is never above the ground truth."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.integration.test_fleet_daemons import FAILOVER_S, conveyor_node_config, fleet_counts
from tests.pg_helpers import Proxy, pg_server, pg_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

STREAMS = ["belt-a", "belt-b"]
HEARTBEAT_S = 1.0  # conveyor_node_config's
TTL_S = FAILOVER_S - 1.5 * HEARTBEAT_S
SLACK_S = 10.0  # a 2-core machine shared with other jobs: room above the bounds

T = TypeVar("T")


def poll(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.25) -> T:
    """Call ``probe`` until it returns something truthy; that value, or AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(every)


def streams_of(url: str) -> dict[str, Any]:
    """A node's /api/streams (in-memory snapshot: answers with the database cut off)."""
    return httpx.get(f"{url}/api/streams", timeout=10).json()


def test_a_node_cut_off_from_the_database_is_replaced_and_its_late_counts_are_fenced(
        tmp_path: Path, pg_server: Any, pg_url: str, daemon_factory: Callable[..., Any]) -> None:  # noqa: F811
    from streamd.fleet.schema import connect
    from streamd.synth.conveyor import SceneConfig, render_video

    video = tmp_path / "belt.mp4"
    truth = render_video(SceneConfig(seed=3, belt_speed=6.0, density=1.2, seconds=14.0), video)
    expected = sum(truth.counts.values())
    proxy = Proxy(pg_server.port)
    try:
        # node-1 reaches PostgreSQL only through the proxy (fleet, replicator, hand-over imports), node-2 directly
        cfg1 = conveyor_node_config(tmp_path, "node-1", proxy.url(pg_url.rsplit("/", 1)[1]), video, STREAMS)
        cfg2 = conveyor_node_config(tmp_path, "node-2", pg_url, video, STREAMS)
        nodes = {"node-1": daemon_factory(cfg1), "node-2": daemon_factory(cfg2)}
        n1, n2 = nodes["node-1"], nodes["node-2"]
        urls = {n: d.wait_for("api_listening", timeout=90)["url"].rstrip("/") for n, d in nodes.items()}

        # both up, one stream each, and node-1 has counted some events on its stream (mid-file)
        def spread() -> tuple[str, dict[str, Any]] | None:
            views = {n: streams_of(u) for n, u in urls.items()}
            if not all(v.get("fleet") for v in views.values()):
                return None
            runs = {n: v["fleet"]["streams"] for n, v in views.items()}
            if sorted(s for r in runs.values() for s in r) != STREAMS or any(len(r) != 1 for r in runs.values()) \
                    or any(v["fleet"]["draining"] for v in views.values()):
                return None
            (mine,) = runs["node-1"]
            entry = views["node-1"]["streams"].get(mine)
            if entry is None or entry["state"] != "streaming" or not 0 < entry["events"] < expected:
                return None
            return mine, entry

        moved, before = poll(spread, 120, "streams spread over both nodes, node-1 counting on its stream")
        epoch = n1.find("lease_acquired", stream=moved)[-1]["epoch"]
        removed_before = len(n1.find("stream_removed", stream=moved))
        handed_before = {d: len(d.find("stream_handed_over", stream=moved)) for d in (n1, n2)}

        proxy.close()  # node-1 is cut off from the database; node-2 goes on beating
        cut_at = time.monotonic()
        taken = poll(lambda: [e for e in n2.find("lease_acquired", stream=moved) if e["epoch"] > epoch],
                     FAILOVER_S + 3 * SLACK_S, f"node-2 takes {moved} over with an epoch above {epoch}")[-1]
        took = time.monotonic() - cut_at
        assert took <= FAILOVER_S + SLACK_S, f"node-2 took {moved} {took:.1f} s after the cut (failover_s {FAILOVER_S})"
        frames_at_takeover = streams_of(urls["node-1"])["streams"].get(moved, {}).get("frames_analysed", 0)
        over = poll(lambda: n2.find("stream_handed_over", stream=moved)[handed_before[n2]:], 60,
                    f"node-2 imports {moved}'s checkpoint")[0]
        assert over["checkpoint_frame"] is not None, over  # it resumes from the fleet's checkpoint, not frame 0
        poll(lambda: streams_of(urls["node-2"])["streams"].get(moved, {}).get("frames_analysed", 0) > 0, 60,
             f"node-2 analysing {moved}")
        # node-1's own view while cut off. Not asserted: the daemon's FleetNode is built with hold_through_outage=True
        # (streamd/control/fleet.py), so node-1 goes on analysing the stream until it reaches the database again;
        # fencing, checked below, is what keeps its counts out.
        cut_view = streams_of(urls["node-1"])
        held_while_cut = moved in cut_view["fleet"]["streams"]
        frames_after_takeover = cut_view["streams"].get(moved, {}).get("frames_analysed", 0) - frames_at_takeover
        assert cut_view["fleet"]["replication"]["up"] is False, cut_view["fleet"]
        assert n1.find("fleet_db_unreachable") and n1.find("fleet_replication_down"), "node-1 noticed nothing"

        proxy.open()
        open_at = time.monotonic()
        # node-1 learns at its first heartbeat that the lease is gone and stops analysing the stream
        n1.wait_for("lease_lost", timeout=30, stream=moved, epoch=epoch)
        poll(lambda: len(n1.find("stream_removed", stream=moved)) > removed_before, 30,
             f"node-1 stops {moved} (a reload without it)")
        stopped_s = time.monotonic() - open_at
        # its replicator delivers the backlog; what was recorded under the old epoch is refused, not added
        def caught_up() -> dict[str, Any] | None:
            replication = streams_of(urls["node-1"])["fleet"]["replication"]
            return replication if replication["up"] and replication["lag_changes"] == 0 else None

        replication = poll(caught_up, 30, "node-1's replicator caught up")
        n1.wait_for("fleet_replication_caught_up", timeout=10)
        fenced = n1.find("fleet_replication_fenced", stream=moved, epoch=epoch)
        # (should node-1 get the stream back before its replicator retried, the import drops the old-epoch backlog)
        dropped = sum(e["dropped"] for e in n1.find("stream_handed_over", stream=moved)[handed_before[n1]:])
        assert fenced or dropped, f"node-1's backlog of {moved} under epoch {epoch} was neither fenced nor dropped"
        assert all(f["current_epoch"] > epoch and f["owner"] != "node-1" and f["changes"] > 0 for f in fenced), fenced

        # let the files finish wherever the (re)spread fleet runs them
        def finished() -> bool:
            states: dict[str, set[str]] = {}
            for u in urls.values():
                for s, entry in streams_of(u)["streams"].items():
                    states.setdefault(s, set()).add(entry["state"])
            return all("finished" in states.get(s, set()) for s in STREAMS)

        poll(finished, 90, "both files finished", every=0.5)
        # the status (/api/fleet, streamd_replication_fenced_total) counts what the log reported as fenced
        status = streams_of(urls["node-1"])["fleet"]["replication"]
        assert status["fenced"] == sum(f["changes"] for f in n1.find("fleet_replication_fenced")), status
        with connect(pg_url) as conn:  # the hand-overs that happened while the files ran (not those of the stop)
            moves = int(conn.execute("SELECT count(*) FROM lease_moves WHERE from_node IS NOT NULL").fetchone()[0])
        for node in (n1, n2):
            node.proc.terminate()
            assert node.wait(60) == 0
        total = fleet_counts(cfg2)
    finally:
        proxy.close()
    print(f"partition: node-1 counted {before['events']} on {moved} (epoch {epoch}) before the cut; node-2 took it "
          f"{took:.1f} s after (epoch {taken['epoch']}, checkpoint frame {over['checkpoint_frame']}); cut off, node-1 "
          f"{'still ran' if held_while_cut else 'had stopped'} it ({frames_after_takeover} frames analysed after "
          f"the takeover); healed: lease_lost, stopped {stopped_s:.1f} s after, {replication['fenced']} changes "
          f"fenced ({len(fenced)} batches), {dropped} dropped at a re-import; {moves} moves; "
          f"fleet total {total} of {2 * expected}")
    # never doubled; each hand-over may miss at most the object in transit
    assert 2 * expected - moves <= total <= 2 * expected, f"fleet total {total}, truth {2 * expected}, moves {moves}"
