"""The evidence writer as a sink: frames copied from the ring at their TrackedFrame, misses counted, files and
index written off the sinks' thread, retention, and a broken folder that degrades evidence only."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamd.config.models import EvidenceConfig, PipelineConfig
from streamd.evidence.index import EvidenceIndex
from streamd.evidence.writer import EvidenceShared, EvidenceSink, evidence_accepts
from streamd.ipc.messages import LineCrossing, Track, TrackedFrame, ZoneEvent
from streamd.ipc.ring import FrameRing, unlink_ring
from streamd.runtime.params import StreamEvidence
from streamd.sinks.guard import GuardedSink
from tests.sink_helpers import wait_until

W, H = 320, 240
BOX = (100.0, 60.0, 180.0, 140.0)


def pipeline(**evidence: object) -> PipelineConfig:
    return PipelineConfig(model="m.onnx", lines=[{"name": "exit", "points": [[160, 0], [160, 240]]}],
                          zones=[{"name": "dock", "polygon": [[0, 0], [100, 0], [100, 100]]}],
                          evidence=EvidenceConfig(snapshots=True, **evidence))


@pytest.fixture
def ring():
    name = f"streamd-test-evidence-{os.getpid()}-{time.monotonic_ns()}"
    ring = FrameRing.create(name, 4, W, H)
    yield ring
    ring.close()
    unlink_ring(name)


def frame_image(i: int) -> np.ndarray:
    image = np.full((H, W, 3), 40, np.uint8)
    x1, y1, x2, y2 = (int(v) for v in BOX)
    image[y1:y2, x1:x2] = (0, 200, 0)  # the object
    cv2.putText(image, str(i), (10, 200), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
    return image


def crossing(frame: int, track: int = 7) -> LineCrossing:
    return LineCrossing(id=f"cam/run/exit/{frame}/{track}/in", stream="cam", line="exit", direction="in",
                        track_id=track, class_id=0, class_name="box", frame=frame, pts_s=frame / 25, ts=time.time(),
                        t_decoded_ns=0, t_analysed_ns=0)


def tracked(ring: FrameRing, seq: int, frame: int, track: int = 7) -> TrackedFrame:
    return TrackedFrame(stream="cam", frame=frame, pts_s=frame / 25, ts=time.time(),
                        tracks=[Track(track, 0, "box", 0.9, BOX)], t_decoded_ns=0, t_analysed_ns=0, seq=seq,
                        ring=ring.name)


def make_sink(root: Path, **evidence: object) -> tuple[EvidenceSink, EvidenceShared]:
    shared = EvidenceShared()
    return EvidenceSink(root, {"cam": StreamEvidence(pipeline=pipeline(**evidence))}, shared), shared


def test_snapshot_and_crop_written_and_indexed(ring: FrameRing, tmp_path: Path) -> None:
    sink, shared = make_sink(tmp_path)
    seq = ring.write(frame_image(5), 5, 0.2, time.time(), 0)
    event = crossing(5)
    sink.write(event, b"")
    sink.write(tracked(ring, seq, 5), b"")
    ring.write(frame_image(6), 6, 0.24, time.time(), 0)  # the decoder goes on: the copy was already taken
    wait_until(lambda: shared.snapshot().get("cam", {}).get("snapshots") == 1, what="snapshot written")
    sink.flush()
    sink.close()
    index = EvidenceIndex(tmp_path / "index.db", readonly=True)
    found = index.get(event.id)
    assert found is not None and set(found.files) == {"snapshot", "crop"}
    assert found.crop_box is not None
    x1, y1, x2, y2 = found.crop_box
    assert x1 <= BOX[0] and y1 <= BOX[1] and x2 >= BOX[2] and y2 >= BOX[3] and x2 - x1 <= 80 * 1.1 + 2
    crop = cv2.imread(str(tmp_path / found.files["crop"][0]))
    assert crop.shape[:2] == (y2 - y1, x2 - x1)
    assert crop[crop.shape[0] // 2, crop.shape[1] // 2, 1] > 150  # the green object, from frame 5
    snapshot = cv2.imread(str(tmp_path / found.files["snapshot"][0]))
    assert snapshot.shape == (H, W, 3)
    assert found.files["snapshot"][1] == (tmp_path / found.files["snapshot"][0]).stat().st_size
    records = shared.take_records()
    assert [r.id for r in records] == [event.id]
    assert records[0].snapshot == "/api/events/cam%2Frun%2Fexit%2F5%2F7%2Fin/snapshot.jpg"


def test_overwritten_slot_and_missing_frame_are_counted(ring: FrameRing, tmp_path: Path) -> None:
    sink, shared = make_sink(tmp_path)
    seq = ring.write(frame_image(1), 1, 0.04, time.time(), 0)
    for i in range(2, 2 + ring.n_slots):  # the writer laps the ring before the TrackedFrame arrives
        ring.write(frame_image(i), i, i / 25, time.time(), 0)
    sink.write(crossing(1), b"")
    sink.write(tracked(ring, seq, 1), b"")
    sink.write(crossing(20), b"")  # its frame never comes: the next frame's TrackedFrame settles it
    seq = ring.write(frame_image(21), 21, 21 / 25, time.time(), 0)
    sink.write(tracked(ring, seq, 21), b"")
    counters = shared.snapshot()["cam"]
    assert counters["missed_overwritten"] == 1 and counters["missed_no_frame"] == 1
    lost_exit = ZoneEvent(id="cam/run/dock/3/7/exit", stream="cam", zone="dock", event="exit", track_id=7, class_id=0,
                          class_name="box", frame=3, pts_s=0.1, ts=time.time(), dwell_s=1.0, lost=True, occupancy={},
                          t_decoded_ns=0, t_analysed_ns=0)
    sink.write(lost_exit, b"")
    assert shared.snapshot()["cam"]["skipped_lost"] == 1
    sink.close()


def test_events_wait_a_bounded_time(ring: FrameRing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamd.evidence.writer as writer

    monkeypatch.setattr(writer, "WAIT_S", 0.05)
    sink, shared = make_sink(tmp_path)
    sink.write(crossing(3), b"")
    time.sleep(0.1)
    sink.flush()
    assert shared.snapshot()["cam"]["missed_no_frame"] == 1
    sink.close()


def test_retention_by_bytes_and_age(ring: FrameRing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamd.evidence.writer as writer

    monkeypatch.setattr(writer, "RETENTION_EVERY_S", 0.0)
    sink, shared = make_sink(tmp_path, max_bytes=1 << 16)
    for i in range(1, 40):
        seq = ring.write(np.random.default_rng(i).integers(0, 255, (H, W, 3), np.uint8), i, i / 25, time.time(), 0)
        sink.write(crossing(i), b"")
        sink.write(tracked(ring, seq, i), b"")
        wait_until(lambda: shared.snapshot().get("cam", {}).get("snapshots") == i, what=f"snapshot {i}")
    wait_until(lambda: shared.snapshot()["cam"]["deleted"] > 0, what="retention")
    sink.close()
    index = EvidenceIndex(tmp_path / "index.db", readonly=True)
    files, size = index.usage("cam")
    assert size <= 1 << 16
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cam").rglob("*.jpg"))
    assert on_disk == size
    assert index.get(crossing(1).id) is None and index.get(crossing(39).id) is not None  # oldest went first
    # by age: everything older than max_age_s goes at the next pass
    aged, shared = make_sink(tmp_path, max_age_s=0.01)
    wait_until(lambda: shared.snapshot().get("cam", {}).get("deleted", 0) >= files, what="age retention")
    aged.close()
    assert not list((tmp_path / "cam").rglob("*.jpg"))


def test_unwritable_folder_marks_evidence_down_and_counts(tmp_path: Path) -> None:
    blocker = tmp_path / "evidence"
    blocker.write_text("a file where the folder should be")
    shared = EvidenceShared()
    guard = GuardedSink("evidence", lambda: EvidenceSink(blocker, {"cam": StreamEvidence(pipeline=pipeline())}, shared),
                        evidence_accepts)
    assert guard.health().state == "down" and guard.health().error
    guard.write(crossing(1), b"")
    assert guard.health().dropped == 1


def test_a_failing_disk_is_reported_by_flush(ring: FrameRing, tmp_path: Path) -> None:
    sink, shared = make_sink(tmp_path / "ev")

    def broken(path: Path, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    sink._write = broken  # type: ignore[method-assign]
    seq = ring.write(frame_image(2), 2, 0.08, time.time(), 0)
    sink.write(crossing(2), b"")
    sink.write(tracked(ring, seq, 2), b"")
    wait_until(lambda: shared.snapshot().get("cam", {}).get("failed") == 1, what="failure counted")
    with pytest.raises(OSError, match="No space"):
        sink.flush()
    assert sink.discard() == 0
