"""The evidence index: a small SQLite file (WAL) in the evidence folder, event id -> files, sizes and times.

Written only by the evidence writer's worker thread (sinks process); read by the API and the export, which
look files up here by event id and never build a path from an id. Paths are relative to the evidence folder.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    event_type TEXT NOT NULL,      -- line_crossing | zone_event
    name TEXT NOT NULL,            -- line or zone
    ts REAL NOT NULL,              -- Unix time of the event's frame
    frame INTEGER NOT NULL,
    track_id INTEGER NOT NULL,
    class_name TEXT NOT NULL,
    box TEXT,                      -- [x1, y1, x2, y2] of the object in source pixels (JSON)
    crop_box TEXT,                 -- the crop's rectangle in source pixels (JSON)
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_stream_ts ON events (stream, ts);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,         -- relative to the evidence folder
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,            -- snapshot | crop | clip
    bytes INTEGER NOT NULL,
    created REAL NOT NULL,
    start_s REAL,                  -- clips: stream time covered
    end_s REAL
);
CREATE INDEX IF NOT EXISTS files_by_stream_created ON files (stream, created);
CREATE TABLE IF NOT EXISTS refs (
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (event_id, kind)
);
CREATE INDEX IF NOT EXISTS refs_by_path ON refs (path);
"""

KINDS = ("snapshot", "crop", "clip")


@dataclass(frozen=True)
class EventEvidence:
    event_id: str
    stream: str
    event_type: str
    name: str
    ts: float
    frame: int
    track_id: int
    class_name: str
    box: list[float] | None = None
    crop_box: list[float] | None = None
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # kind -> (relative path, bytes)


@dataclass(frozen=True)
class StoredFile:
    path: str
    stream: str
    kind: str
    bytes: int
    created: float


class EvidenceIndex:
    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"evidence index {self.path} does not exist (no evidence written yet)")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        else:
            self._db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    # --- writer ----------------------------------------------------------------------------------------

    def add_event(self, ev: EventEvidence, created: float | None = None) -> None:
        """Record an event and its files (each file once, however many events it documents)."""
        now = time.time() if created is None else created
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ev.event_id, ev.stream, ev.event_type, ev.name, ev.ts, ev.frame, ev.track_id, ev.class_name,
                 json.dumps(ev.box) if ev.box is not None else None,
                 json.dumps(ev.crop_box) if ev.crop_box is not None else None, now))
            for kind, (path, size) in ev.files.items():
                self._add_file(path, ev.stream, kind, size, now)
                self._db.execute("INSERT OR REPLACE INTO refs VALUES (?, ?, ?)", (ev.event_id, kind, path))

    def add_clip(self, path: str, stream: str, size: int, start_s: float, end_s: float,
                 event_ids: Iterable[str], created: float | None = None) -> None:
        now = time.time() if created is None else created
        with self._db:
            self._add_file(path, stream, "clip", size, now, start_s, end_s)
            for event_id in event_ids:
                self._db.execute("INSERT OR REPLACE INTO refs VALUES (?, 'clip', ?)", (event_id, path))

    def _add_file(self, path: str, stream: str, kind: str, size: int, created: float,
                  start_s: float | None = None, end_s: float | None = None) -> None:
        self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (path, stream, kind, size, created, start_s, end_s))

    def usage(self, stream: str) -> tuple[int, int]:
        """(files, bytes) of a stream."""
        n, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM files WHERE stream=?",
                                    (stream,)).fetchone()
        return int(n), int(total)

    def streams(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT stream FROM files ORDER BY stream")]

    def expired(self, stream: str, max_age_s: float, max_bytes: int, now: float | None = None) -> list[StoredFile]:
        """Files of ``stream`` retention removes, oldest first: older than ``max_age_s``, then the oldest
        until the rest fit ``max_bytes``."""
        now = time.time() if now is None else now
        rows = [StoredFile(*r) for r in self._db.execute(
            "SELECT path, stream, kind, bytes, created FROM files WHERE stream=? ORDER BY created, path", (stream,))]
        total = sum(f.bytes for f in rows)
        out = []
        for f in rows:
            if f.created < now - max_age_s or total > max_bytes:
                out.append(f)
                total -= f.bytes
            else:
                break
        return out

    def forget(self, paths: Sequence[str]) -> None:
        """Drop files (already deleted from disk) and the events left with no file."""
        with self._db:
            for path in paths:
                self._db.execute("DELETE FROM files WHERE path=?", (path,))
                self._db.execute("DELETE FROM refs WHERE path=?", (path,))
            self._db.execute("DELETE FROM events WHERE event_id NOT IN (SELECT event_id FROM refs)")

    # --- readers -------------------------------------------------------------------------------------

    def get(self, event_id: str) -> EventEvidence | None:
        found = self.many([event_id])
        return found.get(event_id)

    def many(self, event_ids: Sequence[str]) -> dict[str, EventEvidence]:
        out: dict[str, EventEvidence] = {}
        ids = list(dict.fromkeys(event_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            files: dict[str, dict[str, tuple[str, int]]] = {}
            for event_id, kind, path, size in self._db.execute(
                    f"SELECT r.event_id, r.kind, r.path, f.bytes FROM refs r JOIN files f ON f.path = r.path "
                    f"WHERE r.event_id IN ({marks})", chunk):
                files.setdefault(event_id, {})[kind] = (path, int(size))
            for row in self._db.execute(
                    f"SELECT event_id, stream, event_type, name, ts, frame, track_id, class_name, box, crop_box "
                    f"FROM events WHERE event_id IN ({marks})", chunk):
                out[row[0]] = EventEvidence(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                                            box=json.loads(row[8]) if row[8] else None,
                                            crop_box=json.loads(row[9]) if row[9] else None,
                                            files=files.get(row[0], {}))
        return out

    def close(self) -> None:
        self._db.close()
