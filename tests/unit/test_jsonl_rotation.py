"""streamd.sinks.jsonl: size-based rotation keeps N files, never splits a line, loses no line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamd.config.models import JsonlSinkConfig
from streamd.ipc.messages import LineCrossing, TrackedFrame
from streamd.sinks.jsonl import JsonlSink


def crossing(i: int) -> LineCrossing:
    return LineCrossing(id=f"cam/run/exit/{i}/{i}/in", stream="cam", line="exit", direction="in", track_id=i,
                        class_id=0, class_name="box", frame=i, pts_s=i / 30, ts=1.7e9 + i, t_decoded_ns=0,
                        t_analysed_ns=0)


def payload(i: int, pad: int = 0) -> bytes:
    return json.dumps({"type": "line_crossing", "id": f"e{i}", "pad": "x" * pad}).encode()


def lines_of(path: Path) -> list[dict]:
    text = path.read_bytes()
    assert text.endswith(b"\n") or not text, f"{path} ends in the middle of a line"
    return [json.loads(line) for line in text.splitlines()]


def test_rotates_before_the_limit_keeps_n_files_and_drops_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=str(path), max_bytes=1024, keep_files=3))
    n = 200
    for i in range(n):
        sink.write(crossing(i), payload(i, pad=40))
    sink.close()
    kept = [path, *sink.rotated_paths()]
    assert [p.name for p in sorted(tmp_path.iterdir())] == sorted(p.name for p in kept)
    for p in kept:
        assert p.stat().st_size <= 1024
    ids = [row["id"] for p in reversed(kept) for row in lines_of(p)]
    # the kept files hold the newest lines, contiguous and in order; only whole older files were dropped
    assert ids == [f"e{i}" for i in range(n - len(ids), n)]
    assert sink.rotations > 3


def test_a_line_longer_than_the_limit_gets_its_own_file_unsplit(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=str(path), max_bytes=1024, keep_files=2))
    sink.write(crossing(0), payload(0))
    sink.write(crossing(1), payload(1, pad=3000))
    sink.write(crossing(2), payload(2))
    sink.close()
    assert [r["id"] for r in lines_of(path.with_name("events.jsonl.2"))] == ["e0"]
    assert [r["id"] for r in lines_of(path.with_name("events.jsonl.1"))] == ["e1"]
    assert [r["id"] for r in lines_of(path)] == ["e2"]


def test_appends_to_an_existing_file_and_counts_its_size(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(payload(-1, pad=900) + b"\n")
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=str(path), max_bytes=1024, keep_files=1))
    sink.write(crossing(0), payload(0, pad=200))
    sink.close()
    assert [r["id"] for r in lines_of(path.with_name("events.jsonl.1"))] == ["e-1"]
    assert [r["id"] for r in lines_of(path)] == ["e0"]


def test_without_max_bytes_it_never_rotates_and_skips_tracks_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=str(path)))
    tracks = TrackedFrame(stream="cam", frame=0, pts_s=0, ts=0, tracks=[], t_decoded_ns=0, t_analysed_ns=0)
    for i in range(300):
        sink.write(crossing(i), payload(i, pad=100))
        sink.write(tracks, b'{"type":"tracks"}')
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl"]
    assert len(lines_of(path)) == 300


@pytest.mark.parametrize(("field", "value"), [("max_bytes", 100), ("keep_files", 0)])
def test_config_bounds(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        JsonlSinkConfig(type="jsonl", path="x.jsonl", **{field: value})
