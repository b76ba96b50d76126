"""FP16 and INT8 variants stay within stated tolerances of their FP32 model.

- FP16 (yolov8n from the reference cache, converted with onnxconverter-common, float16 inputs): 99.9 % of
  the anchors' decoded boxes within FP16_BOX_PX model pixels (the rest are huge low-score boxes whose
  distribution-focal sides round coarsely in half precision), every score within FP16_SCORE of FP32; at least
  MATCH_RATE of the FP32 detections have an FP16 detection of the same class with IoU >= 0.9.
- INT8 (the shipped conveyor.int8.onnx, static QDQ, head in float) against conveyor.onnx on rendered
  conveyor frames at the deployed threshold: at least MATCH_RATE of the FP32 detections have an INT8
  detection of the same class with IoU >= INT8_IOU and score within INT8_SCORE.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamd.infer.model import LoadedModel, load_model
from streamd.infer.postprocess import Candidates, PostprocessParams
from streamd.infer.preprocess import letterbox_into, to_tensor
from tests.conftest import REPO
from tests.reference.compare import REF_SCRIPT, detect_files, run_train, train_python
from tests.reference.test_ultralytics_equality import coco_images, exported

pytestmark = pytest.mark.reference

FP16_BOX_PX = 8.0  # at a 320 px input; measured 4.9 (random-init boxes span most of the image)
FP16_SCORE = 1e-2
INT8_IOU = 0.8
INT8_SCORE = 0.1
MATCH_RATE = 0.95


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` [4] with boxes ``b`` [n, 4]."""
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter + 1e-9)


def match_rate(ref: list[Candidates], other: list[Candidates], min_iou: float, max_score: float) -> tuple[float, int]:
    total = matched = 0
    for r, o in zip(ref, other):
        for j in range(len(r.confidence)):
            total += 1
            if len(o.confidence) == 0:
                continue
            ok = (iou(r.xyxy[j], o.xyxy) >= min_iou) & (o.class_id == r.class_id[j]) & \
                 (np.abs(o.confidence - r.confidence[j]) <= max_score)
            matched += bool(ok.any())
    return matched / max(total, 1), total


def raw_candidates(model: LoadedModel, image: Path) -> Candidates:
    h, w = model.input_hw
    pixels = np.zeros((1, h, w, 3), np.uint8)
    letterbox_into(cv2.imread(str(image)), pixels[0], model.adapter.preprocess)
    tensor = to_tensor(pixels, model.adapter.preprocess, np.zeros((1, 3, h, w), np.float32))
    return model.adapter.decode(model.run(tensor), 0, 0.0)  # every anchor, in anchor order


def test_fp16_within_tolerance_of_fp32(tmp_path: Path) -> None:
    fp32_path = exported("yolov8n")
    fp16_path = fp32_path.with_name("yolov8n.fp16.onnx")
    if not fp16_path.is_file():
        run_train(train_python("onnx", "onnxconverter_common"), str(REF_SCRIPT), "fp16", "--model", str(fp32_path),
                  "--out", str(fp16_path))
    fp32, fp16 = load_model(str(fp32_path)), load_model(str(fp16_path))
    assert fp16.input_dtype is np.float16 and fp16.adapter.name == "ultralytics"
    images = sorted(coco_images().glob("*.jpg"))[20:40]
    box_diffs, score_diff = [], 0.0
    for image in images:
        a, b = raw_candidates(fp32, image), raw_candidates(fp16, image)
        box_diffs.append(np.abs(a.xyxy - b.xyxy).max(axis=1))
        score_diff = max(score_diff, float(np.abs(a.confidence - b.confidence).max()))
    box_diff = float(np.quantile(np.concatenate(box_diffs), 0.999))
    params = PostprocessParams(confidence=0.55, iou=0.7, max_detections=100)
    rate, total = match_rate(detect_files(fp32, images, params), detect_files(fp16, images, params), 0.9, FP16_SCORE)
    print(f"\nfp16: 99.9th percentile anchor box diff {box_diff:.3f} px, max score diff {score_diff:.2e}, "
          f"{rate:.1%} of {total} detections matched")
    assert box_diff <= FP16_BOX_PX and score_diff <= FP16_SCORE
    assert total > 100 and rate >= MATCH_RATE


def test_int8_within_tolerance_of_fp32(tmp_path: Path) -> None:
    from streamd.synth.conveyor import ConveyorScene, SceneConfig

    scene = ConveyorScene(SceneConfig(seed=2, seconds=20.0))
    images = []
    for index in range(20, 600, 12):
        image, _ = scene.render(index)
        images.append(tmp_path / f"conveyor-{index}.png")
        cv2.imwrite(str(images[-1]), image)
    fp32 = load_model(str(REPO / "streamd" / "models" / "conveyor.onnx"))
    int8 = load_model(str(REPO / "streamd" / "models" / "conveyor.int8.onnx"))
    params = PostprocessParams(confidence=0.25, iou=0.45)
    rate, total = match_rate(detect_files(fp32, images, params), detect_files(int8, images, params), INT8_IOU,
                             INT8_SCORE)
    print(f"\nint8: {rate:.1%} of {total} FP32 detections matched (IoU >= {INT8_IOU}, score within {INT8_SCORE})")
    assert total > 50 and rate >= MATCH_RATE
