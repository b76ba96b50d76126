"""Durable count store: idempotent inserts, checkpoints and resume, time windows and shifts."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from streamd.analytics.store import CountStore, CrossingRow, ShiftSchedule, ZoneCount, ZoneEventRow, hour_window


def row(i: str, ts: float, cls: str = "car", direction: str = "in", stream: str = "cam") -> CrossingRow:
    return CrossingRow(id=i, stream=stream, line="south", class_name=cls, direction=direction, ts=ts, frame=int(ts))


def test_replayed_events_count_once(tmp_path: Path) -> None:
    store = CountStore(tmp_path / "c.db")
    assert [r.id for r in store.record([row("a", 1), row("b", 2)], "cam", "src", 10)[0]] == ["a", "b"]
    assert [r.id for r in store.record([row("b", 2), row("c", 3, cls="bus")], "cam", "src", 11)[0]] == ["c"]
    assert store.counts() == {("cam", "south", "bus", "in"): 1, ("cam", "south", "car", "in"): 2}
    assert store.counts(since=2, until=3) == {("cam", "south", "car", "in"): 1}
    store.close()


def test_counts_survive_reopening_and_are_readable_while_written(tmp_path: Path) -> None:
    writer = CountStore(tmp_path / "c.db")
    writer.record([row("a", 1)], "cam", "src", 5)
    reader = CountStore(tmp_path / "c.db", readonly=True)
    assert reader.counts("cam") == {("cam", "south", "car", "in"): 1}
    writer.record([row("b", 2, direction="out")], "cam", "src", 6)
    assert sum(reader.counts("cam").values()) == 2
    writer.close()
    reader.close()
    assert sum(CountStore(tmp_path / "c.db").counts().values()) == 2


def test_resume_frame_only_for_an_unfinished_run_of_the_same_source(tmp_path: Path) -> None:
    store = CountStore(tmp_path / "c.db")
    assert store.resume_frame("cam", "file-v1") == 0
    store.record([], "cam", "file-v1", 41)
    assert store.resume_frame("cam", "file-v1") == 42
    assert store.resume_frame("cam", "file-v2") == 0  # the file changed: start it over
    store.finish("cam")
    assert store.resume_frame("cam", "file-v1") == 0  # it ended last time: a new run starts afresh
    store.record([], "cam", "file-v1", 3)
    assert store.resume_frame("cam", "file-v1") == 4


def test_readonly_store_that_does_not_exist_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has the daemon run yet"):
        CountStore(tmp_path / "missing.db", readonly=True)


BERLIN = "Europe/Berlin"


@pytest.mark.parametrize(
    ("local", "start", "end"),
    [
        ("2026-03-10 07:00", "2026-03-10 06:00", "2026-03-10 14:00"),
        ("2026-03-10 13:59", "2026-03-10 06:00", "2026-03-10 14:00"),
        ("2026-03-10 23:30", "2026-03-10 22:00", "2026-03-11 06:00"),
        ("2026-03-11 02:00", "2026-03-10 22:00", "2026-03-11 06:00"),  # night shift crosses midnight
        ("2026-03-29 03:30", "2026-03-28 22:00", "2026-03-29 06:00"),  # DST switch inside the night shift
    ],
)
def test_shift_windows_in_local_time(local: str, start: str, end: str) -> None:
    tz = ZoneInfo(BERLIN)
    schedule = ShiftSchedule.parse(["14:00", "06:00", "22:00"], BERLIN)
    at = datetime.fromisoformat(local).replace(tzinfo=tz)
    got = schedule.window(at)
    assert got == (datetime.fromisoformat(start).replace(tzinfo=tz), datetime.fromisoformat(end).replace(tzinfo=tz))
    assert got[0] <= at < got[1]


def test_hour_window() -> None:
    at = datetime(2026, 5, 1, 10, 42, 7, tzinfo=timezone.utc)
    start, end = hour_window(at, ZoneInfo("UTC"))
    assert (start.hour, start.minute, (end - start).total_seconds()) == (10, 0, 3600)


def zone_event(visit: str, kind: str, ts: float, cls: str = "person", dwell: float | None = None) -> ZoneEventRow:
    return ZoneEventRow(id=visit if kind == "enter" else f"{visit}/exit", visit_id=visit, stream="cam", zone="door",
                        class_name=cls, kind=kind, ts=ts, frame=int(ts), dwell_s=dwell)


def test_zone_visits_replay_once_and_give_dwell(tmp_path: Path) -> None:
    store = CountStore(tmp_path / "c.db")
    _, added = store.record([], "cam", "src", 1, [zone_event("v1", "enter", 1.0), zone_event("v2", "enter", 2.0)])
    assert [z.id for z in added] == ["v1", "v2"]
    # a replay of the same frames after a restart adds nothing; the exits land once
    _, added = store.record([], "cam", "src", 2, [zone_event("v1", "enter", 1.0), zone_event("v1", "exit", 5.0, dwell=4.0)])
    assert [z.id for z in added] == ["v1/exit"]
    _, added = store.record([], "cam", "src", 3, [zone_event("v1", "exit", 5.0, dwell=4.0)])
    assert added == []
    assert store.zone_counts() == {("cam", "door", "person"): ZoneCount(visits=2, exits=1, mean_dwell_s=4.0)}
    assert store.zone_counts(since=1.5) == {("cam", "door", "person"): ZoneCount(visits=1, exits=0, mean_dwell_s=None)}
    store.close()


def test_stream_state_is_stored_with_its_checkpoint(tmp_path: Path) -> None:
    store = CountStore(tmp_path / "counts.db")
    store.record([], "cam", "src", 10, state=b"after-10")
    assert store.stream_state("cam") == ("src", 10, b"after-10")
    assert store.stream_state("other") is None
    store.record([], "cam", "src", 11)  # a checkpoint without state: the stored one is of an older frame
    assert store.stream_state("cam") is None
    store.record([], "cam", "src", 12, state=b"after-12")
    store.close()
    reopened = CountStore(tmp_path / "counts.db")
    assert reopened.stream_state("cam") == ("src", 12, b"after-12")
    reopened.record([], "cam", "src", 12, clear_state=True)
    assert reopened.stream_state("cam") is None
    reopened.record([], "cam", "src", 13, state=b"after-13")
    reopened.finish("cam")  # a finished file starts afresh
    assert reopened.stream_state("cam") is None
    reopened.record([], "cam", "src", 14, state=b"after-14")
    reopened.clear_state("cam")
    assert reopened.stream_state("cam") is None
