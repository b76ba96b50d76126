"""Durable counts: every crossing is a row with a stable id in SQLite (WAL), plus per-stream checkpoints.

The analytics stage records crossings here before it publishes them, in one transaction per frame
together with the stream's checkpoint (last frame analysed). Counts are computed from the rows, so a
restart resumes them exactly; ``INSERT OR IGNORE`` on the event id means a replayed frame never
counts twice. Readers (``streamd counts``) open the same file while the daemon runs.

Each stream's analytics state (tracker, line and zone state; see streamd.analytics.state) is stored in the
same transaction as its checkpoint, so a restarted analytics stage resumes from exactly the checkpointed frame.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
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
class ZoneCount:
    visits: int
    exits: int
    mean_dwell_s: float | None


class CountStore:
    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
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

    def record(self, rows: Iterable[CrossingRow], stream: str, source: str, frame: int,
               zone_events: Iterable[ZoneEventRow] = (), state: bytes | None = None,
               clear_state: bool = False) -> tuple[list[CrossingRow], list[ZoneEventRow]]:
        """Store the crossings and zone events of one frame and the stream's checkpoint atomically; returns
        the rows newly added (a replayed id is ignored). ``state``: the stream's analytics state after this
        frame, stored in the same transaction; ``clear_state``: forget the stored state instead."""
        added: list[CrossingRow] = []
        added_zone: list[ZoneEventRow] = []
        with self._db:
            for r in rows:
                cursor = self._db.execute("INSERT OR IGNORE INTO crossings VALUES (?, ?, ?, ?, ?, ?, ?)",
                                          (r.id, r.stream, r.line, r.class_name, r.direction, r.ts, r.frame))
                if cursor.rowcount:
                    added.append(r)
            for z in zone_events:
                if z.kind == "enter":
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO zone_visits VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
                        (z.visit_id, z.stream, z.zone, z.class_name, z.ts, z.frame))
                else:
                    cursor = self._db.execute(
                        "UPDATE zone_visits SET exited_ts=?, dwell_s=? WHERE id=? AND exited_ts IS NULL",
                        (z.ts, z.dwell_s, z.visit_id))
                if cursor.rowcount:
                    added_zone.append(z)
            self._db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, 0) ON CONFLICT(stream) DO UPDATE SET "
                "frame=excluded.frame, source=excluded.source, finished=0",
                (stream, source, frame),
            )
            if state is not None:
                self._db.execute("INSERT OR REPLACE INTO stream_state VALUES (?, ?, ?)", (stream, frame, state))
            elif clear_state:
                self._db.execute("DELETE FROM stream_state WHERE stream=?", (stream,))
        return added, added_zone

    def finish(self, stream: str) -> None:
        """The stream's finite source was processed to its end: the next run starts it afresh."""
        with self._db:
            self._db.execute("UPDATE checkpoints SET finished=1 WHERE stream=?", (stream,))
            self._db.execute("DELETE FROM stream_state WHERE stream=?", (stream,))

    def clear_state(self, stream: str) -> None:
        """Forget a stream's analytics state: its next frames start with fresh state."""
        with self._db:
            self._db.execute("DELETE FROM stream_state WHERE stream=?", (stream,))

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
        where, args = _window("ts", stream, since, until)
        query = (f"SELECT stream, line, class_name, direction, COUNT(*) FROM crossings WHERE {where} "
                 "GROUP BY stream, line, class_name, direction ORDER BY stream, line, class_name, direction")
        return {(s, ln, c, d): n for s, ln, c, d, n in self._db.execute(query, args)}

    def zone_counts(self, stream: str | None = None, since: float | None = None,
                    until: float | None = None) -> dict[tuple[str, str, str], ZoneCount]:
        """(stream, zone, class) -> visits that entered in [since, until), how many of them exited, and
        their mean dwell time."""
        where, args = _window("entered_ts", stream, since, until)
        query = (f"SELECT stream, zone, class_name, COUNT(*), COUNT(exited_ts), AVG(dwell_s) FROM zone_visits "
                 f"WHERE {where} GROUP BY stream, zone, class_name ORDER BY stream, zone, class_name")
        return {(st, zn, c): ZoneCount(n, exits, None if dwell is None else float(dwell))
                for st, zn, c, n, exits, dwell in self._db.execute(query, args)}

    def close(self) -> None:
        self._db.close()


def _window(ts_column: str, stream: str | None, since: float | None,
            until: float | None) -> tuple[str, list[object]]:
    """WHERE clause (column names are ours, values are parameters) for a stream and a [since, until) window."""
    clauses: list[str] = ["1=1"]
    args: list[object] = []
    for clause, value in (("stream=?", stream), (f"{ts_column}>=?", since), (f"{ts_column}<?", until)):
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
