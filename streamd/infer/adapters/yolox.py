"""YOLOX raw head: one output [B, N, 5 + nc] over stride-8/16/32 grids (x, y, w, h, obj, class scores)."""

from __future__ import annotations

import numpy as np

from streamd.infer.adapters.base import Adapter, ModelInfo, static
from streamd.infer.postprocess import Candidates, best_class
from streamd.infer.preprocess import PreprocessSpec

STRIDES = (8, 16, 32)


class YoloxAdapter(Adapter):
    name = "yolox"
    description = "YOLOX raw head [B, N, 5+nc] over stride 8/16/32 grids, NMS in streamd"
    # YOLOX: BGR, raw 0..255, image at the top-left corner, pad 114.
    preprocess = PreprocessSpec(letterbox=True, pad_position="top_left", pad_value=114, rgb=False, scale=1.0)

    def __init__(self, input_hw: tuple[int, int], num_classes: int, preprocess: PreprocessSpec | None = None):
        super().__init__(input_hw, num_classes, preprocess)
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
        return static(channels) and channels > 5 and rows == expected

    @classmethod
    def classes_in(cls, info: ModelInfo) -> int | None:
        channels = info.output_shapes[0][2]
        return channels - 5 if static(channels) else None

    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        raw = outputs[0][index]  # [N, 5 + nc]
        if raw.shape[0] != self._grid.shape[0]:
            raise ValueError(f"YOLOX output has {raw.shape[0]} rows, expected {self._grid.shape[0]} for input {self.input_hw}")
        rows, confidence, class_id = best_class(raw[:, 5:] * raw[:, 4:5], min_confidence)
        picked = raw[rows]
        stride = self._stride[rows]
        centre = (picked[:, :2] + self._grid[rows]) * stride
        half = np.exp(picked[:, 2:4]) * stride / 2
        return Candidates.build(np.concatenate([centre - half, centre + half], axis=1), confidence, class_id)
