"""Replication of a node's local count store to the fleet's PostgreSQL: the SQLite change feed and watermark, batches
applied idempotently and fenced by lease epoch, the replicator thread through a real 30 s database outage, and the
hand-over of a moved stream (import_stream). PostgreSQL is a real throwaway cluster (tests.pg_helpers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from streamd.analytics.store import CountStore, CrossingRow, ZoneEventRow
from tests.pg_helpers import PgServer, pg_server, pg_url  # noqa: F401 - fixtures


def row(i: str, frame: int, stream: str = "cam", cls: str = "car", direction: str = "in") -> CrossingRow:
    return CrossingRow(id=i, stream=stream, line="south", class_name=cls, direction=direction, ts=float(frame),
                       frame=frame)


def enter(visit: str, frame: int, stream: str = "cam") -> ZoneEventRow:
    return ZoneEventRow(id=visit, visit_id=visit, stream=stream, zone="door", class_name="person", kind="enter",
                        ts=float(frame), frame=frame)


def exit_(visit: str, frame: int, entered: int, stream: str = "cam") -> ZoneEventRow:
    return ZoneEventRow(id=f"{visit}/exit", visit_id=visit, stream=stream, zone="door", class_name="person",
                        kind="exit", ts=float(frame), frame=frame, dwell_s=float(frame - entered))


def set_lease(url: str, stream: str, owner: str, epoch: int) -> None:
    from streamd.fleet.schema import connect, migrate

    with connect(url) as conn:
        migrate(conn)
        conn.execute("INSERT INTO leases (stream, owner, epoch, expires_at, acquired_at) VALUES (%s, %s, %s, "
                     "now() + interval '1 hour', now()) ON CONFLICT (stream) DO UPDATE SET owner=excluded.owner, "
                     "epoch=excluded.epoch", (stream, owner, epoch))


def record_sequence(store: CountStore, epoch: int | None = 1, stream: str = "cam", frames: range = range(1, 41),
                    prefix: str = "") -> None:
    """Crossings, zone enters and exits, states and checkpoints, as the analytics stage writes them."""
    for f in frames:
        rows = [row(f"{prefix}{stream}-c{f}", f, stream, cls="bus" if f % 3 else "car")] if f % 2 == 0 else []
        zone = []
        if f % 5 == 0:
            zone.append(enter(f"{prefix}{stream}-v{f}", f, stream))
        if f % 5 == 3 and f > 5:
            zone.append(exit_(f"{prefix}{stream}-v{f - 3}", f, f - 3, stream))
        store.record(rows, stream, "file-v1", f, zone, state=f"state-{f}".encode() if f % 4 else None, epoch=epoch)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[CountStore]:
    store = CountStore(tmp_path / "local.db", change_feed=True)
    yield store
    store.close()


def pg_store(url: str):  # type: ignore[no-untyped-def]
    from streamd.analytics.store_pg import PostgresCountStore

    return PostgresCountStore(url)


def deliver(local: CountStore, url: str, node: str = "n1", limit: int = 500) -> int:
    """Apply the whole feed (as the replicator does, without its thread); returns the fenced changes."""
    pg = pg_store(url)
    fenced = 0
    try:
        while True:
            batch = local.changes_since(local.replicated_up_to(), limit)
            if batch.empty:
                return fenced
            fenced += pg.apply(batch, node).fenced_changes
            local.mark_replicated(batch.up_to)
    finally:
        pg.close()


def assert_same_counts(local: CountStore, url: str, stream: str = "cam") -> None:
    pg = pg_store(url)
    try:
        assert pg.counts() == local.counts()
        assert pg.zone_counts() == local.zone_counts()
        assert pg.resume_frame(stream, "file-v1") == local.resume_frame(stream, "file-v1")
        assert pg.stream_state(stream) == local.stream_state(stream)
    finally:
        pg.close()


# ---- the SQLite change feed ------------------------------------------------------------------------------------


def test_every_change_enters_the_feed_in_order_and_the_watermark_prunes_it(local: CountStore) -> None:
    local.record([row("a", 1)], "cam", "src", 1, [enter("v", 1)], state=b"s1", epoch=7)
    local.record([row("a", 1)], "cam", "src", 1, [enter("v", 1)], epoch=7)  # a replay: only the checkpoint
    local.record([], "cam", "src", 2, [exit_("v", 2, 1)], clear_state=True, epoch=7)
    local.finish("cam")
    with local._db:
        kinds = [(k, key, e) for k, key, e in local._db.execute("SELECT kind, key, epoch FROM changes ORDER BY seq")]
    # a checkpoint entry says what it recorded (frame:finished), for a batch cut before the checkpoint's value now
    assert kinds == [("crossing", "a", 7), ("zone_enter", "v", 7), ("checkpoint", "1:0", 7), ("state", None, 7),
                     ("checkpoint", "1:0", 7), ("zone_exit", "v", 7), ("checkpoint", "2:0", 7), ("state", None, 7),
                     ("checkpoint", "2:1", 7)]
    batch = local.changes_since(0)
    assert (batch.after, batch.up_to, batch.entries) == (0, 9, 9)
    assert [c.row.id for c in batch.crossings] == ["a"]
    assert [(z.kind, z.visit_id, z.exited_ts) for z in batch.zone_visits] == [("enter", "v", None), ("exit", "v", 2.0)]
    assert [(c.stream, c.frame, c.finished, c.epoch) for c in batch.checkpoints] == [("cam", 2, True, 7)]
    assert [(s.stream, s.state) for s in batch.states] == [("cam", None)]  # deleted
    local.mark_replicated(batch.up_to)
    assert local.replicated_up_to() == 9 and local.changes_since(9).empty
    assert local._db.execute("SELECT COUNT(*) FROM changes").fetchone()[0] == 0  # pruned; the rows stay
    assert sum(local.counts().values()) == 1
    local.record([row("b", 3)], "cam", "src", 3)
    assert local.changes_since(9).up_to == 11  # seqs are never reused after pruning
    local.mark_replicated(5)
    assert local.replicated_up_to() == 9  # never backwards


def test_without_the_feed_nothing_is_appended_and_old_files_are_migrated(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "old.db")  # a store written by a streamd before the feed existed
    old.executescript("CREATE TABLE crossings (id TEXT PRIMARY KEY, stream TEXT NOT NULL, line TEXT NOT NULL, "
                      "class_name TEXT NOT NULL, direction TEXT NOT NULL, ts REAL NOT NULL, frame INTEGER NOT NULL);"
                      "INSERT INTO crossings VALUES ('old', 'cam', 'south', 'car', 'in', 1, 1);")
    old.close()
    store = CountStore(tmp_path / "old.db")
    store.record([row("new", 2)], "cam", "src", 2, epoch=3)
    assert sum(store.counts().values()) == 2
    assert store.changes_since(0).empty
    store.close()
    again = CountStore(tmp_path / "old.db", change_feed=True)  # a second open finds the schema current
    again.record([row("c", 3)], "cam", "src", 3)
    assert [c.row.id for c in again.changes_since(0).crossings] == ["c"]
    again.close()


def test_a_cut_batch_ships_the_checkpoint_its_rows_reached_never_one_ahead(local: CountStore) -> None:
    for f in range(1, 6):  # per frame: crossing, checkpoint, state
        local.record([row(f"c{f}", f)], "cam", "src", f, state=b"s%d" % f)
    batch = local.changes_since(0, limit=4)  # c1, cp1, s1, c2 -- the checkpoint now is frame 5
    # the batch ends with frame 1 (c2 goes with its own checkpoint), and ships the checkpoint as its entry
    # recorded it: frame 1, not ahead of the rows (frame 5), nor left out (a node taking the stream over would
    # resume before c1 and count it again under its own ids). The state, known only as it is now, waits.
    assert [c.row.id for c in batch.crossings] == ["c1"] and batch.up_to == 3
    assert [(c.frame, c.finished) for c in batch.checkpoints] == [(1, False)] and batch.states == ()
    rest = local.changes_since(batch.up_to, limit=100)
    assert [c.frame for c in rest.checkpoints] == [5] and [s.state for s in rest.states] == [b"s5"]


def test_after_every_cut_batch_the_checkpoint_covers_every_row_shipped(local: CountStore) -> None:
    """A backlog (two streams, frames interleaved, some with several crossings) shipped in small batches: at no
    point does a stream's shipped checkpoint lag behind a crossing shipped for it, so a node that resumes the stream
    from the fleet's checkpoint after any batch analyses no frame whose crossings the fleet already has."""
    for f in range(1, 31):
        for stream in ("cam", "door"):
            rows = [row(f"{stream}-{f}-{k}", f, stream) for k in range(f % 4)]
            local.record(rows, stream, "src", f, state=b"s%d" % f)
    shipped_frame: dict[str, int] = {}
    checkpoint: dict[str, int] = {}
    after = 0
    for limit in [6, 7, 9, 11] * 40:  # a frame is at most 5 entries here: each batch holds a whole one
        batch = local.changes_since(after, limit)
        if batch.empty:
            break
        for c in batch.crossings:
            shipped_frame[c.row.stream] = max(shipped_frame.get(c.row.stream, 0), c.row.frame)
        for cp in batch.checkpoints:
            checkpoint[cp.stream] = cp.frame
        assert all(frame <= checkpoint.get(stream, 0) for stream, frame in shipped_frame.items()), \
            (shipped_frame, checkpoint)
        after = batch.up_to
    assert checkpoint == {"cam": 30, "door": 30}


