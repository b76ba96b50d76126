"""Durable counts: every crossing is a row with a stable id in SQLite (WAL), plus per-stream checkpoints.

The analytics stage records crossings here before it publishes them, in one transaction per frame
together with the stream's checkpoint (last frame analysed). Counts are computed from the rows, so a
restart resumes them exactly; ``INSERT OR IGNORE`` on the event id means a replayed frame never
counts twice. Readers (``streamd counts``) open the same file while the daemon runs.

Each stream's analytics state (tracker, line and zone state; see streamd.analytics.state) is stored in the
same transaction as its checkpoint, so a restarted analytics stage resumes from exactly the checkpointed frame.

Change feed (``CountStore(path, change_feed=True)``, a fleet node replicating to PostgreSQL; see
streamd.fleet.replicator): every insert or update of a crossing, a zone visit (enter inserts, exit updates), a
checkpoint and a stream state also appends an entry to ``changes`` in the same transaction. ``changes.seq`` is
AUTOINCREMENT and SQLite has one writer at a time, so a reader always sees a gap-free prefix of the feed.
``changes_since(seq, limit)`` reads the rows those entries name, in order; ``mark_replicated(seq)`` advances the
durable watermark (``replication.replicated_up_to``) and deletes the entries up to it (the rows stay). Each row and
change carries the lease epoch it was recorded with (``record(..., epoch=E)``).
"""

from __future__ import annotations

import sqlite3
import time as _time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

_SCHEMA = """
CREATE TABLE IF NOT EXISTS crossings (
    id TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    line TEXT NOT NULL,
    class_name TEXT NOT NULL,
    direction TEXT NOT NULL,
    ts REAL NOT NULL,
    frame INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS crossings_by_stream_ts ON crossings (stream, ts);
CREATE TABLE IF NOT EXISTS zone_visits (
    id TEXT PRIMARY KEY,           -- the enter event's id; the exit event's id is this plus "/exit"
    stream TEXT NOT NULL,
    zone TEXT NOT NULL,
    class_name TEXT NOT NULL,
    entered_ts REAL NOT NULL,
    enter_frame INTEGER NOT NULL,
    exited_ts REAL,                -- NULL while the visit is open
    dwell_s REAL
);
CREATE INDEX IF NOT EXISTS zone_visits_by_stream_ts ON zone_visits (stream, entered_ts);
CREATE TABLE IF NOT EXISTS checkpoints (
    stream TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    frame INTEGER NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS stream_state (
    stream TEXT PRIMARY KEY,
    frame INTEGER NOT NULL,        -- the checkpoint frame the state is the state after
    state BLOB NOT NULL            -- streamd.analytics.state.StreamCheckpoint, msgpack
);
"""

# PRAGMA user_version N: the migrations up to N are applied. Append, never edit.
_MIGRATIONS: list[list[str]] = [
    # 1: lease epochs on every row, the change feed and the replication watermark
    [
        "ALTER TABLE crossings ADD COLUMN epoch INTEGER",
        "ALTER TABLE zone_visits ADD COLUMN epoch INTEGER",
        "ALTER TABLE zone_visits ADD COLUMN exit_epoch INTEGER",
        "ALTER TABLE checkpoints ADD COLUMN epoch INTEGER",
        "ALTER TABLE stream_state ADD COLUMN epoch INTEGER",
        # kind: crossing | zone_enter | zone_exit (key: the row's id) | checkpoint | state (key NULL)
        "CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, stream TEXT NOT NULL, "
        "key TEXT, epoch INTEGER, at REAL NOT NULL)",
        "CREATE TABLE replication (id INTEGER PRIMARY KEY CHECK (id = 1), replicated_up_to INTEGER NOT NULL)",
        "INSERT INTO replication VALUES (1, 0)",
    ],
]
STORE_VERSION = len(_MIGRATIONS)


@dataclass(frozen=True)
class CrossingRow:
    id: str
    stream: str
    line: str
    class_name: str
    direction: str
    ts: float
    frame: int


@dataclass(frozen=True)
class ZoneEventRow:
    id: str  # enter: the visit id; exit: the visit id + "/exit"
    visit_id: str
    stream: str
    zone: str
    class_name: str
    kind: str  # "enter" | "exit"
    ts: float
    frame: int
    dwell_s: float | None = None


