"""ultralytics detection exports.

- ``ultralytics``: YOLOv3u/v5u/v8/v9/11/12 (and v10/YOLO26 exported with end2end=False): one output
  [B, 4 + nc, N] of cx, cy, w, h and class scores (already sigmoided), in model-input pixels; needs NMS.
- ``ultralytics_e2e``: NMS-free heads (YOLOv10, YOLO26): one output [B, K, 6] of x1, y1, x2, y2, score, class,
  top-k ranked by the model; no NMS.
- ``rtdetr``: ultralytics RT-DETR: [B, K, 6] of normalised cx, cy, w, h, score, class (ultralytics >= 8.4),
  or [B, 300, 4 + nc] of normalised cx, cy, w, h and sigmoided class scores (older exports); no NMS.
  RT-DETR stretches the image to the input size (ultralytics' predictor uses scale_fill).
"""

from __future__ import annotations

import numpy as np

from streamd.infer.adapters.base import Adapter, ModelInfo, static
from streamd.infer.postprocess import Candidates, best_class, cxcywh_to_xyxy
from streamd.infer.preprocess import PreprocessSpec

ULTRALYTICS_PREPROCESS = PreprocessSpec(letterbox=True, pad_position="center", pad_value=114, rgb=True, scale=1 / 255)


def _one_rank3_output(info: ModelInfo) -> bool:
    return len(info.output_shapes) == 1 and len(info.output_shapes[0]) == 3


class UltralyticsAdapter(Adapter):
    name = "ultralytics"
    description = "ultralytics YOLO raw head [B, 4+nc, N], NMS in streamd"
    preprocess = ULTRALYTICS_PREPROCESS

    @classmethod
    def matches(cls, info: ModelInfo, input_hw: tuple[int, int]) -> bool:
        if not _one_rank3_output(info):
            return False
        channels, anchors = info.output_shapes[0][1], info.output_shapes[0][2]
        if info.metadata.get("task", "detect") != "detect":
            return False
        if "names" in info.metadata and static(channels):
            return channels > 4 and (not static(anchors) or anchors > channels)
        # Without metadata: channels-first with at least as many anchors as channels (equal counts also fit
        # YOLOX, and are then reported as ambiguous).
        return static(channels) and static(anchors) and 4 < channels <= anchors and \
            anchors == _anchor_count(input_hw)

    @classmethod
    def classes_in(cls, info: ModelInfo) -> int | None:
        channels = info.output_shapes[0][1]
        return channels - 4 if static(channels) else None

    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        raw = outputs[0][index]  # [4 + nc, N]
        rows, confidence, class_id = best_class(raw[4:].T, min_confidence)
        return Candidates.build(cxcywh_to_xyxy(raw[:4, rows].T), confidence, class_id)


class UltralyticsEndToEndAdapter(Adapter):
    name = "ultralytics_e2e"
    description = "ultralytics NMS-free head (YOLOv10, YOLO26) [B, K, 6] xyxy, score, class"
    preprocess = ULTRALYTICS_PREPROCESS

    @classmethod
    def matches(cls, info: ModelInfo, input_hw: tuple[int, int]) -> bool:
        if not _one_rank3_output(info) or info.output_shapes[0][2] != 6:
            return False
        if info.ultralytics:
            return info.metadata.get("end2end") == "True" and info.metadata.get("head") != "RTDETRDecoder"
        return True

    @classmethod
    def classes_in(cls, info: ModelInfo) -> int | None:
        return None

    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        raw = outputs[0][index]  # [K, 6]
        keep = raw[:, 4] >= min_confidence
        return Candidates.build(raw[keep, :4], raw[keep, 4], np.rint(raw[keep, 5]), suppressed=True)


class RtdetrAdapter(Adapter):
    name = "rtdetr"
    description = "ultralytics RT-DETR [B, K, 6] or [B, 300, 4+nc], normalised cxcywh, no NMS"
    preprocess = PreprocessSpec(letterbox=False, rgb=True, scale=1 / 255)

    @classmethod
    def matches(cls, info: ModelInfo, input_hw: tuple[int, int]) -> bool:
        if not _one_rank3_output(info):
            return False
        if info.ultralytics:
            return info.metadata.get("head") == "RTDETRDecoder"
        last = info.output_shapes[0][2]
        return static(last) and last >= 6 and info.output_shapes[0][1] in (300, None)

    @classmethod
    def classes_in(cls, info: ModelInfo) -> int | None:
        last = info.output_shapes[0][2]
        named = info.metadata_names()
        if static(last) and last != 6:
            return last - 4
        return named

    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        raw = outputs[0][index]
        h, w = self.input_hw
        size = np.array([w, h, w, h], np.float32)
        if _compact(raw, self.num_classes):  # cx, cy, w, h, score, class
            keep = raw[:, 4] >= min_confidence
            boxes, confidence, class_id = raw[keep, :4], raw[keep, 4], np.rint(raw[keep, 5])
        else:  # one row per query with every class's score
            rows, confidence, class_id = best_class(raw[:, 4:], min_confidence)
            boxes = raw[rows, :4]
        return Candidates.build(cxcywh_to_xyxy(boxes * size), confidence, class_id, suppressed=True)


def _compact(raw: np.ndarray, num_classes: int) -> bool:
    """[K, 6] rows of (box, score, class) rather than (box, 2 class scores): class ids are whole numbers."""
    if raw.shape[1] != 6:
        return False
    return num_classes != 2 or bool(np.all(raw[:, 5] == np.rint(raw[:, 5])))


def _anchor_count(input_hw: tuple[int, int], strides: tuple[int, ...] = (8, 16, 32)) -> int:
    h, w = input_hw
    return sum((h // s) * (w // s) for s in strides)
