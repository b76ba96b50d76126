"""Durable counts in PostgreSQL: the same interface and semantics as streamd.analytics.store.CountStore.

Every node of a fleet writes its streams' crossings, zone visits, checkpoints and analytics state here, one
transaction per analysed frame; any node (``streamd counts``, ``/api/counts``) reads the whole fleet's counts.
``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` on the event ids means a replayed frame never counts twice, and
``record`` returns the rows that were new, as the SQLite store does.

Fencing: ``record(..., epoch=E)`` locks the stream's row in ``leases`` in the same transaction and refuses the
write (``FencedError``) unless the lease's epoch is still E. A node whose lease was taken over (its epoch is no
longer current) can therefore never add a count, even if it is still running, cut off from the others.

Replication (streamd.fleet.replicator): a fleet node records into its local SQLite store and ships its change feed
here in batches; ``apply(batch, node_id)`` stores one batch in one transaction, idempotently (``ON CONFLICT``: the
same change twice is a no-op) and fenced per stream: the changes of a stream whose epoch is no longer its lease's
current one are refused and returned (``ApplyResult.fenced``), the rest of the batch is stored. Checkpoints and
states keep the newest: by epoch, then (same epoch, same node) by the writer's change seq.

The schema is streamd's own and versioned (streamd.fleet.schema): a writable store migrates it on open.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streamd.analytics.store import ChangeBatch, CrossingRow, ZoneCount, ZoneEventRow, ZoneVisitChange, window_clause
from streamd.errors import StreamdError
from streamd.fleet.schema import SCHEMA_VERSION, SchemaError, connect, current_version, migrate
from streamd.redact import redact


class FencedError(StreamdError):
    """A count write carried a lease epoch that is no longer the stream's current one: another node owns it now."""

    def __init__(self, stream: str, epoch: int, current: int | None, owner: str | None):
        self.stream, self.epoch, self.current, self.owner = stream, epoch, current, owner
        held = "no lease" if current is None else f"epoch {current}, owner {owner or 'none'}"
        super().__init__(f"stream {stream}: write with lease epoch {epoch} refused, the lease is now at {held}; "
                         "this node no longer owns the stream and must stop analysing it")


@dataclass(frozen=True)
class FencedChanges:
    """Changes of one stream refused by ``apply``: recorded with lease ``epoch``, the lease is now at ``current``."""

    stream: str
    epoch: int
    current: int | None  # None: the stream has no lease
    owner: str | None
    changes: int


@dataclass(frozen=True)
class ApplyResult:
    applied: int  # changes accepted (new here, or already here: a replay)
    inserted: int  # crossings and zone visit enters that were new here
    fenced: tuple[FencedChanges, ...] = ()

    @property
    def fenced_changes(self) -> int:
        return sum(f.changes for f in self.fenced)


# ON CONFLICT guard (and delete guard) for checkpoints and stream_state: the incoming change is at least as new as
# the stored row -- by epoch, then by the writer's change seq when the same node wrote both. An unfenced (NULL
# epoch) write on either side always applies.
_NEWEST = ("({t}.epoch IS NULL OR {e} IS NULL OR {e} > {t}.epoch OR ({e} = {t}.epoch AND "
           "({t}.node IS DISTINCT FROM {n} OR {t}.seq IS NULL OR {s} >= {t}.seq)))")