# ---- apply: same counts, idempotent, fenced ---------------------------------------------------------------------


def test_replicated_counts_equal_the_local_ones(local: CountStore, pg_url: str) -> None:
    set_lease(pg_url, "cam", "n1", 1)
    record_sequence(local)
    assert deliver(local, pg_url, limit=7) == 0  # many small batches
    assert_same_counts(local, pg_url)
    assert sum(local.counts().values()) == 20
    local.finish("cam")
    deliver(local, pg_url)
    assert_same_counts(local, pg_url)


def test_a_replayed_batch_changes_nothing(local: CountStore, pg_url: str) -> None:
    set_lease(pg_url, "cam", "n1", 1)
    record_sequence(local, frames=range(1, 21))
    batch = local.changes_since(0)
    pg = pg_store(pg_url)
    first = pg.apply(batch, "n1")
    before = (pg.counts(), pg.zone_counts(), pg.resume_frame("cam", "file-v1"), pg.stream_state("cam"))
    # the node crashed before advancing its watermark: after the restart it delivers the same batch again
    again = pg.apply(local.changes_since(0), "n1")
    assert first.inserted == 10 + 4 and again.inserted == 0 and again.applied == first.applied
    assert (pg.counts(), pg.zone_counts(), pg.resume_frame("cam", "file-v1"), pg.stream_state("cam")) == before
    local.mark_replicated(batch.up_to)
    record_sequence(local, frames=range(21, 41))
    pg.apply(local.changes_since(0), "n1")  # overlapping replays after more frames
    deliver(local, pg_url)
    assert_same_counts(local, pg_url)
    pg.close()


