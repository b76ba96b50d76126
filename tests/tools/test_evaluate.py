"""tools.evaluate with real models on a slice of coco128: its mAP is pycocotools' on the saved predictions."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tools import needs
from tests.unit.test_adapters import graph_model
from tools.evaluate.__main__ import class_mapping, main
from tools.evaluate.metrics import confusion_matrix


@pytest.fixture(autouse=True)
def _tools_extra() -> None:
    needs("pycocotools")
STEMS = ["000000000009", "000000000025", "000000000030", "000000000034", "000000000036", "000000000042",
         "000000000049", "000000000061", "000000000071", "000000000072", "000000000073", "000000000074",
         "000000000250"]


def coco_slice(media: Path, out: Path) -> Path:
    src = media / "datasets" / "coco128"
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    for stem in STEMS:
        shutil.copy(src / "images" / f"{stem}.jpg", out / "images")
        shutil.copy(src / "labels" / f"{stem}.txt", out / "labels")
    shutil.copy(src / "coco.names", out)
    return out


def independent_ground_truth(data: Path) -> dict:
    """COCO ground truth written here from the label files, not by the code under test."""
    names = (data / "coco.names").read_text().split("\n")
    images, annotations = [], []
    for image_id, image in enumerate(sorted((data / "images").iterdir()), start=1):
        w, h = Image.open(image).size
        images.append({"id": image_id, "file_name": image.name, "width": w, "height": h})
        for line in (data / "labels" / f"{image.stem}.txt").read_text().splitlines():
            c, cx, cy, bw, bh = line.split()
            box = [(float(cx) - float(bw) / 2) * w, (float(cy) - float(bh) / 2) * h, float(bw) * w, float(bh) * h]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c) + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names) if n]}


def pycocotools_stats(gt: dict, predictions: Path) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(str(predictions)), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [float(s) for s in e.stats]


def test_yolox_map_equals_pycocotools_on_saved_predictions(media: Path, tmp_path: Path) -> None:
    data = coco_slice(media, tmp_path / "data")
    out = tmp_path / "report"
    models = media / "models"
    assert main(["--model", str(models / "yolox-nano" / "yolox_nano.onnx"), "--labels", str(models / "coco.names"),
                 "--data", str(data), "--out", str(out), "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    stats = pycocotools_stats(independent_ground_truth(data), out / "predictions.json")
    assert summary["mAP50-95"] == pytest.approx(stats[0], abs=1e-9)
    assert summary["mAP50"] == pytest.approx(stats[1], abs=1e-9)
    assert summary["mAP50"] > 0.4  # a working COCO model on COCO training images; a broken decode gives ~0
    assert 0 < summary["precision"] <= 1 and 0 < summary["recall"] <= 1
    assert summary["f1"] == pytest.approx(2 * summary["precision"] * summary["recall"]
                                          / (summary["precision"] + summary["recall"]))
    assert 0.5 < summary["mean_iou"] <= 1
    assert summary["adapter"] == "yolox" and summary["images"] == len(STEMS)
    person = next(c for c in summary["per_class"] if c["name"] == "person")
    assert person["instances"] == sum(line.startswith("0 ") for s in STEMS
                                      for line in (data / "labels" / f"{s}.txt").read_text().splitlines())
    for name in ("pr_curves.png", "confusion_matrix.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "| person |" in (out / "summary.md").read_text()


def test_fastestdet_runs_through_its_adapter(media: Path, tmp_path: Path) -> None:
    data = coco_slice(media, tmp_path / "data")
    models = media / "models"
    out = tmp_path / "report"
    assert main(["--model", str(models / "fastestdet" / "FastestDet.onnx"), "--labels", str(models / "coco.names"),
                 "--data", str(data), "--out", str(out), "--agnostic", "--no-plots", "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adapter"] == "fastestdet" and summary["agnostic"]
    assert summary["mAP50"] > 0.2
    assert summary["mAP50"] == pytest.approx(pycocotools_stats(independent_ground_truth(data),
                                                               out / "predictions.json")[1], abs=1e-9)


def test_class_mapping_by_index_and_by_name() -> None:
    mapping, notes = class_mapping(["person", "motorcycle", "car"], ["person", "motorbike", "car"], "index")
    assert mapping == {0: 0, 1: 1, 2: 2} and "motorcycle" in notes[0]
    mapping, notes = class_mapping(["car", "person", "dog"], ["person", "car"], "name")
    assert mapping == {0: 1, 1: 0} and "dog" in notes[0]


def test_auto_class_mapping_picks_names_for_a_background_first_model_and_index_for_respellings() -> None:
    mapping, notes = class_mapping(["background", "box", "bottle", "can"], ["box", "bottle", "can"], "auto")
    assert mapping == {1: 0, 2: 1, 3: 2} and "matched by name" in notes[0]
    mapping, notes = class_mapping(["person", "motorbike", "car"], ["person", "motorcycle", "car"], "auto")
    assert mapping == {0: 0, 1: 1, 2: 2} and "matched by index" in notes[0]


def test_a_model_for_other_classes_is_warned_about() -> None:
    coco = ["person", "bicycle", "car", "motorcycle"]
    mapping, notes = class_mapping(["box", "bottle", "can"], coco, "auto")
    warning = next(n for n in notes if n.startswith("WARNING"))
    assert "no dataset class name is a model class name" in warning and "box" in warning and "person" in warning
    _, notes = class_mapping(["person", "car"], coco, "name")
    assert any("does not predict" in n and "bicycle, motorcycle" in n for n in notes)


def test_torchvision_export_with_background_class_is_scored_by_name(tmp_path: Path) -> None:
    """tools.export names a torchvision model's classes [background, *dataset names]: label 1 is dataset class 0."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(data / "images" / "a.png")
    (data / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")  # a box from (16, 16) to (48, 48)
    (data / "data.yaml").write_text(f"path: {data}\ntrain: images\nval: images\nnames: [box, bottle, can]\n")
    names = ["background", "box", "bottle", "can"]
    outputs = {"boxes": np.array([[16, 16, 48, 48]], np.float32), "scores": np.array([0.9], np.float32),
               "labels": np.array([1], np.int64)}  # label 1 = "box", as torchvision numbers classes from 1
    model = graph_model(tmp_path / "tv.onnx", outputs, [1, 3, 64, 64],
                        metadata={"streamd_adapter": "torchvision", "names": json.dumps(names)})
    out = tmp_path / "report"
    assert main(["--model", str(model), "--data", str(data / "data.yaml"), "--split", "val", "--out", str(out),
                 "--no-plots"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mAP50"] == pytest.approx(1.0) and summary["precision"] == pytest.approx(1.0)
    assert any("matched by name" in n for n in summary["notes"])
    assert main(["--model", str(model), "--data", str(data / "data.yaml"), "--split", "val", "--out", str(out),
                 "--no-plots", "--class-map", "index"]) == 0
    assert json.loads((out / "summary.json").read_text())["mAP50"] == pytest.approx(0.0)  # shifted by one


def test_confusion_matrix_counts_confusions_misses_and_false_alarms() -> None:
    gt = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 1]))]
    det = [(np.array([[0, 0, 10, 10], [20, 20, 30, 31], [50, 50, 60, 60]], float), np.array([0, 0, 1]))]
    m = confusion_matrix(gt, det, num_classes=2)
    assert m[0, 0] == 1  # right class
    assert m[0, 1] == 1  # class-1 object called class 0
    assert m[1, 2] == 1  # false alarm (background)
    assert m.sum() == 3
