"""`streamd events export CONFIG --since ... --until ... --out DIR`: the events of a time window as CSV and JSON,
with their snapshots, crops and clips copied beside them (what a customer asks for when a count is disputed)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from streamd.config.models import DaemonConfig
from streamd.evidence.paths import evidence_dir_of
from streamd.evidence.query import KIND_FILES, EventQuery

CSV_FIELDS = ["id", "type", "stream", "line", "zone", "direction", "event", "class_name", "track_id", "frame", "ts",
              "time_utc", "dwell_s", "snapshot_file", "crop_file", "clip_file"]


def export_events(config: DaemonConfig, out: Path, since: float | None, until: float | None,
                  stream: str | None = None) -> int:
    """Write ``events.csv``, ``events.json`` and ``files/`` under ``out``; returns the number of events."""
    from datetime import datetime, timezone

    out.mkdir(parents=True, exist_ok=True)
    files = out / "files"
    query = EventQuery(config.counts.path, evidence_dir_of(config))
    events: list[dict[str, Any]] = []
    try:
        cursor = None
        while True:
            page = query.page(stream=stream, since=since, until=until, limit=1000, cursor=cursor, oldest_first=True)
            for event in page.events:
                for kind, name in KIND_FILES.items():
                    source = query.file(event["id"], kind) if event.get(kind) else None
                    event[f"{kind}_file"] = None
                    if source is not None:
                        target = files / event["stream"] / source.name  # file names come from the index
                        target.parent.mkdir(parents=True, exist_ok=True)
                        if not target.exists():
                            shutil.copy2(source, target)
                        event[f"{kind}_file"] = str(target.relative_to(out))
                event["time_utc"] = datetime.fromtimestamp(event["ts"], timezone.utc).isoformat()
                events.append(event)
            cursor = page.next_cursor
            if cursor is None:
                break
    finally:
        query.close()
    (out / "events.json").write_text(json.dumps(events, indent=1))
    with open(out / "events.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for event in events:
            writer.writerow(event)
    return len(events)
