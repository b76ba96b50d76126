"""ultralytics YOLOv5u/v8/v9/11 detection export: one output [B, 4 + nc, N] of cx, cy, w, h, class scores."""

from __future__ import annotations

import numpy as np

from streamd.infer.adapters.base import Adapter, ModelInfo
from streamd.infer.postprocess import Candidates, cxcywh_to_xyxy
from streamd.infer.preprocess import PreprocessSpec


class UltralyticsAdapter(Adapter):
    name = "ultralytics"
    preprocess = PreprocessSpec(letterbox=True, pad_position="center", pad_value=114, rgb=True, scale=1 / 255)

    @classmethod
    def matches(cls, info: ModelInfo, input_hw: tuple[int, int]) -> bool:
        if len(info.output_shapes) != 1 or len(info.output_shapes[0]) != 3:
            return False
        channels, anchors = info.output_shapes[0][1], info.output_shapes[0][2]
        if info.metadata.get("task", "detect") != "detect":
            return False
        if "names" in info.metadata and isinstance(channels, int):
            return channels > 4 and (not isinstance(anchors, int) or anchors > channels)
        # Without metadata: channels-first with many more anchors than channels.
        return isinstance(channels, int) and isinstance(anchors, int) and 4 < channels < anchors and \
            anchors == _anchor_count(input_hw)

    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        raw = outputs[0][index]  # [4 + nc, N]
        scores = raw[4:]
        class_id = scores.argmax(axis=0)
        confidence = scores[class_id, np.arange(scores.shape[1])]
        keep = confidence >= min_confidence
        boxes = raw[:4, keep].T
        return Candidates(cxcywh_to_xyxy(boxes).astype(np.float32), confidence[keep].astype(np.float32),
                          class_id[keep].astype(np.int32))


def _anchor_count(input_hw: tuple[int, int], strides: tuple[int, ...] = (8, 16, 32)) -> int:
    h, w = input_hw
    return sum((h // s) * (w // s) for s in strides)