def test_a_node_whose_lease_was_taken_is_fenced_and_the_new_owners_counts_are_untouched(
        tmp_path: Path, pg_url: str) -> None:
    a = CountStore(tmp_path / "a.db", change_feed=True)
    b = CountStore(tmp_path / "b.db", change_feed=True)
    set_lease(pg_url, "cam", "a", 1)
    set_lease(pg_url, "other", "a", 1)
    record_sequence(a, frames=range(1, 11), prefix="a-")
    deliver(a, pg_url, "a")
    set_lease(pg_url, "cam", "b", 2)  # b takes cam over; a is cut off and goes on analysing it
    record_sequence(b, epoch=2, frames=range(11, 21), prefix="b-")
    deliver(b, pg_url, "b")
    record_sequence(a, frames=range(11, 31), prefix="a-")
    a.record([row("other-1", 1, stream="other")], "other", "file-v1", 1, epoch=1)  # a still owns this one
    pg = pg_store(pg_url)
    batch = a.changes_since(a.replicated_up_to())
    result = pg.apply(batch, "a")  # one fenced stream does not fail the batch
    assert [(f.stream, f.epoch, f.current, f.owner) for f in result.fenced] == [("cam", 1, 2, "b")]
    assert result.fenced_changes == 10 + 4 + 4 + 2  # crossings, enters, exits, checkpoint and state
    a.mark_replicated(batch.up_to)
    counts = pg.counts()
    assert counts[("other", "south", "car", "in")] == 1
    assert sum(n for k, n in counts.items() if k[0] == "cam") == 5 + 5  # a's first 10 frames, b's 10
    assert pg.resume_frame("cam", "file-v1") == 21  # b's checkpoint
    assert pg.stream_state("cam") == b.stream_state("cam")
    from streamd.fleet.schema import connect

    with connect(pg_url) as conn:
        assert conn.execute("SELECT fenced FROM replication WHERE node='a'").fetchone()[0] == result.fenced_changes
    pg.close()
    a.close()
    b.close()