class PostgresCountStore:
    def __init__(self, url: str, readonly: bool = False, timeout_s: float = 5.0):
        self.url = url
        self.readonly = readonly
        self._timeout_s = timeout_s
        self._db: Any = None
        db = self._conn()
        if readonly:
            version = current_version(db)
            if version == 0:
                raise SchemaError(f"count store {redact(url)} has no streamd schema (has the daemon run yet?)")
            if version > SCHEMA_VERSION:
                raise SchemaError(f"count store {redact(url)} has schema version {version}, newer than this "
                                  f"streamd knows ({SCHEMA_VERSION}): use the newer streamd")
        else:
            migrate(db)

    def __repr__(self) -> str:
        return f"PostgresCountStore({redact(self.url)!r}, readonly={self.readonly})"

    def _conn(self) -> Any:
        """The connection, reopened if the last one broke (the database restarted or the network failed)."""
        if self._db is None or self._db.closed or self._db.broken:
            if self._db is not None:
                self._db.close()
            self._db = connect(self.url, self._timeout_s)
            if self.readonly:
                self._db.execute("SET default_transaction_read_only = on")
        return self._db

    def record(self, rows: Iterable[CrossingRow], stream: str, source: str, frame: int,
               zone_events: Iterable[ZoneEventRow] = (), state: bytes | None = None,
               clear_state: bool = False, epoch: int | None = None) -> tuple[list[CrossingRow], list[ZoneEventRow]]:
        """Store the crossings and zone events of one frame and the stream's checkpoint atomically; returns the
        rows newly added (a replayed id is ignored). ``state``: the stream's analytics state after this frame;
        ``clear_state``: forget the stored state instead. ``epoch``: the lease epoch this node holds the stream
        with; the write is refused with FencedError (nothing stored) when it is no longer the current one."""
        rows, zone_events = list(rows), list(zone_events)
        added: list[CrossingRow] = []
        added_zone: list[ZoneEventRow] = []
        db = self._conn()
        with db.transaction():
            if epoch is not None:
                lease = db.execute("SELECT epoch, owner FROM leases WHERE stream=%s FOR SHARE", (stream,)).fetchone()
                if lease is None or int(lease[0]) != epoch:
                    raise FencedError(stream, epoch, None if lease is None else int(lease[0]),
                                      None if lease is None else lease[1])
            with db.cursor() as cur:
                for r in rows:
                    cur.execute("INSERT INTO crossings (id, stream, line, class_name, direction, ts, frame, epoch) "
                                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                                (r.id, r.stream, r.line, r.class_name, r.direction, r.ts, r.frame, epoch))
                    if cur.fetchone() is not None:
                        added.append(r)
                for z in zone_events:
                    if z.kind == "enter":
                        cur.execute("INSERT INTO zone_visits (id, stream, zone, class_name, entered_ts, enter_frame, "
                                    "epoch) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                                    (z.visit_id, z.stream, z.zone, z.class_name, z.ts, z.frame, epoch))
                    else:
                        cur.execute("UPDATE zone_visits SET exited_ts=%s, dwell_s=%s, exit_epoch=%s WHERE id=%s AND "
                                    "exited_ts IS NULL RETURNING id", (z.ts, z.dwell_s, epoch, z.visit_id))
                    if cur.fetchone() is not None:
                        added_zone.append(z)
                cur.execute("INSERT INTO checkpoints (stream, source, frame, finished, epoch) VALUES (%s, %s, %s, "
                            "false, %s) ON CONFLICT (stream) DO UPDATE SET frame=excluded.frame, "
                            "source=excluded.source, finished=false, epoch=excluded.epoch, node=NULL, seq=NULL",
                            (stream, source, frame, epoch))
                if state is not None:
                    cur.execute("INSERT INTO stream_state (stream, frame, state, epoch) VALUES (%s, %s, %s, %s) "
                                "ON CONFLICT (stream) DO UPDATE SET frame=excluded.frame, state=excluded.state, "
                                "epoch=excluded.epoch, node=NULL, seq=NULL", (stream, frame, state, epoch))
                elif clear_state:
                    cur.execute("DELETE FROM stream_state WHERE stream=%s", (stream,))
        return added, added_zone

    def apply(self, batch: ChangeBatch, node_id: str) -> ApplyResult:
        """Store a batch of a node's change feed (CountStore.changes_since) in one transaction. Idempotent: a
        replayed change is a no-op. Fenced per stream: changes whose lease epoch is not the stream's current one
        are refused and returned in ``fenced`` (the rest is stored; nothing is raised for them). Changes without
        an epoch (a node outside a fleet) are not fenced."""
        db = self._conn()
        keyed: list[tuple[str, int | None]] = (
            [(c.row.stream, c.epoch) for c in batch.crossings] + [(z.stream, z.epoch) for z in batch.zone_visits]
            + [(c.stream, c.epoch) for c in batch.checkpoints] + [(s.stream, s.epoch) for s in batch.states])
        fenced: dict[tuple[str, int], int] = {}
        leases: dict[str, tuple[int, str | None]] = {}
        inserted = 0
        with db.transaction():
            streams = sorted({stream for stream, epoch in keyed if epoch is not None})
            if streams:  # FOR SHARE: a takeover (UPDATE of the row) waits for this batch, or this batch sees it
                for stream, epoch, owner in db.execute(
                        "SELECT stream, epoch, owner FROM leases WHERE stream = ANY(%s) ORDER BY stream FOR SHARE",
                        (streams,)).fetchall():
                    leases[str(stream)] = (int(epoch), owner)

            def accepted(stream: str, epoch: int | None) -> bool:
                if epoch is None:
                    return True
                lease = leases.get(stream)
                if lease is not None and lease[0] == epoch:
                    return True
                fenced[(stream, epoch)] = fenced.get((stream, epoch), 0) + 1
                return False

            with db.cursor() as cur:
                crossings = [(c.row.id, c.row.stream, c.row.line, c.row.class_name, c.row.direction, c.row.ts,
                              c.row.frame, c.epoch, node_id)
                             for c in batch.crossings if accepted(c.row.stream, c.epoch)]
                if crossings:
                    cur.executemany("INSERT INTO crossings (id, stream, line, class_name, direction, ts, frame, epoch, "
                                    "node) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                                    crossings)
                    inserted += max(0, cur.rowcount)
                for z in batch.zone_visits:
                    if not accepted(z.stream, z.epoch):
                        continue
                    if z.kind == "enter":
                        cur.execute("INSERT INTO zone_visits (id, stream, zone, class_name, entered_ts, enter_frame, "
                                    "epoch, node) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                                    (z.visit_id, z.stream, z.zone, z.class_name, z.entered_ts, z.enter_frame, z.epoch,
                                     node_id))
                        inserted += max(0, cur.rowcount)
                    else:  # the exit updates the visit (inserted whole if its enter never arrived here)
                        cur.execute("INSERT INTO zone_visits (id, stream, zone, class_name, entered_ts, enter_frame, "
                                    "exited_ts, dwell_s, epoch, exit_epoch, node) VALUES (%s, %s, %s, %s, %s, %s, %s, "
                                    "%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET exited_ts=excluded.exited_ts, "
                                    "dwell_s=excluded.dwell_s, exit_epoch=excluded.exit_epoch "
                                    "WHERE zone_visits.exited_ts IS NULL",
                                    (z.visit_id, z.stream, z.zone, z.class_name, z.entered_ts, z.enter_frame,
                                     z.exited_ts, z.dwell_s, z.epoch, z.epoch, node_id))
                checkpoint_guard = _NEWEST.format(t="checkpoints", e="excluded.epoch", n="excluded.node",
                                                  s="excluded.seq")
                for c in batch.checkpoints:
                    if accepted(c.stream, c.epoch):
                        cur.execute("INSERT INTO checkpoints (stream, source, frame, finished, epoch, node, seq) "
                                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (stream) DO UPDATE SET "
                                    "source=excluded.source, frame=excluded.frame, finished=excluded.finished, "
                                    "epoch=excluded.epoch, node=excluded.node, seq=excluded.seq "
                                    f"WHERE {checkpoint_guard}",
                                    (c.stream, c.source, c.frame, c.finished, c.epoch, node_id, c.seq))
                state_guard = _NEWEST.format(t="stream_state", e="excluded.epoch", n="excluded.node", s="excluded.seq")
                delete_guard = _NEWEST.format(t="stream_state", e="%(epoch)s::bigint", n="%(node)s::text",
                                              s="%(seq)s::bigint")
                for st in batch.states:
                    if not accepted(st.stream, st.epoch):
                        continue
                    if st.state is None:
                        cur.execute(f"DELETE FROM stream_state WHERE stream=%(stream)s AND {delete_guard}",
                                    {"stream": st.stream, "epoch": st.epoch, "node": node_id, "seq": st.seq})
                    else:
                        cur.execute("INSERT INTO stream_state (stream, frame, state, epoch, node, seq) VALUES "
                                    "(%s, %s, %s, %s, %s, %s) ON CONFLICT (stream) DO UPDATE SET frame=excluded.frame, "
                                    "state=excluded.state, epoch=excluded.epoch, node=excluded.node, seq=excluded.seq "
                                    f"WHERE {state_guard}", (st.stream, st.frame, st.state, st.epoch, node_id, st.seq))
                cur.execute("INSERT INTO replication (node, delivered_seq, fenced) VALUES (%s, %s, %s) "
                            "ON CONFLICT (node) DO UPDATE SET delivered_seq=GREATEST(replication.delivered_seq, "
                            "excluded.delivered_seq), fenced=replication.fenced + excluded.fenced, at=now()",
                            (node_id, batch.up_to, sum(fenced.values())))
        refused = tuple(FencedChanges(stream, epoch, leases[stream][0] if stream in leases else None,
                                      leases[stream][1] if stream in leases else None, n)
                        for (stream, epoch), n in sorted(fenced.items()))
        return ApplyResult(applied=len(keyed) - sum(fenced.values()), inserted=inserted, fenced=refused)

    def handover(self, stream: str, max_open_visits: int = 10_000) -> tuple[
            tuple[str, int, bool, int | None] | None, tuple[int, bytes, int | None] | None, list[ZoneVisitChange]]:
        """What a node that takes ``stream`` over needs in its local store (streamd.fleet.replicator.import_stream):
        the checkpoint (source, frame, finished, epoch), the analytics state (frame, state, epoch) and the visits
        still open (the newest ``max_open_visits``), each None or empty when there is none."""
        db = self._conn()
        with db.transaction():
            c = db.execute("SELECT source, frame, finished, epoch FROM checkpoints WHERE stream=%s",
                           (stream,)).fetchone()
            s = db.execute("SELECT frame, state, epoch FROM stream_state WHERE stream=%s", (stream,)).fetchone()
            visits = db.execute("SELECT id, stream, zone, class_name, entered_ts, enter_frame, epoch FROM zone_visits "
                                "WHERE stream=%s AND exited_ts IS NULL ORDER BY entered_ts DESC LIMIT %s",
                                (stream, max_open_visits)).fetchall()
        checkpoint = None if c is None else (str(c[0]), int(c[1]), bool(c[2]), None if c[3] is None else int(c[3]))
        state = None if s is None else (int(s[0]), bytes(s[1]), None if s[2] is None else int(s[2]))
        return checkpoint, state, [ZoneVisitChange(0, None if v[6] is None else int(v[6]), "enter", str(v[0]),
                                                   str(v[1]), str(v[2]), str(v[3]), float(v[4]), int(v[5]), None, None)
                                   for v in visits]

    def finish(self, stream: str) -> None:
        """The stream's finite source was processed to its end: the next run starts it afresh."""
        db = self._conn()
        with db.transaction():
            db.execute("UPDATE checkpoints SET finished=true WHERE stream=%s", (stream,))
            db.execute("DELETE FROM stream_state WHERE stream=%s", (stream,))

    def clear_state(self, stream: str) -> None:
        """Forget a stream's analytics state: its next frames start with fresh state."""
        self._conn().execute("DELETE FROM stream_state WHERE stream=%s", (stream,))

    def stream_state(self, stream: str) -> tuple[str, int, bytes] | None:
        """(checkpoint source, checkpoint frame, state) of a stream whose checkpoint carries analytics state and is
        not finished; None otherwise."""
        row = self._conn().execute(
            "SELECT c.source, c.frame, s.state FROM checkpoints c JOIN stream_state s ON s.stream = c.stream "
            "AND s.frame = c.frame WHERE c.stream=%s AND NOT c.finished", (stream,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), bytes(row[2]))

    def resume_frame(self, stream: str, source: str) -> int:
        """First frame to process for ``stream``: after its checkpoint if an earlier run of the same source
        stopped part-way, else 0."""
        row = self._conn().execute("SELECT source, frame, finished FROM checkpoints WHERE stream=%s",
                                   (stream,)).fetchone()
        if row is None or row[0] != source or row[2]:
            return 0
        return int(row[1]) + 1

    def counts(self, stream: str | None = None, since: float | None = None,
               until: float | None = None) -> dict[tuple[str, str, str, str], int]:
        """(stream, line, class, direction) -> crossings in [since, until), over the whole fleet."""
        where, args = window_clause("ts", stream, since, until, "%s")
        query = (f"SELECT stream, line, class_name, direction, COUNT(*) FROM crossings WHERE {where} "
                 "GROUP BY stream, line, class_name, direction ORDER BY stream, line, class_name, direction")
        return {(s, ln, c, d): int(n) for s, ln, c, d, n in self._conn().execute(query, args).fetchall()}

    def zone_counts(self, stream: str | None = None, since: float | None = None,
                    until: float | None = None) -> dict[tuple[str, str, str], ZoneCount]:
        """(stream, zone, class) -> visits that entered in [since, until), how many of them exited, and their
        mean dwell time."""
        where, args = window_clause("entered_ts", stream, since, until, "%s")
        query = (f"SELECT stream, zone, class_name, COUNT(*), COUNT(exited_ts), AVG(dwell_s) FROM zone_visits "
                 f"WHERE {where} GROUP BY stream, zone, class_name ORDER BY stream, zone, class_name")
        return {(st, zn, c): ZoneCount(int(n), int(exits), None if dwell is None else float(dwell))
                for st, zn, c, n, exits, dwell in self._conn().execute(query, args).fetchall()}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

