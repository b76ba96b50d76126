"""RF-DETR (and LW-DETR / DETR-style exports with sigmoid class logits): outputs ``dets`` [B, Q, 4] of
normalised cx, cy, w, h and ``labels`` [B, Q, C] of class logits.

Decoded like rfdetr's PostProcess: sigmoid over every (query, class) pair, the top ``TOP_K`` pairs by
score (a query may appear with several classes), boxes scaled to the input. The model needs no NMS.
Pre-processing as rfdetr's predict: RGB, /255, ImageNet mean/std, stretched to the square resolution with
bilinear interpolation on float pixels, no antialiasing (rfdetr 1.11's predict resizes with torchvision
``resize(antialias=False)``, rfdetr issue #1203; here ``resize="linear_float"``). Rounding the resized pixels
to 8 bits instead moved scores by up to 0.3 on real frames in the reference test: the two-stage query
selection keeps other queries.
"""

from __future__ import annotations

import numpy as np

from streamd.infer.adapters.base import Adapter, ModelInfo, static
from streamd.infer.postprocess import Candidates, cxcywh_to_xyxy
from streamd.infer.preprocess import PreprocessSpec

TOP_K = 300  # rfdetr's num_select


class RfdetrAdapter(Adapter):
    name = "rfdetr"
    description = "RF-DETR / LW-DETR dets [B, Q, 4] + labels [B, Q, C] logits: sigmoid, top-k, no NMS"
    preprocess = PreprocessSpec(letterbox=False, rgb=True, scale=1 / 255,
                                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="linear_float")

    @classmethod
    def _indices(cls, info: ModelInfo) -> tuple[int, int] | None:
        """(boxes output, logits output) when the outputs have the layout."""
        if len(info.output_shapes) != 2 or any(len(s) != 3 for s in info.output_shapes):
            return None
        boxes = info.output_index("dets", "pred_boxes", "boxes")
        logits = info.output_index("labels", "pred_logits", "logits")
        if boxes is None or logits is None or boxes == logits:
            four = [i for i, s in enumerate(info.output_shapes) if s[2] == 4]
            if len(four) != 1:
                return None
            boxes, logits = four[0], 1 - four[0]
        b, q = info.output_shapes[boxes], info.output_shapes[logits]
        if b[2] != 4 or not static(q[2]) or (static(b[1]) and static(q[1]) and b[1] != q[1]):
            return None
        return boxes, logits

    @classmethod
    def matches(cls, info: ModelInfo, input_hw: tuple[int, int]) -> bool:
        return cls._indices(info) is not None

    @classmethod
    def classes_in(cls, info: ModelInfo) -> int | None:
        found = cls._indices(info)
        return info.output_shapes[found[1]][2] if found else None

    def __init__(self, input_hw: tuple[int, int], num_classes: int, preprocess: PreprocessSpec | None = None,
                 outputs: tuple[int, int] = (0, 1)):
        super().__init__(input_hw, num_classes, preprocess)
        self._boxes, self._logits = outputs

    @classmethod
    def for_model(cls, info: ModelInfo, input_hw: tuple[int, int], num_classes: int,
                  preprocess: PreprocessSpec | None = None) -> RfdetrAdapter:
        return cls(input_hw, num_classes, preprocess, cls._indices(info) or (0, 1))

    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        boxes = outputs[self._boxes][index]  # [Q, 4]
        logits = outputs[self._logits][index].astype(np.float32)  # [Q, C]
        prob = (1 / (1 + np.exp(-logits))).reshape(-1)
        k = min(TOP_K, prob.size)
        top = np.argpartition(-prob, k - 1)[:k]
        top = top[prob[top] >= min_confidence]
        query, class_id = np.divmod(top, logits.shape[1])
        h, w = self.input_hw
        xyxy = cxcywh_to_xyxy(boxes[query].astype(np.float32)) * np.array([w, h, w, h], np.float32)
        return Candidates.build(xyxy, prob[top], class_id, suppressed=True)
