"""Unhealthy intervals, durable, in a table of the count store's SQLite file (so counts and the times they
cannot be trusted travel together). Written by the health stage only; read by ``streamd counts`` and
``/api/counts``. The table is this module's own: the count store's schema is left alone.

An interval (stream, check, start, end) opens when a check leaves ok and closes when it is back; ``end`` is
NULL while it is open. A health stage that restarts closes its own open intervals at its last heartbeat time
(``touch``), so a crash never leaves an interval open for ever.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS health_intervals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    check_name TEXT NOT NULL,
    state TEXT NOT NULL,           -- the worst state reached: warning | failed
    start_ts REAL NOT NULL,
    end_ts REAL,                   -- NULL while open
    seen_ts REAL NOT NULL          -- last time the writer was alive with this interval open
);
CREATE INDEX IF NOT EXISTS health_intervals_by_stream ON health_intervals (stream, start_ts);
"""


@dataclass(frozen=True)
class Unhealthy:
    """Per stream within a window: seconds during which any check was not ok, and which checks."""

    seconds: float
    window_s: float
    checks: tuple[str, ...]

    def describe(self) -> str:
        minutes, total = self.seconds / 60, self.window_s / 60
        digits = 0 if max(minutes, total) >= 10 else 1
        text = (f"{minutes:.{digits}f} of {total:.{digits}f} min unhealthy" if total > 0
                else f"{minutes:.{digits}f} min unhealthy")
        return text + (f" ({', '.join(self.checks)})" if self.checks else "")


class HealthStore:
    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"count store {self.path} does not exist")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=10)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
        self.readonly = readonly

    def close(self) -> None:
        self.db.close()

    def recover(self, now: float | None = None) -> int:
        """Close the intervals an earlier writer left open, at the last time it was seen alive."""
        with self.db:
            cur = self.db.execute("UPDATE health_intervals SET end_ts = seen_ts WHERE end_ts IS NULL")
        return cur.rowcount

    def open(self, stream: str, check: str, state: str, ts: float) -> None:
        with self.db:
            row = self.db.execute("SELECT id FROM health_intervals WHERE stream = ? AND check_name = ? AND end_ts IS "
                                  "NULL", (stream, check)).fetchone()
            if row is None:
                self.db.execute("INSERT INTO health_intervals (stream, check_name, state, start_ts, seen_ts) "
                                "VALUES (?, ?, ?, ?, ?)", (stream, check, state, ts, ts))
            elif state == "failed":
                self.db.execute("UPDATE health_intervals SET state = 'failed', seen_ts = ? WHERE id = ?", (ts, row[0]))

    def close_interval(self, stream: str, check: str, ts: float) -> None:
        with self.db:
            self.db.execute("UPDATE health_intervals SET end_ts = ?, seen_ts = ? WHERE stream = ? AND check_name = ? "
                            "AND end_ts IS NULL", (ts, ts, stream, check))

    def touch(self, ts: float | None = None) -> None:
        """The writer is alive: open intervals last at least until now."""
        with self.db:
            self.db.execute("UPDATE health_intervals SET seen_ts = ? WHERE end_ts IS NULL", (ts or time.time(),))

    def intervals(self, stream: str | None = None, since: float | None = None, until: float | None = None
                  ) -> list[tuple[str, str, str, float, float | None]]:
        """(stream, check, state, start, end or None) overlapping the window."""
        sql = "SELECT stream, check_name, state, start_ts, end_ts FROM health_intervals WHERE 1=1"
        args: list[object] = []
        if stream is not None:
            sql += " AND stream = ?"
            args.append(stream)
        if until is not None:
            sql += " AND start_ts < ?"
            args.append(until)
        if since is not None:
            sql += " AND (end_ts IS NULL OR end_ts > ?)"
            args.append(since)
        try:
            rows = self.db.execute(sql + " ORDER BY start_ts", args).fetchall()
        except sqlite3.OperationalError as exc:  # a store written before camera health existed
            if "no such table" in str(exc):
                return []
            raise
        return [(r[0], r[1], r[2], float(r[3]), None if r[4] is None else float(r[4])) for r in rows]

    def unhealthy(self, since: float | None = None, until: float | None = None, stream: str | None = None,
                  now: float | None = None) -> dict[str, Unhealthy]:
        """Per stream: the union of its unhealthy intervals clipped to the window (all time: from the first)."""
        now = time.time() if now is None else now
        end_of_window = until if until is not None else now
        by_stream: dict[str, list[tuple[float, float, str]]] = {}
        for name, check, _state, start, end in self.intervals(stream, since, until):
            lo = max(start, since) if since is not None else start
            hi = min(end if end is not None else now, end_of_window)
            if hi > lo:
                by_stream.setdefault(name, []).append((lo, hi, check))
        out: dict[str, Unhealthy] = {}
        for name, spans in by_stream.items():
            spans.sort()
            total, cur_lo, cur_hi = 0.0, spans[0][0], spans[0][1]
            for lo, hi, _ in spans[1:]:
                if lo > cur_hi:
                    total += cur_hi - cur_lo
                    cur_lo, cur_hi = lo, hi
                else:
                    cur_hi = max(cur_hi, hi)
            total += cur_hi - cur_lo
            window_s = end_of_window - since if since is not None else 0.0  # all time: no window to compare with
            out[name] = Unhealthy(seconds=round(total, 1), window_s=round(window_s, 1),
                                  checks=tuple(sorted({c for _, _, c in spans})))
        return out
