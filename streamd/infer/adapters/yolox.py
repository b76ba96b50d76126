"""YOLOX raw head: one output [B, N, 5 + nc] over stride-8/16/32 grids (x, y, w, h, obj, class scores)."""

from __future__ import annotations

import numpy as np

from streamd.infer.adapters.base import Adapter, ModelInfo
from streamd.infer.postprocess import Candidates
from streamd.infer.preprocess import PreprocessSpec

STRIDES = (8, 16, 32)


class YoloxAdapter(Adapter):
    name = "yolox"
    # YOLOX: BGR, raw 0..255, image at the top-left corner, pad 114.
    preprocess = PreprocessSpec(letterbox=True, pad_position="top_left", pad_value=114, rgb=False, scale=1.0)

    def __init__(self, input_hw: tuple[int, int], num_classes: int):
        super().__init__(input_hw, num_classes)
        grids, strides = [], []
        h, w = input_hw
        for stride in STRIDES:
            gy, gx = np.meshgrid(np.arange(h // stride), np.arange(w // stride), indexing="ij")
            grids.append(np.stack([gx, gy], axis=-1).reshape(-1, 2))
            strides.append(np.full((grids[-1].shape[0], 1), stride))
        self._grid = np.concatenate(grids).astype(np.float32)
        self._stride = np.concatenate(strides).astype(np.float32)

    @classmethod
    def matches(cls, info: ModelInfo, input_hw: tuple[int, int]) -> bool:
        if len(info.output_shapes) != 1 or len(info.output_shapes[0]) != 3:
            return False
        rows, channels = info.output_shapes[0][1], info.output_shapes[0][2]
        h, w = input_hw
        expected = sum((h // s) * (w // s) for s in STRIDES)
        return isinstance(channels, int) and channels > 5 and rows == expected

    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        raw = outputs[0][index]  # [N, 5 + nc]
        if raw.shape[0] != self._grid.shape[0]:
            raise ValueError(f"YOLOX output has {raw.shape[0]} rows, expected {self._grid.shape[0]} for input {self.input_hw}")
        cls_scores = raw[:, 5:] * raw[:, 4:5]
        class_id = cls_scores.argmax(axis=1)
        confidence = cls_scores[np.arange(len(class_id)), class_id]
        keep = confidence >= min_confidence
        rows = raw[keep]
        stride = self._stride[keep]
        centre = (rows[:, :2] + self._grid[keep]) * stride
        half = np.exp(rows[:, 2:4]) * stride / 2
        xyxy = np.concatenate([centre - half, centre + half], axis=1)
        return Candidates(xyxy.astype(np.float32), confidence[keep].astype(np.float32), class_id[keep].astype(np.int32))