@dataclass(frozen=True)
class CrossingChange:
    seq: int
    epoch: int | None
    row: CrossingRow


@dataclass(frozen=True)
class ZoneVisitChange:
    """An enter (the visit's enter fields, no exit) or an exit (the whole visit row, exit included)."""

    seq: int
    epoch: int | None
    kind: str  # "enter" | "exit"
    visit_id: str
    stream: str
    zone: str
    class_name: str
    entered_ts: float
    enter_frame: int
    exited_ts: float | None
    dwell_s: float | None


@dataclass(frozen=True)
class CheckpointChange:
    seq: int
    epoch: int | None
    stream: str
    source: str
    frame: int
    finished: bool


@dataclass(frozen=True)
class StateChange:
    seq: int
    epoch: int | None
    stream: str
    frame: int | None  # None with state None: the stream's state was deleted
    state: bytes | None


@dataclass(frozen=True)
class ChangeBatch:
    """The changes after ``after`` up to and including ``up_to``, in feed order per kind; apply the kinds in the
    order of the fields. Checkpoints and states are coalesced: at most one of each per stream, its value as of
    ``up_to`` (never newer)."""

    after: int
    up_to: int
    entries: int  # change entries covered (seq in (after, up_to])
    crossings: tuple[CrossingChange, ...] = ()
    zone_visits: tuple[ZoneVisitChange, ...] = ()
    checkpoints: tuple[CheckpointChange, ...] = ()
    states: tuple[StateChange, ...] = ()
    more: bool = False  # the feed goes on after ``up_to`` (the batch was cut): not caught up yet

    @property
    def empty(self) -> bool:
        return self.entries == 0


@dataclass(frozen=True)
class ZoneCount:
    visits: int
    exits: int
    mean_dwell_s: float | None


