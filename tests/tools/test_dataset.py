"""tools.dataset on real coco128 files, damaged copies of them, and synthetic images with known objects."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.tools import needs
from tools.dataset.__main__ import main
from tools.dataset.yolo import open_dataset, read_boxes


@pytest.fixture(autouse=True)
def _tools_extra() -> None:
    needs("imagehash")
COCO_FILES = ["000000000009", "000000000025", "000000000030", "000000000034", "000000000036", "000000000042",
              "000000000049", "000000000061", "000000000250", "000000000071"]  # 250 has an empty label file


def coco_subset(media: Path, out: Path, stems: list[str] = COCO_FILES) -> Path:
    src = media / "datasets" / "coco128"
    for stem in stems:
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "labels").mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "images" / f"{stem}.jpg", out / "images")
        shutil.copy(src / "labels" / f"{stem}.txt", out / "labels")
    shutil.copy(src / "coco.names", out / "coco.names")
    return out


def test_yolo_coco_yolo_round_trip_is_identical(media: Path, tmp_path: Path) -> None:
    data = coco_subset(media, tmp_path / "data")
    assert main(["convert", "yolo2coco", str(data), "--out", str(tmp_path / "c.json")]) == 0
    coco = json.loads((tmp_path / "c.json").read_text())
    assert len(coco["images"]) == len(COCO_FILES)
    assert coco["categories"][3] == {"id": 4, "name": "motorbike", "supercategory": ""}
    first = next(a for a in coco["annotations"] if a["image_id"] == 1)  # 000000000009: 640x480, "45 0.479492 ..."
    assert first["category_id"] == 46
    assert first["bbox"] == pytest.approx([0.479492 * 640 - 0.955609 * 320, 0.688771 * 480 - 0.5955 * 240,
                                           0.955609 * 640, 0.5955 * 480])
    back = tmp_path / "back"
    assert main(["convert", "coco2yolo", str(tmp_path / "c.json"), "--images", str(data / "images"),
                 "--out", str(back)]) == 0
    for stem in COCO_FILES:
        assert (back / "labels" / f"{stem}.txt").read_bytes() == (data / "labels" / f"{stem}.txt").read_bytes()
        assert (back / "images" / f"{stem}.jpg").read_bytes() == (data / "images" / f"{stem}.jpg").read_bytes()
    assert open_dataset(back).names == open_dataset(data).names


def test_coco_edited_bbox_wins_over_the_stored_yolo_line(media: Path, tmp_path: Path) -> None:
    data = coco_subset(media, tmp_path / "data", COCO_FILES[:1])
    main(["convert", "yolo2coco", str(data), "--out", str(tmp_path / "c.json")])
    coco = json.loads((tmp_path / "c.json").read_text())
    coco["annotations"][0]["bbox"] = [64.0, 48.0, 320.0, 240.0]  # as an annotation tool would change it
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert main(["convert", "coco2yolo", str(tmp_path / "c.json"), "--out", str(tmp_path / "back")]) == 0
    first = (tmp_path / "back" / "labels" / f"{COCO_FILES[0]}.txt").read_text().splitlines()[0]
    assert first == "45 0.35 0.35 0.5 0.5"


def test_validate_finds_each_planted_fault(media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = coco_subset(media, tmp_path / "data")
    assert main(["validate", str(data)]) == 0  # the clean copy: only the empty-label warning
    assert "empty_label" in capsys.readouterr().out
    labels, images = data / "labels", data / "images"
    (labels / "000000000009.txt").unlink()  # missing label
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # label without image
    lines = (labels / "000000000025.txt").read_text().splitlines()
    (labels / "000000000025.txt").write_text("\n".join([lines[0], "0 0.95 0.5 0.2 0.2", "1 0.5 0.5 0 0.1"]) + "\n")
    (labels / "000000000030.txt").write_text("93 0.5 0.5 0.2 0.2\n3 0.5 0.5\n")  # unknown class, malformed line
    shutil.copy(images / "000000000034.jpg", images / "copy_of_34.jpg")  # duplicate image
    shutil.copy(labels / "000000000034.txt", labels / "copy_of_34.txt")
    (labels / "000000000036.txt").write_text("")  # emptied label
    report = tmp_path / "report.json"
    assert main(["validate", str(data), "--report", str(report)]) == 1
    found = {(f["code"], Path(f["file"]).name, f["line"]) for f in json.loads(report.read_text())["findings"]}
    expected = {
        ("missing_label", "000000000009.jpg", None),
        ("missing_image", "orphan.txt", None),
        ("box_outside", "000000000025.txt", 2),
        ("degenerate_box", "000000000025.txt", 3),
        ("unknown_class", "000000000030.txt", 1),
        ("malformed_line", "000000000030.txt", 2),
        ("empty_label", "000000000036.txt", None),
        ("empty_label", "000000000250.txt", None),
    }
    assert expected <= found
    duplicates = {f for f in found if f[0] == "duplicate_image"}
    assert duplicates in ({("duplicate_image", "copy_of_34.jpg", None)}, {("duplicate_image", "000000000034.jpg", None)})
    assert len(found) == len(expected) + 1, f"unexpected findings: {found - expected}"
    out = capsys.readouterr().out
    assert "000000000025.txt:2: error [box_outside]" in out


def test_validate_decodes_every_pixel(media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A JPEG cut short keeps a good header; only a full decode notices (cv2 would fill it with grey)."""
    data = coco_subset(media, tmp_path / "data", COCO_FILES[:3])
    jpeg = data / "images" / "000000000071.jpg"
    shutil.copy(media / "datasets" / "coco128" / "images" / jpeg.name, jpeg)
    shutil.copy(media / "datasets" / "coco128" / "labels" / "000000000071.txt", data / "labels")
    jpeg.write_bytes(jpeg.read_bytes()[:2000])
    png = data / "images" / "cut.png"
    cv2.imwrite(str(png), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    png.write_bytes(png.read_bytes()[:-4000])
    (data / "labels" / "cut.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    report = tmp_path / "report.json"
    assert main(["validate", str(data), "--report", str(report)]) == 1
    found = {(f["code"], Path(f["file"]).name) for f in json.loads(report.read_text())["findings"]}
    assert found == {("unreadable_image", "000000000071.jpg"), ("unreadable_image", "cut.png")}
    out = capsys.readouterr().out
    assert f"{jpeg}: error [unreadable_image] cannot decode image: image file is truncated" in out


def coloured_scene(path: Path, size: tuple[int, int] = (240, 180)) -> dict[int, tuple[int, int, int, int]]:
    """Grey image with a red, a green and a blue rectangle; returns class -> (x1, y1, x2, y2)."""
    w, h = size
    image = np.full((h, w, 3), 128, np.uint8)
    objects = {0: (30, 30, 90, 80), 1: (120, 40, 200, 70), 2: (70, 110, 150, 160)}
    colours = {0: (0, 0, 230), 1: (0, 200, 0), 2: (230, 0, 0)}  # BGR: red, green, blue
    lines = []
    for cid, (x1, y1, x2, y2) in objects.items():
        image[y1:y2, x1:x2] = colours[cid]
        lines.append(f"{cid} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}")
    (path / "images").mkdir(parents=True)
    (path / "labels").mkdir()
    cv2.imwrite(str(path / "images" / "scene.png"), image)
    (path / "labels" / "scene.txt").write_text("\n".join(lines) + "\n")
    (path / "classes.txt").write_text("red\ngreen\nblue\n")
    return objects


def colour_mask(image: np.ndarray, cid: int) -> np.ndarray:
    channel = {0: 2, 1: 1, 2: 0}[cid]
    others = [c for c in range(3) if c != channel]
    v = image.astype(np.int16)
    return (v[..., channel] - v[..., others].max(axis=-1)) > 60


def test_augment_keeps_boxes_on_the_objects(tmp_path: Path) -> None:
    needs("albumentations")
    coloured_scene(tmp_path / "data")
    out = tmp_path / "aug"
    assert main(["augment", str(tmp_path / "data"), "--copies", "8", "--rotate", "30", "--vflip", "0.5",
                 "--scale-min", "0.7", "--scale-max", "1.3", "--seed", "3", "--out", str(out)]) == 0
    augmented = sorted((out / "images").glob("scene_aug*.jpg"))
    assert len(augmented) == 8
    checked = 0
    for path in augmented:
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        text = (out / "labels" / (path.stem + ".txt")).read_text()
        assert re.fullmatch(r"(\d+( -?\d\.\d{6}){4}\n)*", text), f"{path.stem}.txt: not 6 decimals like the originals"
        for box in read_boxes(out / "labels" / (path.stem + ".txt")):
            mask = colour_mask(image, box.class_id)
            ys, xs = np.nonzero(mask)
            assert len(xs) > 50, f"{path.name}: class {box.class_id} has a box but no visible object"
            x1, y1, x2, y2 = (v * s for v, s in zip(box.xyxy, (w, h, w, h)))
            slack = 3  # JPEG and blur soften the edges by a pixel or two
            inside = (xs >= x1 - slack) & (xs <= x2 + slack) & (ys >= y1 - slack) & (ys <= y2 + slack)
            assert inside.mean() > 0.99, f"{path.name}: box {box.class_id} misses the object's pixels"
            ox1, oy1, ox2, oy2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            inter = max(0, min(x2, ox2) - max(x1, ox1)) * max(0, min(y2, oy2) - max(y1, oy1))
            union = (x2 - x1) * (y2 - y1) + (ox2 - ox1) * (oy2 - oy1) - inter
            assert inter / union > 0.7, f"{path.name}: box {box.class_id} is far larger than its object"
            checked += 1
    assert checked >= 16
    assert (out / "images" / "scene.png").is_file()  # originals kept by default


def test_split_is_reproducible_and_balanced(media: Path, tmp_path: Path) -> None:
    coco = media / "datasets" / "coco128"
    assert main(["split", str(coco), "--seed", "7", "--out", str(tmp_path / "a"), "--link", "symlink"]) == 0
    assert main(["split", str(coco), "--seed", "7", "--out", str(tmp_path / "b"), "--link", "symlink"]) == 0
    assert main(["split", str(coco), "--seed", "8", "--out", str(tmp_path / "c"), "--link", "symlink"]) == 0

    def members(root: Path) -> dict[str, list[str]]:
        return {s: sorted(p.name for p in (root / "images" / s).iterdir()) for s in ("train", "val", "test")}

    a, b, c = members(tmp_path / "a"), members(tmp_path / "b"), members(tmp_path / "c")
    assert a == b and a != c
    assert [len(a[s]) for s in ("train", "val", "test")] == [102, 13, 13]
    assert not set(a["train"]) & set(a["val"]) and not set(a["val"]) & set(a["test"])
    # the most common class (person) lands in every split roughly in proportion
    person = {s: sum(b.class_id == 0 for p in (tmp_path / "a" / "labels" / s).glob("*.txt") for b in read_boxes(p))
              for s in a}
    total = sum(person.values())
    assert person["val"] > 0.04 * total and person["test"] > 0.04 * total
    assert open_dataset(tmp_path / "a" / "data.yaml", split="val").names[3] == "motorbike"


def test_dedupe_resize_and_stats(media: Path, tmp_path: Path) -> None:
    data = coco_subset(media, tmp_path / "data", COCO_FILES[:4])
    image = cv2.imread(str(data / "images" / "000000000009.jpg"))
    cv2.imwrite(str(data / "images" / "near.jpg"), cv2.convertScaleAbs(image, alpha=1.0, beta=6), [cv2.IMWRITE_JPEG_QUALITY, 70])
    shutil.copy(data / "labels" / "000000000009.txt", data / "labels" / "near.txt")
    assert main(["dedupe", str(data), "--threshold", "6", "--out", str(tmp_path / "unique")]) == 0
    assert sorted(p.stem for p in (tmp_path / "unique" / "images").iterdir()) == sorted(COCO_FILES[:4])

    assert main(["resize", str(data), "--max-side", "160", "--out", str(tmp_path / "small")]) == 0
    small = cv2.imread(str(tmp_path / "small" / "images" / "000000000009.jpg"))
    assert small.shape[:2] == (120, 160)
    assert (tmp_path / "small" / "labels" / "000000000009.txt").read_text() == \
        (data / "labels" / "000000000009.txt").read_text()

    needs("matplotlib")
    assert main(["stats", str(data), "--out", str(tmp_path / "stats")]) == 0
    stats = json.loads((tmp_path / "stats" / "stats.json").read_text())
    expected = Counter(b.class_id for p in (data / "labels").glob("*.txt") for b in read_boxes(p))
    assert stats["boxes"] == sum(expected.values())
    names = open_dataset(data).names
    assert {k: v["boxes"] for k, v in stats["classes"].items()} == {names[c]: n for c, n in expected.items()}
    png = tmp_path / "stats" / "class_histogram.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(png)).shape[1] > 300


def test_bad_input_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope")]) == 1
    assert "nope does not exist" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"images": [}')
    assert main(["convert", "coco2yolo", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o")]) == 1
    assert "bad.json:1: not valid JSON" in capsys.readouterr().err
