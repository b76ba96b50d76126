"""tools.frames on generated clips: sampling, near-duplicate removal, scene selection, manifest, redaction."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest

from tests.conftest import make_clip
from tests.tools import needs
from tools.frames.__main__ import main


@pytest.fixture(autouse=True)
def _tools_extra() -> None:
    needs("imagehash")


def held_clip(path: Path, scenes: int = 4, repeat: int = 8, fps: int = 10, size: tuple[int, int] = (160, 120)) -> Path:
    """``scenes`` distinct random textures, each held for ``repeat`` frames (then re-encoded, so near-identical)."""
    rng = np.random.default_rng(0)
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for _ in range(scenes):
            blocks = rng.integers(0, 256, (height // 20, width // 20, 3), dtype=np.uint8)
            image = np.kron(blocks, np.ones((20, 20, 1), np.uint8))
            for _ in range(repeat):
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_dedupe_keeps_one_frame_per_held_scene(tmp_path: Path) -> None:
    clip = held_clip(tmp_path / "held.mp4")
    out = tmp_path / "out"
    assert main([str(clip), "--out", str(out), "--dedupe", "6"]) == 0
    rows = read_manifest(out / "manifest.csv")
    assert [int(r["frame_index"]) for r in rows] == [0, 8, 16, 24]
    assert sorted(p.name for p in out.glob("*.jpg")) == [r["file"] for r in rows]
    assert all(r["source"] == str(clip) for r in rows)
    assert [float(r["timestamp_s"]) for r in rows] == pytest.approx([0.0, 0.8, 1.6, 2.4], abs=1e-3)


def test_without_dedupe_every_frame_is_written(tmp_path: Path) -> None:
    clip = held_clip(tmp_path / "held.mp4", scenes=2, repeat=5)
    assert main([str(clip), "--out", str(tmp_path / "all"), "--format", "png"]) == 0
    assert len(list((tmp_path / "all").glob("*.png"))) == 10


def test_scene_change_selection_and_max(tmp_path: Path) -> None:
    clip = held_clip(tmp_path / "held.mp4", scenes=5, repeat=6)
    out = tmp_path / "scene"
    assert main([str(clip), "--out", str(out), "--scene", "0.05", "--max", "3", "--manifest", "m.jsonl"]) == 0
    rows = [json.loads(line) for line in (out / "m.jsonl").read_text().splitlines()]
    assert [r["frame_index"] for r in rows] == [0, 6, 12]
    assert all(r["scene_score"] >= 0.05 for r in rows)


def test_every_and_fps(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "moving.mp4", frames=60, fps=30)
    assert main([str(clip), "--out", str(tmp_path / "every"), "--every", "10"]) == 0
    assert [int(r["frame_index"]) for r in read_manifest(tmp_path / "every" / "manifest.csv")] == [0, 10, 20, 30, 40, 50]
    assert main([str(clip), "--out", str(tmp_path / "fps"), "--fps", "5"]) == 0
    assert [int(r["frame_index"]) for r in read_manifest(tmp_path / "fps" / "manifest.csv")] == [0, 6, 12, 18, 24, 30,
                                                                                                 36, 42, 48, 54]


def test_bad_sources_fail_clearly_without_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == 1
    assert "missing.mp4 does not exist" in capsys.readouterr().err
    assert main(["rtsp://admin:hunter2@127.0.0.1:9/live", "--out", str(tmp_path / "o"), "--max", "1"]) == 1
    err = capsys.readouterr().err
    assert "admin:***@127.0.0.1" in err and "hunter2" not in err


def test_rerun_into_a_used_out_is_refused_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = make_clip(tmp_path / "moving.mp4", frames=60, fps=30)
    out = tmp_path / "out"
    assert main([str(clip), "--out", str(out), "--every", "2"]) == 0
    assert len(list(out.glob("*.jpg"))) == 30
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([str(clip), "--out", str(out), "--every", "20"]) == 1
    err = capsys.readouterr().err
    assert f"--out {out} is not empty (30 images and 1 manifest of an earlier run)" in err and "--overwrite" in err
    assert len(list(out.glob("*.jpg"))) == 30 and len(read_manifest(out / "manifest.csv")) == 30  # untouched

    assert main([str(clip), "--out", str(out), "--every", "20", "--overwrite", "--manifest", "m.jsonl"]) == 0
    assert "deleted 30 images of the earlier run" in capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "m.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in out.glob("*.jpg")) == [r["file"] for r in rows] == \
        ["moving_000000.jpg", "moving_000020.jpg", "moving_000040.jpg"]
    assert not (out / "manifest.csv").exists()  # the old manifest went with its images
    assert (out / "notes.txt").read_text() == "mine"  # what the tool did not write stays


def test_overwrite_keeps_the_old_images_when_the_source_cannot_open(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "moving.mp4", frames=10, fps=10)
    out = tmp_path / "out"
    assert main([str(clip), "--out", str(out)]) == 0
    assert main([str(tmp_path / "typo.mp4"), "--out", str(out), "--overwrite"]) == 1
    assert len(list(out.glob("*.jpg"))) == 10 and len(read_manifest(out / "manifest.csv")) == 10


@pytest.mark.parametrize(("args", "message"), [
    (["--scene", "2"], "argument --scene: 2.0 is outside 0..1"),
    (["--scene", "-0.1"], "argument --scene: -0.1 is outside 0..1"),
    (["--dedupe", "65"], "argument --dedupe: 65 is outside 0..64"),
])
def test_out_of_range_thresholds_are_argparse_errors(args: list[str], message: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["video.mp4", "--out", str(tmp_path / "o"), *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_start_past_the_end_warns_with_the_length(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = make_clip(tmp_path / "moving.mp4", frames=60, fps=30)
    assert main([str(clip), "--out", str(tmp_path / "late"), "--start", "100"]) == 1
    err = capsys.readouterr().err
    assert f"warning: --start 100 s is past the end of {clip} (2.00 s long)" in err
    assert not (tmp_path / "late").exists()
    assert main([str(clip), "--out", str(tmp_path / "ok"), "--start", "1.5"]) == 0  # inside: frames 45..59
    assert [int(r["frame_index"]) for r in read_manifest(tmp_path / "ok" / "manifest.csv")] == list(range(45, 60))