class CountStore:
    def __init__(self, path: str | Path, readonly: bool = False, change_feed: bool = False):
        """``change_feed``: also append every change to the feed a replicator ships to PostgreSQL (a fleet node
        with ``counts.url``). Off, nothing is appended: without a replicator the feed would grow forever."""
        self.path = Path(path)
        self.change_feed = change_feed and not readonly
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"count store {self.path} does not exist (has the daemon run yet?)")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
            self._db.executescript(_SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Apply the missing migrations, once, even when several processes open the file at the same time."""
        if int(self._db.execute("PRAGMA user_version").fetchone()[0]) >= STORE_VERSION:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            found = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            for version in range(found + 1, STORE_VERSION + 1):
                for statement in _MIGRATIONS[version - 1]:
                    self._db.execute(statement)
            if found < STORE_VERSION:
                self._db.execute(f"PRAGMA user_version = {STORE_VERSION}")
            self._db.commit()
        except BaseException:
            self._db.rollback()
            raise

    def _change(self, kind: str, stream: str, key: str | None, epoch: int | None) -> None:
        if self.change_feed:
            self._db.execute("INSERT INTO changes (kind, stream, key, epoch, at) VALUES (?, ?, ?, ?, ?)",
                             (kind, stream, key, epoch, _time.time()))

    def _checkpoint_epoch(self, stream: str, epoch: int | None) -> int | None:
        if epoch is not None:
            return epoch
        row = self._db.execute("SELECT epoch FROM checkpoints WHERE stream=?", (stream,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def record(self, rows: Iterable[CrossingRow], stream: str, source: str, frame: int,
               zone_events: Iterable[ZoneEventRow] = (), state: bytes | None = None,
               clear_state: bool = False, epoch: int | None = None) -> tuple[list[CrossingRow], list[ZoneEventRow]]:
        """Store the crossings and zone events of one frame and the stream's checkpoint atomically; returns
        the rows newly added (a replayed id is ignored). ``state``: the stream's analytics state after this
        frame, stored in the same transaction; ``clear_state``: forget the stored state instead. ``epoch``: the
        lease epoch this node holds the stream with, stored with the rows and the checkpoint (the replicator
        ships them fenced by it)."""
        added: list[CrossingRow] = []
        added_zone: list[ZoneEventRow] = []
        with self._db:
            for r in rows:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO crossings (id, stream, line, class_name, direction, ts, frame, epoch) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (r.id, r.stream, r.line, r.class_name, r.direction, r.ts, r.frame, epoch))
                if cursor.rowcount:
                    added.append(r)
                    self._change("crossing", r.stream, r.id, epoch)
            for z in zone_events:
                if z.kind == "enter":
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO zone_visits (id, stream, zone, class_name, entered_ts, enter_frame, "
                        "epoch) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (z.visit_id, z.stream, z.zone, z.class_name, z.ts, z.frame, epoch))
                else:
                    cursor = self._db.execute(
                        "UPDATE zone_visits SET exited_ts=?, dwell_s=?, exit_epoch=? WHERE id=? AND exited_ts IS NULL",
                        (z.ts, z.dwell_s, epoch, z.visit_id))
                if cursor.rowcount:
                    added_zone.append(z)
                    self._change("zone_enter" if z.kind == "enter" else "zone_exit", z.stream, z.visit_id, epoch)
            self._db.execute(
                "INSERT INTO checkpoints (stream, source, frame, finished, epoch) VALUES (?, ?, ?, 0, ?) "
                "ON CONFLICT(stream) DO UPDATE SET frame=excluded.frame, source=excluded.source, finished=0, "
                "epoch=excluded.epoch",
                (stream, source, frame, epoch),
            )
            self._change("checkpoint", stream, f"{frame}:0", epoch)  # what it said then: a cut batch ships it
            if state is not None:
                self._db.execute("INSERT OR REPLACE INTO stream_state (stream, frame, state, epoch) VALUES (?, ?, ?, ?)",
                                 (stream, frame, state, epoch))
                self._change("state", stream, None, epoch)
            elif clear_state:
                if self._db.execute("DELETE FROM stream_state WHERE stream=?", (stream,)).rowcount:
                    self._change("state", stream, None, epoch)
        return added, added_zone

    def finish(self, stream: str, epoch: int | None = None) -> None:
        """The stream's finite source was processed to its end: the next run starts it afresh. ``epoch``: as in
        ``record``; None keeps the checkpoint's."""
        with self._db:
            epoch = self._checkpoint_epoch(stream, epoch)
            row = self._db.execute("SELECT frame FROM checkpoints WHERE stream=?", (stream,)).fetchone()
            if self._db.execute("UPDATE checkpoints SET finished=1, epoch=? WHERE stream=?", (epoch, stream)).rowcount:
                self._change("checkpoint", stream, f"{row[0]}:1", epoch)
            if self._db.execute("DELETE FROM stream_state WHERE stream=?", (stream,)).rowcount:
                self._change("state", stream, None, epoch)

    def clear_state(self, stream: str, epoch: int | None = None) -> None:
        """Forget a stream's analytics state: its next frames start with fresh state."""
        with self._db:
            if self._db.execute("DELETE FROM stream_state WHERE stream=?", (stream,)).rowcount:
                self._change("state", stream, None, self._checkpoint_epoch(stream, epoch))

    # ---- the change feed (streamd.fleet.replicator) ----------------------------------------------------------

    def replicated_up_to(self) -> int:
        """The durable watermark: every change up to this seq has been delivered."""
        return int(self._db.execute("SELECT replicated_up_to FROM replication WHERE id=1").fetchone()[0])

    def feed_end(self) -> int:
        """The seq of the last change ever appended (0: none)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='changes'").fetchone()
        return 0 if row is None else int(row[0])

    def oldest_pending_at(self) -> float | None:
        """Wall time the oldest change not yet replicated was recorded; None when all are."""
        row = self._db.execute("SELECT MIN(at) FROM changes WHERE seq > (SELECT replicated_up_to FROM replication "
                               "WHERE id=1)").fetchone()
        return None if row[0] is None else float(row[0])

    def mark_replicated(self, seq: int) -> None:
        """Advance the watermark to ``seq`` (never backwards) and delete the feed entries up to it."""
        with self._db:
            self._db.execute("UPDATE replication SET replicated_up_to=MAX(replicated_up_to, ?) WHERE id=1", (seq,))
            self._db.execute("DELETE FROM changes WHERE seq <= ?", (seq,))

    def changes_since(self, seq: int, limit: int = 500) -> ChangeBatch:
        """The next at most ``limit`` feed entries after ``seq``, with the rows they name, read from one snapshot.

        Checkpoints and states are coalesced per stream (the row's value now); when the batch stops short of the
        feed's end, a stream whose checkpoint (or state) changes again after the batch leaves it out, so that a
        shipped checkpoint is never ahead of the crossings and visits recorded before it (those ship first)."""
        self._db.execute("BEGIN")  # one read snapshot for the entries and the rows
        try:
            entries = self._db.execute("SELECT seq, kind, stream, key, epoch FROM changes WHERE seq > ? ORDER BY seq "
                                       "LIMIT ?", (seq, limit)).fetchall()
            if not entries:
                return ChangeBatch(after=seq, up_to=seq, entries=0)
            cut = len(entries) == limit
            if cut:
                entries = _up_to_whole_frames(entries)
            up_to = int(entries[-1][0])
            crossing_ids = [e[3] for e in entries if e[1] == "crossing"]
            visit_ids = list({e[3] for e in entries if e[1] in ("zone_enter", "zone_exit")})
            crossings = {r[0]: r for r in self._rows(
                "SELECT id, stream, line, class_name, direction, ts, frame FROM crossings WHERE id IN ({})",
                crossing_ids)}
            visits = {r[0]: r for r in self._rows(
                "SELECT id, stream, zone, class_name, entered_ts, enter_frame, exited_ts, dwell_s FROM zone_visits "
                "WHERE id IN ({})", visit_ids)}
            last: dict[tuple[str, str], tuple[int, int | None, str | None]] = {}  # (kind, stream) -> seq, epoch, key
            out_crossings: list[CrossingChange] = []
            out_visits: list[ZoneVisitChange] = []
            for s, kind, stream, key, epoch in entries:
                if kind == "crossing" and key in crossings:
                    c = crossings[key]
                    out_crossings.append(CrossingChange(int(s), epoch, CrossingRow(
                        str(c[0]), str(c[1]), str(c[2]), str(c[3]), str(c[4]), float(c[5]), int(c[6]))))
                elif kind in ("zone_enter", "zone_exit") and key in visits:
                    v = visits[key]
                    exited = kind == "zone_exit" and v[6] is not None
                    out_visits.append(ZoneVisitChange(
                        int(s), epoch, "exit" if exited else "enter", str(v[0]), str(v[1]), str(v[2]), str(v[3]),
                        float(v[4]), int(v[5]), float(v[6]) if exited else None,
                        float(v[7]) if exited and v[7] is not None else None))
                elif kind in ("checkpoint", "state"):
                    last[(kind, stream)] = (int(s), epoch, key)
            out_checkpoints: list[CheckpointChange] = []
            out_states: list[StateChange] = []
            for (kind, stream), (s, epoch, key) in sorted(last.items(), key=lambda item: item[1][0]):
                if cut and self._db.execute("SELECT 1 FROM changes WHERE seq > ? AND stream=? AND kind=? LIMIT 1",
                                            (up_to, stream, kind)).fetchone():
                    # Its value now is newer than this batch. A checkpoint goes as the entry recorded it (frame,
                    # finished), so that the fleet's checkpoint covers the crossings this batch ships: a node that
                    # took the stream over from here would count them again under its own run's ids. The state
                    # (one blob, its value now only) waits for the entry after the batch; a checkpoint without
                    # its state resumes with a fresh tracker (an object in transit missed, none doubled).
                    if kind == "checkpoint" and key:
                        row = self._db.execute("SELECT source FROM checkpoints WHERE stream=?", (stream,)).fetchone()
                        frame, finished = key.split(":")
                        if row is not None:
                            out_checkpoints.append(CheckpointChange(s, epoch, stream, str(row[0]), int(frame),
                                                                    finished == "1"))
                    continue
                if kind == "checkpoint":
                    row = self._db.execute("SELECT source, frame, finished FROM checkpoints WHERE stream=?",
                                           (stream,)).fetchone()
                    if row is not None:
                        out_checkpoints.append(CheckpointChange(s, epoch, stream, str(row[0]), int(row[1]),
                                                                bool(row[2])))
                else:
                    row = self._db.execute("SELECT frame, state FROM stream_state WHERE stream=?", (stream,)).fetchone()
                    out_states.append(StateChange(s, epoch, stream, None if row is None else int(row[0]),
                                                  None if row is None else bytes(row[1])))
            return ChangeBatch(after=seq, up_to=up_to, entries=len(entries), crossings=tuple(out_crossings),
                               zone_visits=tuple(out_visits), checkpoints=tuple(out_checkpoints),
                               states=tuple(out_states), more=cut)
        finally:
            self._db.commit()

    def _rows(self, query: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            out.extend(self._db.execute(query.format(", ".join("?" * len(chunk))), chunk).fetchall())
        return out

    def import_stream(self, stream: str, checkpoint: tuple[str, int, bool, int | None] | None,
                      state: tuple[int, bytes, int | None] | None,
                      open_visits: Iterable[ZoneVisitChange] = (), epoch: int | None = None) -> int:
        """Take over a stream's checkpoint and analytics state from the fleet's store (streamd.fleet.replicator.
        import_stream), replacing this store's, without feed entries (they came from there). ``checkpoint``:
        (source, frame, finished, epoch), None: the fleet has none; ``state``: (frame, state, epoch).
        ``open_visits``: the stream's visits still open there, so that their exits find their rows here.

        The stream's entries not yet replicated with an epoch other than ``epoch`` (all when None) are dropped
        together with the rows they name: they are of a lease since superseded, PostgreSQL refuses them, and the
        frames they came from are analysed again from the imported checkpoint, so they must be recordable again.
        Returns how many entries were dropped."""
        with self._db:
            pending = self._db.execute(
                "SELECT seq, kind, key FROM changes WHERE stream=? AND seq > (SELECT replicated_up_to FROM replication "
                "WHERE id=1) AND (? IS NULL OR epoch IS NOT ?)", (stream, epoch, epoch)).fetchall()
            for _, kind, key in pending:
                if kind == "crossing":
                    self._db.execute("DELETE FROM crossings WHERE id=?", (key,))
                elif kind == "zone_enter":
                    self._db.execute("DELETE FROM zone_visits WHERE id=?", (key,))
                elif kind == "zone_exit":
                    self._db.execute("UPDATE zone_visits SET exited_ts=NULL, dwell_s=NULL, exit_epoch=NULL WHERE id=?",
                                     (key,))
            self._db.executemany("DELETE FROM changes WHERE seq=?", [(p[0],) for p in pending])
            self._db.execute("DELETE FROM checkpoints WHERE stream=?", (stream,))
            self._db.execute("DELETE FROM stream_state WHERE stream=?", (stream,))
            if checkpoint is not None:
                self._db.execute("INSERT INTO checkpoints (stream, source, frame, finished, epoch) VALUES (?, ?, ?, ?, ?)",
                                 (stream, checkpoint[0], checkpoint[1], int(checkpoint[2]), checkpoint[3]))
            if state is not None:
                self._db.execute("INSERT INTO stream_state (stream, frame, state, epoch) VALUES (?, ?, ?, ?)",
                                 (stream, state[0], state[1], state[2]))
            for v in open_visits:
                self._db.execute(
                    "INSERT OR REPLACE INTO zone_visits (id, stream, zone, class_name, entered_ts, enter_frame, "
                    "exited_ts, dwell_s, epoch) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
                    (v.visit_id, v.stream, v.zone, v.class_name, v.entered_ts, v.enter_frame, v.epoch))
        return len(pending)

    def stream_state(self, stream: str) -> tuple[str, int, bytes] | None:
        """(checkpoint source, checkpoint frame, state) of a stream whose checkpoint carries analytics state
        and is not finished; None otherwise."""
        row = self._db.execute(
            "SELECT c.source, c.frame, s.state FROM checkpoints c JOIN stream_state s ON s.stream = c.stream "
            "AND s.frame = c.frame WHERE c.stream=? AND c.finished=0", (stream,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), bytes(row[2]))

    def resume_frame(self, stream: str, source: str) -> int:
        """First frame to process for ``stream``: after its checkpoint if an earlier run of the same
        source stopped part-way, else 0."""
        row = self._db.execute("SELECT source, frame, finished FROM checkpoints WHERE stream=?", (stream,)).fetchone()
        if row is None or row[0] != source or row[2]:
            return 0
        return int(row[1]) + 1

    def counts(self, stream: str | None = None, since: float | None = None,
               until: float | None = None) -> dict[tuple[str, str, str, str], int]:
        """(stream, line, class, direction) -> crossings in [since, until)."""
        where, args = window_clause("ts", stream, since, until)
        query = (f"SELECT stream, line, class_name, direction, COUNT(*) FROM crossings WHERE {where} "
                 "GROUP BY stream, line, class_name, direction ORDER BY stream, line, class_name, direction")
        return {(s, ln, c, d): n for s, ln, c, d, n in self._db.execute(query, args)}

    def zone_counts(self, stream: str | None = None, since: float | None = None,
                    until: float | None = None) -> dict[tuple[str, str, str], ZoneCount]:
        """(stream, zone, class) -> visits that entered in [since, until), how many of them exited, and
        their mean dwell time."""
        where, args = window_clause("entered_ts", stream, since, until)
        query = (f"SELECT stream, zone, class_name, COUNT(*), COUNT(exited_ts), AVG(dwell_s) FROM zone_visits "
                 f"WHERE {where} GROUP BY stream, zone, class_name ORDER BY stream, zone, class_name")
        return {(st, zn, c): ZoneCount(n, exits, None if dwell is None else float(dwell))
                for st, zn, c, n, exits, dwell in self._db.execute(query, args)}

    def close(self) -> None:
        self._db.close()


def window_clause(ts_column: str, stream: str | None, since: float | None,
            until: float | None, placeholder: str = "?") -> tuple[str, list[object]]:
    """WHERE clause (column names are ours, values are parameters) for a stream and a [since, until) window;
    ``placeholder`` is the driver's parameter mark (sqlite3 ``?``, psycopg ``%s``)."""
    clauses: list[str] = ["1=1"]
    args: list[object] = []
    p = placeholder
    for clause, value in ((f"stream={p}", stream), (f"{ts_column}>={p}", since), (f"{ts_column}<{p}", until)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return " AND ".join(clauses), args


@dataclass(frozen=True)
class ShiftSchedule:
    """Shift start times in local time, e.g. ["06:00", "14:00", "22:00"]; a shift runs until the next one."""

    starts: tuple[time, ...]
    timezone: ZoneInfo

    @staticmethod
    def parse(starts: list[str], timezone: str) -> ShiftSchedule:
        parsed = tuple(sorted(time.fromisoformat(s) for s in starts))
        if not parsed:
            raise ValueError("a shift schedule needs at least one start time")
        return ShiftSchedule(parsed, ZoneInfo(timezone))

    def window(self, at: datetime) -> tuple[datetime, datetime]:
        """[start, end) of the shift that contains ``at`` (an aware datetime)."""
        local = at.astimezone(self.timezone)
        candidates: list[datetime] = []
        for day in (local.date() - timedelta(days=1), local.date(), local.date() + timedelta(days=1)):
            candidates.extend(datetime.combine(day, t, self.timezone) for t in self.starts)
        candidates.sort()
        start = max(c for c in candidates if c <= local)
        end = min(c for c in candidates if c > local)
        return start, end


def hour_window(at: datetime, timezone: ZoneInfo) -> tuple[datetime, datetime]:
    local = at.astimezone(timezone).replace(minute=0, second=0, microsecond=0)
    return local, local + timedelta(hours=1)


def _up_to_whole_frames(entries: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A batch cut at its size limit ends before the first row whose frame's checkpoint is not in it: the rows a
    frame recorded ship with that frame's checkpoint, so the fleet's checkpoint covers every row it holds (a node
    that resumes a stream from it would otherwise count the rows after it again, under its own run's ids). A
    frame larger than the whole batch ships in parts (there is no other way forward)."""
    last_checkpoint: dict[str, int] = {}
    for i, (_, kind, stream, _, _) in enumerate(entries):
        if kind == "checkpoint":
            last_checkpoint[stream] = i
    open_rows = [i for i, (_, kind, stream, _, _) in enumerate(entries)
                 if kind != "state" and i > last_checkpoint.get(stream, -1)]
    return entries[: open_rows[0]] if open_rows and open_rows[0] > 0 else entries