# ---- the replicator thread --------------------------------------------------------------------------------------


def test_the_replicator_ships_what_is_recorded_and_drains_on_stop(tmp_path: Path, pg_url: str) -> None:
    from streamd.fleet.replicator import Replicator

    set_lease(pg_url, "cam", "n1", 1)
    path = tmp_path / "local.db"
    store = CountStore(path, change_feed=True)
    replicator = Replicator(path, pg_url, "n1", batch_size=16, poll_s=0.05)
    replicator.start()
    record_sequence(store, frames=range(1, 21))
    assert replicator.flush(10)
    assert_same_counts(store, pg_url)
    record_sequence(store, frames=range(21, 41))
    assert replicator.stop(10)
    status = replicator.status()
    assert status.up and status.lag_changes == 0 and status.fenced == 0 and status.delivered > 0
    assert_same_counts(store, pg_url)
    store.close()


def test_a_thirty_second_outage_loses_nothing_doubles_nothing_and_catches_up_fast(
        tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    from streamd.fleet.replicator import Replicator

    set_lease(pg_url, "cam", "n1", 1)
    path = tmp_path / "local.db"
    replicator = Replicator(path, pg_url, "n1")
    stop = threading.Event()
    recorded: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:  # the analytics stage: 25 frames/s, a crossing every 2nd frame, states, visits
        store = CountStore(path, change_feed=True)
        try:
            f = 0
            next_at = time.monotonic()
            while not stop.is_set():
                f += 1
                record_sequence(store, frames=range(f, f + 1))
                recorded.append(f)
                next_at += 0.04
                time.sleep(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.close()

    thread = threading.Thread(target=writer)
    with structlog.testing.capture_logs() as logs:
        replicator.start()
        thread.start()
        time.sleep(3)
        assert replicator.flush(5)
        pg_server.stop("fast")
        outage_began = len(recorded)
        time.sleep(30)
        during = replicator.status()
        starting = time.monotonic()
        pg_server.start()  # returns once the server accepts connections
        restarted = time.monotonic()
        while replicator.status().last_catch_up_s is None:  # polled, not flush(): that would wake the replicator
            assert time.monotonic() - restarted < 20, replicator.status()
            time.sleep(0.02)
        caught_up_at = time.monotonic()
        catch_up_s = caught_up_at - restarted
        print(f"\ncatch-up after a 30 s outage: {catch_up_s:.2f} s from restart (server accepting connections) to "
              f"zero lag, {caught_up_at - starting:.2f} s from pg_ctl start; {len(recorded) - outage_began} frames, "
              f"{during.lag_changes} changes recorded during the outage; replicator's own measure "
              f"{replicator.status().last_catch_up_s} s from reconnection to delivered)")
        time.sleep(1)
        stop.set()
        thread.join(10)
        assert replicator.stop(10)
    assert not errors, errors
    assert not during.up and during.down_since is not None and during.lag_changes > 600 and during.lag_s > 25
    assert catch_up_s < 10
    events = [e["event"] for e in logs if e["event"].startswith("fleet_replication")]
    assert events.count("fleet_replication_down") == 1 and events.count("fleet_replication_caught_up") == 1
    caught_up = next(e for e in logs if e["event"] == "fleet_replication_caught_up")
    assert caught_up["delivered"] > 600
    local = CountStore(path, readonly=True)
    n = len(recorded)
    assert sum(local.counts().values()) == n // 2  # the writer's own record: a crossing every 2nd frame
    assert_same_counts(local, pg_url)  # nothing lost, nothing doubled (ids are primary keys; counts equal)
    assert local.resume_frame("cam", "file-v1") == n + 1
    local.close()


# ---- hand-over of a moved stream --------------------------------------------------------------------------------


def test_a_moved_stream_resumes_from_the_fleets_checkpoint_and_its_counts_continue(
        tmp_path: Path, pg_url: str) -> None:
    from streamd.fleet.replicator import import_stream

    a = CountStore(tmp_path / "a.db", change_feed=True)
    set_lease(pg_url, "cam", "a", 1)
    record_sequence(a, frames=range(1, 28), prefix="x-")  # ends with visit x-cam-v25 open, state of frame 27
    deliver(a, pg_url, "a")
    record_sequence(a, frames=range(28, 31), prefix="x-")  # recorded, never delivered: node a dies now
    a.close()

    set_lease(pg_url, "cam", "b", 2)
    b_path = tmp_path / "b.db"
    CountStore(b_path).record([row("stale", 1)], "cam", "file-v1", 400, state=b"stale", epoch=None)  # an old run
    handover = import_stream(b_path, pg_url, "cam", epoch=2)
    assert (handover.checkpoint_frame, handover.state, handover.open_visits) == (27, True, 1)
    b = CountStore(b_path, change_feed=True)
    assert b.resume_frame("cam", "file-v1") == 28  # the file resumes after the fleet's checkpoint
    assert b.stream_state("cam") == ("file-v1", 27, b"state-27")  # and the analytics state continues
    assert b.changes_since(0).empty  # the import itself ships nothing
    # b analyses frames 28.. again (same event ids: the same file, the same state) and exits the open visit
    record_sequence(b, epoch=2, frames=range(28, 41), prefix="x-")
    assert deliver(b, pg_url, "b") == 0
    pg = pg_store(pg_url)
    reference = CountStore(tmp_path / "ref.db")  # one node analysing the whole file
    record_sequence(reference, frames=range(1, 41), prefix="x-")
    assert pg.counts() == {k: v for k, v in reference.counts().items()}
    assert pg.zone_counts() == reference.zone_counts()
    assert pg.resume_frame("cam", "file-v1") == 41
    pg.close()
    b.close()
    reference.close()


def test_importing_drops_the_undelivered_changes_of_a_superseded_lease(tmp_path: Path, pg_url: str) -> None:
    from streamd.fleet.replicator import import_stream

    path = tmp_path / "a.db"
    a = CountStore(path, change_feed=True)
    set_lease(pg_url, "cam", "a", 1)
    record_sequence(a, frames=range(1, 11))
    deliver(a, pg_url, "a")
    record_sequence(a, frames=range(11, 21))  # not delivered; then a restarts and takes cam back, epoch 2
    a.close()
    set_lease(pg_url, "cam", "a", 2)
    handover = import_stream(path, pg_url, "cam", epoch=2)
    assert handover.checkpoint_frame == 10 and handover.dropped > 0
    a = CountStore(path, change_feed=True)
    assert a.resume_frame("cam", "file-v1") == 11
    record_sequence(a, epoch=2, frames=range(11, 21))  # analysed again: recordable again, delivered this time
    assert deliver(a, pg_url, "a") == 0
    assert_same_counts(a, pg_url)
    assert sum(a.counts().values()) == 10
    a.close()
