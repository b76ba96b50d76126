"""streamd's detections equal ultralytics' own `YOLO(model.onnx).predict` on the same ONNX file and images:
same classes, boxes within 1 px, scores within 1e-3, same count.

Models: yolov5nu, yolov8n, yolov9t, yolo11n, yolo12n (raw head, NMS in streamd), yolov10n and yolo26n
(NMS-free end-to-end head), rtdetr-l (RT-DETR), each built from its yaml (no download; see ultra_ref.py for why the random init is
re-calibrated), and the project's own trained conveyor model. ultralytics runs in the training
interpreter (STREAMD_TRAIN_PYTHON) as a subprocess; exports are cached in out/reference-cache.

The confidence threshold is chosen per model from its own score distribution (the 90th percentile of
all candidate scores), so every image keeps dozens of detections and NMS has overlaps to resolve.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamd.infer.model import load_model
from streamd.infer.postprocess import PostprocessParams
from tests.conftest import MEDIA, REPO, require
from tests.reference.compare import CACHE, REF_SCRIPT, compare, detect_files, run_train, train_python

pytestmark = pytest.mark.reference

IMGSZ = 320
# wide (426x640, 107 px of padding at 320), tall (640x427), small 4:3 (374x500), square (612x612)
IMAGES = ("000000000025.jpg", "000000000154.jpg", "000000000136.jpg", "000000000078.jpg")
CALIBRATION = 16  # first coco128 images: BatchNorm statistics of the random-init models

MODELS = {  # name: (yaml, extra export args, adapter streamd must pick)
    "yolov5nu": ("yolov5nu.yaml", [], "ultralytics"),
    "yolov8n": ("yolov8n.yaml", [], "ultralytics"),
    "yolov9t": ("yolov9t.yaml", [], "ultralytics"),
    "yolo11n": ("yolo11n.yaml", [], "ultralytics"),
    "yolo12n": ("yolo12n.yaml", [], "ultralytics"),
    "yolov10n": ("yolov10n.yaml", ["--end2end"], "ultralytics_e2e"),
    "yolo26n": ("yolo26n.yaml", ["--end2end"], "ultralytics_e2e"),
    "rtdetr-l": ("rtdetr-l.yaml", [], "rtdetr"),
}


def coco_images() -> Path:
    folder = MEDIA / "datasets" / "coco128" / "images"
    require(folder.is_dir(), f"coco128 images not found at {folder} (set STREAMD_MEDIA)")
    return folder


def exported(name: str) -> Path:
    """The cached export of ``name``, made with ultralytics on first use."""
    yaml_name, extra, _ = MODELS[name]
    path = CACHE / f"{name}.onnx"
    if not path.is_file():
        python = train_python("ultralytics", "onnx")
        calib = sorted(coco_images().glob("*.jpg"))[:CALIBRATION]
        run_train(python, str(REF_SCRIPT), "export", "--yaml", yaml_name, "--imgsz", str(IMGSZ), "--out",
                  str(path), *extra, "--calib", *map(str, calib))
    return path


def pick_confidence(model_path: Path, images: list[Path], quantile: float = 0.9) -> float:
    """A percentile of every candidate score on these images, rounded (same value on both sides)."""
    model = load_model(str(model_path))
    h, w = model.input_hw
    spec = model.adapter.preprocess
    from streamd.infer.preprocess import letterbox_into, to_tensor

    scores = []
    for image in images:
        pixels = np.zeros((1, h, w, 3), np.uint8)
        letterbox_into(cv2.imread(str(image)), pixels[0], spec)
        outputs = model.run(to_tensor(pixels, spec, np.zeros((1, 3, h, w), np.float32)))
        scores.append(model.adapter.decode(outputs, 0, 0.0).confidence)
    return round(float(np.quantile(np.concatenate(scores), quantile)), 4)


def reference(model_path: Path, images: list[Path], conf: float, iou: float, max_det: int, tmp: Path,
              agnostic: bool = False) -> list[dict]:
    python = train_python("ultralytics", "onnx")
    out = tmp / "reference.json"
    run_train(python, str(REF_SCRIPT), "predict", "--model", str(model_path), "--imgsz", str(IMGSZ), "--conf",
              str(conf), "--iou", str(iou), "--max-det", str(max_det), "--out", str(out),
              *(["--agnostic"] if agnostic else []), *map(str, images))
    return json.loads(out.read_text())


def check(model_path: Path, adapter: str, images: list[Path], tmp: Path, *, iou: float = 0.7,
          max_det: int = 100, agnostic: bool = False, conf: float | None = None, quantile: float = 0.9,
          min_per_image: int = 10) -> None:
    model = load_model(str(model_path))  # nothing configured: adapter, input size, classes from the file
    assert model.adapter.name == adapter
    conf = pick_confidence(model_path, images, quantile) if conf is None else conf
    params = PostprocessParams(confidence=conf, iou=iou, class_agnostic=agnostic, max_detections=max_det)
    ours = detect_files(model, images, params)
    ref = reference(model_path, images, conf, iou, max_det, tmp, agnostic)
    agreement = compare(ours, ref, f"{model_path.name} (conf {conf})")
    assert agreement.detections >= min_per_image * len(images), f"too few detections to compare: {agreement}"
    print(f"\n{model_path.name}: adapter {adapter}, {agreement.detections} detections, max box diff "
          f"{agreement.max_box_px:.4f} px, max score diff {agreement.max_score:.2e}")


@pytest.mark.parametrize("name", list(MODELS))
def test_streamd_equals_ultralytics_predict(name: str, tmp_path: Path) -> None:
    images = [coco_images() / n for n in IMAGES]
    check(exported(name), MODELS[name][2], images, tmp_path)


def test_class_agnostic_nms_equals_ultralytics(tmp_path: Path) -> None:
    images = [coco_images() / n for n in IMAGES]
    check(exported("yolov8n"), "ultralytics", images, tmp_path, iou=0.45, agnostic=True, max_det=300, quantile=0.3)


def test_project_model_equals_ultralytics(tmp_path: Path) -> None:
    """The shipped conveyor model (dynamic axes, trained) on rendered conveyor frames at its own threshold."""
    from streamd.synth.conveyor import ConveyorScene, SceneConfig

    scene = ConveyorScene(SceneConfig(seed=3, seconds=4.0))
    images = []
    for index in (30, 60, 90):
        image, _ = scene.render(index)
        path = tmp_path / f"conveyor-{index}.png"
        cv2.imwrite(str(path), image)
        images.append(path)
    model_path = REPO / "streamd" / "models" / "conveyor.onnx"
    model = load_model(str(model_path))
    assert model.names == ["box", "bottle", "can"]
    # its deployed threshold (a few real products per frame), then a low one (many overlapping candidates)
    check(model_path, "ultralytics", images, tmp_path, iou=0.7, max_det=300, conf=0.25, min_per_image=2)
    check(model_path, "ultralytics", images, tmp_path, iou=0.7, max_det=300, quantile=0.95)


@pytest.mark.parametrize("name", [*MODELS, "conveyor"])
def test_inspect_identifies_ultralytics_exports(name: str) -> None:
    """`streamd model inspect` names each export's adapter, size, batch axis, precision and classes."""
    from streamd.infer.inspect import inspect_model

    path = REPO / "streamd" / "models" / "conveyor.onnx" if name == "conveyor" else exported(name)
    report = inspect_model(path, runs=0)
    assert report.adapter == ("ultralytics" if name == "conveyor" else MODELS[name][2])
    assert report.input_hw == (IMGSZ, IMGSZ) and report.precision == "fp32"
    if name == "conveyor":
        assert report.classes == ["box", "bottle", "can"] and report.batch_axis == "dynamic"
    else:
        # built from a yaml, no dataset: ultralytics names the 80 classes "0".."79" in the metadata
        assert report.num_classes == 80 and report.classes == [str(i) for i in range(80)]
