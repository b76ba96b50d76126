"""The conveyor scene generator: deterministic, truthful boxes, exact expected counts."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from streamd.synth import CLASSES, ConveyorScene, SceneConfig, render_video
from streamd.synth.conveyor import GroundTruth

SMALL = SceneConfig(seed=5, seconds=4.0, belt_speed=7.0, density=2.0)


def digest(scene: ConveyorScene, frames: range) -> str:
    h = hashlib.sha256()
    for i in frames:
        image, boxes = scene.render(i)
        h.update(image.tobytes())
        h.update(repr(boxes).encode())
    return h.hexdigest()


def test_same_seed_same_frames_and_truth() -> None:
    assert digest(ConveyorScene(SMALL), range(0, 120, 7)) == digest(ConveyorScene(SMALL), range(0, 120, 7))
    assert ConveyorScene(SMALL).expected_counts() == ConveyorScene(SMALL).expected_counts()


def test_other_seed_other_scene() -> None:
    other = replace(SMALL, seed=6)
    assert digest(ConveyorScene(SMALL), range(0, 120, 7)) != digest(ConveyorScene(other), range(0, 120, 7))


def test_video_and_truth_files_are_deterministic(tmp_path: Path) -> None:
    a = render_video(SMALL, tmp_path / "a.mp4", tmp_path / "a.json")
    b = render_video(SMALL, tmp_path / "b.mp4", tmp_path / "b.json")
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert a.counts == b.counts == GroundTruth.load(tmp_path / "a.json").counts
    with av.open(str(tmp_path / "a.mp4")) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", SMALL.width, SMALL.height)
    assert frames == SMALL.frames == len(a.frames)


def test_ground_truth_boxes_fit_the_drawn_objects() -> None:
    """With noise and blur off, the pixels that change when products are removed lie tight in their boxes."""
    config = replace(SMALL, noise=0.0, blur=False)
    scene = ConveyorScene(config)
    empty = ConveyorScene(config)
    empty.products = []
    checked = 0
    for i in range(0, config.frames, 5):
        image, boxes = scene.render(i)
        background, _ = empty.render(i)
        changed = np.abs(image.astype(int) - background.astype(int)).sum(axis=2) > 30
        for _, _, x1, y1, x2, y2 in boxes:
            others = [b for b in boxes if b[2:] != [x1, y1, x2, y2]]
            pad = 6
            if any(not (b[4] < x1 - pad or b[2] > x2 + pad or b[5] < y1 - pad or b[3] > y2 + pad) for b in others):
                continue  # overlapping neighbours: extents cannot be told apart
            if x1 <= pad or x2 >= config.width - pad:
                continue  # at or cut by the frame edge
            ys, xs = np.nonzero(changed[int(y1) - pad : int(y2) + pad, int(x1) - pad : int(x2) + pad])
            assert len(xs), f"frame {i}: nothing drawn in box {x1, y1, x2, y2}"
            drawn = (xs.min() + int(x1) - pad, ys.min() + int(y1) - pad, xs.max() + int(x1) - pad + 1,
                     ys.max() + int(y1) - pad + 1)
            assert np.allclose(drawn, (x1, y1, x2, y2), atol=3), f"frame {i}: drawn {drawn} vs truth {x1, y1, x2, y2}"
            checked += 1
    assert checked >= 20


def test_expected_counts_agree_with_the_per_frame_truth() -> None:
    scene = ConveyorScene(SMALL)
    truth_by_id: dict[int, tuple[int, list[float]]] = {}
    first_centre: dict[int, float] = {}
    for i in range(SMALL.frames):
        _, boxes = scene.render(i)
        for object_id, class_id, x1, _, x2, _ in boxes:
            centre = (x1 + x2) / 2
            first_centre.setdefault(object_id, centre)
            truth_by_id[object_id] = (class_id, centre)
    counts = dict.fromkeys(CLASSES, 0)
    for object_id, (class_id, last) in truth_by_id.items():
        if first_centre[object_id] < SMALL.line_x < last:
            counts[CLASSES[int(class_id)]] += 1
    assert counts == scene.expected_counts()
    assert sum(counts.values()) >= 4


@pytest.mark.parametrize("speed", [3.0, 10.0])
def test_no_product_is_near_the_line_at_the_start_or_end(speed: float) -> None:
    config = replace(SMALL, belt_speed=speed, seconds=6.0)
    scene = ConveyorScene(config)
    for p in scene.products:
        for frame in (0, config.frames - 1):
            assert abs(p.centre_x(frame, speed) - config.line_x) > speed * (config.margin_frames - 1)


def test_every_synth_option_is_described(capsys: pytest.CaptureFixture[str]) -> None:
    """`tools.synth dataset --help` says what --train/--val/--test/--every mean, and so does every other option."""
    import argparse

    from tools.synth.__main__ import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 15, f"{name} {action.option_strings[0]} has no description"
    with pytest.raises(SystemExit):
        parser.parse_args(["dataset", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--train SEEDS scene seeds for the train split: a range (LOW-HIGH, inclusive)" in text
    assert "(default 100-139: 40 scenes)" in text and "keep every Nth frame of each scene (default 6: 60 images" in text


@pytest.mark.parametrize(("value", "message"), [
    ("139-100", "'139-100' runs backwards"),
    ("a-b", "'a-b' is not a seed list"),
    (",", "no seeds given"),
])
def test_bad_seed_ranges_are_argparse_errors(value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tools.synth.__main__ import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["dataset", "--out", "x", "--train", value])
    assert exited.value.code == 2
    assert f"argument --train: {message}" in capsys.readouterr().err
