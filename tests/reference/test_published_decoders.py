"""YOLOX-Nano and FastestDet (../shared/media) on real Traffic.mp4 frames: streamd's detections equal a
straightforward per-cell decode written here from each project's published decoder description (the
media README), and cars are found.

The reference decodes below are deliberately naive (Python loops over cells, the published formulas
as written, the authors' NMS settings) and share no code with streamd's adapters or post-processing.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from streamd.infer.model import load_model
from streamd.infer.postprocess import PostprocessParams
from tests.reference.compare import compare, detect_files, video_frames

pytestmark = pytest.mark.reference

FRAMES = (30, 200, 300)


def traffic_frames(media: Path, tmp_path: Path) -> list[Path]:
    return video_frames(media / "videos" / "Traffic.mp4", FRAMES, tmp_path)


def naive_nms(dets: list[tuple[list[float], float, int]], iou: float, agnostic: bool) -> list:
    dets = sorted(dets, key=lambda d: -d[1])
    kept: list = []
    for box, score, cls in dets:
        def overlap(other: list[float]) -> float:
            ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
            iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
            inter = ix * iy
            union = (box[2] - box[0]) * (box[3] - box[1]) + (other[2] - other[0]) * (other[3] - other[1]) - inter
            return inter / union if union > 0 else 0.0
        if all(overlap(k[0]) <= iou for k in kept if agnostic or k[2] == cls):
            kept.append((box, score, cls))
    return kept


def as_reference(image: Path, kept: list, width: int, height: int) -> dict:
    return {"image": str(image), "width": width, "height": height,
            "xyxy": [[min(max(v, 0), width if i % 2 == 0 else height) for i, v in enumerate(b)] for b, _, _ in kept],
            "confidence": [s for _, s, _ in kept], "class_id": [c for _, _, c in kept]}


def yolox_reference(model_path: Path, image_path: Path, conf: float, iou: float) -> dict:
    """YOLOX demo decode: top-left letterbox (pad 114, BGR, 0..255), grids per stride, obj * cls, per-class NMS."""
    image = cv2.imread(str(image_path))
    h0, w0 = image.shape[:2]
    r = min(416 / h0, 416 / w0)
    padded = np.full((416, 416, 3), 114, np.uint8)
    resized = cv2.resize(image, (int(w0 * r), int(h0 * r)), interpolation=cv2.INTER_LINEAR)
    padded[: resized.shape[0], : resized.shape[1]] = resized
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": padded.transpose(2, 0, 1)[None].astype(np.float32)})
    dets, row = [], 0
    for stride in (8, 16, 32):
        for gy in range(416 // stride):
            for gx in range(416 // stride):
                x, y, w, h, obj, *cls = out[0, row].tolist()
                row += 1
                c = int(np.argmax(cls))
                score = obj * cls[c]
                if score < conf:
                    continue
                cx, cy = (x + gx) * stride, (y + gy) * stride
                bw, bh = math.exp(w) * stride, math.exp(h) * stride
                dets.append(([(cx - bw / 2) / r, (cy - bh / 2) / r, (cx + bw / 2) / r, (cy + bh / 2) / r], score, c))
    return as_reference(image_path, naive_nms(dets, iou, agnostic=False), w0, h0)


def fastestdet_reference(model_path: Path, image_path: Path, conf: float, iou: float) -> dict:
    """FastestDet demo decode: plain resize to 352 (BGR, /255), per cell obj^0.6 * cls^0.4, agnostic NMS."""
    image = cv2.imread(str(image_path))
    h0, w0 = image.shape[:2]
    resized = cv2.resize(image, (352, 352), interpolation=cv2.INTER_LINEAR)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input.1": (resized.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)})
    fmap = out[0].transpose(1, 2, 0)  # [22, 22, 85]
    gh, gw = fmap.shape[:2]
    dets = []
    for gy in range(gh):
        for gx in range(gw):
            data = fmap[gy, gx]
            obj, cls_score = float(data[0]), float(data[5:].max())
            score = obj**0.6 * cls_score**0.4
            if score < conf:
                continue
            cx = (gx + math.tanh(data[1])) / gw
            cy = (gy + math.tanh(data[2])) / gh
            bw, bh = 1 / (1 + math.exp(-data[3])), 1 / (1 + math.exp(-data[4]))
            box = [(cx - bw / 2) * w0, (cy - bh / 2) * h0, (cx + bw / 2) * w0, (cy + bh / 2) * h0]
            dets.append((box, score, int(np.argmax(data[5:]))))
    return as_reference(image_path, naive_nms(dets, iou, agnostic=True), w0, h0)


@pytest.mark.parametrize(
    ("name", "path", "reference", "agnostic"),
    [
        ("yolox", "models/yolox-nano/yolox_nano.onnx", yolox_reference, False),
        ("fastestdet", "models/fastestdet/FastestDet.onnx", fastestdet_reference, True),
    ],
)
def test_published_decoder_equality_and_cars_on_traffic(media: Path, tmp_path: Path, name: str, path: str,
                                                        reference, agnostic: bool) -> None:
    model_path = media / path
    model = load_model(str(model_path), labels=str(media / "models" / "coco.names"))
    assert model.adapter.name == name  # auto-detected from the output shape alone
    images = traffic_frames(media, tmp_path)
    conf, iou = 0.3, 0.45
    params = PostprocessParams(confidence=conf, iou=iou, class_agnostic=agnostic, max_detections=300)
    ours = detect_files(model, images, params)
    refs = [reference(model_path, image, conf, iou) for image in images]
    agreement = compare(ours, refs, name)
    car = model.names.index("car")
    for dets in ours:
        assert (dets.class_id == car).sum() >= 1, f"{name}: no car found on a Traffic.mp4 frame"
    print(f"\n{name}: {agreement.detections} detections, max box diff {agreement.max_box_px:.4f} px, "
          f"max score diff {agreement.max_score:.2e}")
