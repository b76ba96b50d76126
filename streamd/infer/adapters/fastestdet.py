"""FastestDet: one output [B, 5 + nc, H, W], one prediction per stride-16 cell, no anchors.

Per cell: ch0 objectness (sigmoided), ch1-2 dx, dy (tanh), ch3-4 w, h (sigmoid, fraction of the image),
ch5.. class scores (softmaxed). score = obj^0.6 * cls^0.4; cx = (gx + tanh(dx)) / W (likewise cy), all
relative to the (stretched) input. The published decoder follows with class-agnostic NMS at IoU 0.45:
set ``class_agnostic_nms: true`` and ``iou: 0.45`` in the pipeline to match it.
"""

from __future__ import annotations

import numpy as np

from streamd.infer.adapters.base import Adapter, ModelInfo, static
from streamd.infer.postprocess import Candidates, best_class
from streamd.infer.preprocess import PreprocessSpec

STRIDE = 16


class FastestDetAdapter(Adapter):
    name = "fastestdet"
    description = "FastestDet [B, 5+nc, H/16, W/16] anchor-free grid, NMS in streamd (agnostic in the original)"
    preprocess = PreprocessSpec(letterbox=False, rgb=False, scale=1 / 255)

    @classmethod
    def matches(cls, info: ModelInfo, input_hw: tuple[int, int]) -> bool:
        if len(info.output_shapes) != 1 or len(info.output_shapes[0]) != 4:
            return False
        _, channels, gh, gw = info.output_shapes[0]
        h, w = input_hw
        return static(channels) and channels > 5 and gh == h // STRIDE and gw == w // STRIDE

    @classmethod
    def classes_in(cls, info: ModelInfo) -> int | None:
        channels = info.output_shapes[0][1]
        return channels - 5 if static(channels) else None

    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        raw = outputs[0][index]  # [5 + nc, gh, gw]
        channels, gh, gw = raw.shape
        cells = raw.reshape(channels, -1).T.astype(np.float32)  # [gh * gw, 5 + nc], row-major cells
        obj = np.clip(cells[:, :1], 0, None)
        scores = obj**0.6 * np.clip(cells[:, 5:], 0, None) ** 0.4
        rows, confidence, class_id = best_class(scores, min_confidence)
        c = cells[rows]
        gy, gx = np.divmod(rows, gw)
        h, w = self.input_hw
        cx = (gx + np.tanh(c[:, 1])) / gw * w
        cy = (gy + np.tanh(c[:, 2])) / gh * h
        bw = 1 / (1 + np.exp(-c[:, 3])) * w
        bh = 1 / (1 + np.exp(-c[:, 4])) * h
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        return Candidates.build(xyxy, confidence, class_id)
