"""Events from the durable count store (crossings and zone visits) joined with the evidence index: what the API's
``/api/events`` and ``streamd events export`` serve. Read-only; SQLite count store (``counts.path``)."""

from __future__ import annotations

import base64
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamd.evidence.index import EvidenceIndex, EventEvidence
from streamd.evidence.paths import INDEX_FILE
from streamd.evidence.writer import event_url

TYPES = ("line_crossing", "zone_event")
MAX_LIMIT = 1000
KIND_FILES = {"snapshot": "snapshot.jpg", "crop": "crop.jpg", "clip": "clip.mp4"}

_EVENTS = """
SELECT id, 'line_crossing' AS type, stream, line AS name, class_name, direction AS detail, ts, frame, NULL AS dwell_s
  FROM crossings
UNION ALL
SELECT id, 'zone_event', stream, zone, class_name, 'enter', entered_ts, enter_frame, NULL FROM zone_visits
UNION ALL
SELECT id || '/exit', 'zone_event', stream, zone, class_name, 'exit', exited_ts, NULL, dwell_s
  FROM zone_visits WHERE exited_ts IS NOT NULL
"""


class QueryError(ValueError):
    """A bad parameter: the API answers 400 with this message."""


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    next_cursor: str | None


def _cursor(ts: float, event_id: str) -> str:
    return base64.urlsafe_b64encode(f"{ts!r}|{event_id}".encode()).decode()


def _parse_cursor(cursor: str) -> tuple[float, str]:
    try:
        ts, _, event_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return float(ts), event_id
    except (ValueError, UnicodeDecodeError):
        raise QueryError("cursor is not one this API returned (use next_cursor of the previous page)") from None


class EventQuery:
    """Opened per request (or per export); ``close`` it. Missing files mean no events or no evidence yet."""

    def __init__(self, counts_path: str | Path, evidence_root: Path):
        self.evidence_root = evidence_root
        path = Path(counts_path)
        self._db = (sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
                    if path.is_file() else None)
        try:
            self._index: EvidenceIndex | None = EvidenceIndex(evidence_root / INDEX_FILE, readonly=True)
        except (FileNotFoundError, sqlite3.Error):
            self._index = None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        if self._index is not None:
            self._index.close()

    def page(self, stream: str | None = None, type_: str | None = None, since: float | None = None,
             until: float | None = None, limit: int = 100, cursor: str | None = None,
             oldest_first: bool = False) -> Page:
        if type_ is not None and type_ not in TYPES:
            raise QueryError(f"type must be one of {', '.join(TYPES)}")
        if not 1 <= limit <= MAX_LIMIT:
            raise QueryError(f"limit must be 1..{MAX_LIMIT}")
        if self._db is None:
            return Page([], None)
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (("stream = ?", stream), ("type = ?", type_), ("ts >= ?", since), ("ts < ?", until)):
            if value is not None:
                where.append(clause)
                args.append(value)
        order = "ASC" if oldest_first else "DESC"
        if cursor is not None:
            ts, event_id = _parse_cursor(cursor)
            op = ">" if oldest_first else "<"
            where.append(f"(ts {op} ? OR (ts = ? AND id {op} ?))")
            args += [ts, ts, event_id]
        sql = (f"SELECT * FROM ({_EVENTS}) {'WHERE ' + ' AND '.join(where) if where else ''} "
               f"ORDER BY ts {order}, id {order} LIMIT ?")
        try:
            rows = self._db.execute(sql, [*args, limit + 1]).fetchall()
        except sqlite3.OperationalError as exc:  # a store without these tables yet
            if "no such table" in str(exc):
                return Page([], None)
            raise
        more = len(rows) > limit
        rows = rows[:limit]
        evidence = self._index.many([r[0] for r in rows]) if self._index is not None and rows else {}
        events = [self._event(row, evidence.get(row[0])) for row in rows]
        return Page(events, _cursor(rows[-1][6], rows[-1][0]) if more else None)

    def get(self, event_id: str) -> dict[str, Any] | None:
        if self._db is None:
            return None
        try:
            row = self._db.execute(f"SELECT * FROM ({_EVENTS}) WHERE id = ?", (event_id,)).fetchone()
        except sqlite3.OperationalError:
            return None
        if row is None:
            return None
        evidence = self._index.get(event_id) if self._index is not None else None
        return self._event(row, evidence, detail=True)

    def file(self, event_id: str, kind: str) -> Path | None:
        """The event's file of ``kind`` as the index names it, or None; never a path made from the id."""
        if kind not in KIND_FILES or self._index is None:
            return None
        found = self._index.get(event_id)
        if found is None or kind not in found.files:
            return None
        root = self.evidence_root.resolve()
        path = (root / found.files[kind][0]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    @staticmethod
    def _event(row: tuple[Any, ...], evidence: EventEvidence | None, detail: bool = False) -> dict[str, Any]:
        event_id, type_, stream, name, class_name, detail_value, ts, frame, dwell_s = row
        out: dict[str, Any] = {"id": event_id, "type": type_, "stream": stream, "class_name": class_name,
                               "ts": ts}
        if type_ == "line_crossing":
            out.update(line=name, direction=detail_value)
        else:
            out.update(zone=name, event=detail_value)
            if dwell_s is not None:
                out["dwell_s"] = dwell_s
        out["frame"] = frame if frame is not None else (evidence.frame if evidence else None)
        out["track_id"] = evidence.track_id if evidence else None
        links = {"self": event_url(event_id, "")[:-1]}
        for kind, file_name in KIND_FILES.items():
            out[kind] = event_url(event_id, file_name) if evidence and kind in evidence.files else None
            if out[kind]:
                links[kind] = out[kind]
        if detail:
            out["links"] = links
            if evidence is not None:
                out["files"] = {kind: {"bytes": size} for kind, (_, size) in evidence.files.items()}
                out["box"], out["crop_box"] = evidence.box, evidence.crop_box
        return out
