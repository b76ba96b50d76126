"""torchvision-style detectors (Faster R-CNN, RetinaNet, SSD, SSDlite, FCOS) exported with three outputs:
``boxes`` [N, 4] xyxy in input pixels, ``scores`` [N], ``labels`` [N] — or the same with a leading batch axis.

torchvision's models resize and normalise inside the graph and run their own NMS, so streamd only
stretches the frame to the model input (RGB, /255) and reads the three tensors. The stretch resizes float
pixels (``resize="linear_float"``), as torchvision's own transform does (bilinear, antialias=False): an
8-bit resize would round every pixel first. tools.export.frameworks.export_torchvision fixes the model's
transform to the input size, so the eager model stretches a frame exactly so too. Unbatched exports take a
[3, H, W] input: LoadedModel runs them one image at a time and pads the outputs to a common length.
"""

from __future__ import annotations

import numpy as np

from streamd.infer.adapters.base import Adapter, ModelInfo
from streamd.infer.postprocess import Candidates
from streamd.infer.preprocess import PreprocessSpec


class TorchvisionAdapter(Adapter):
    name = "torchvision"
    description = "torchvision detection export: boxes [N, 4] xyxy, scores [N], labels [N]; NMS in the model"
    preprocess = PreprocessSpec(letterbox=False, rgb=True, scale=1 / 255, resize="linear_float")

    @classmethod
    def _indices(cls, info: ModelInfo) -> tuple[int, int, int] | None:
        if len(info.output_shapes) != 3:
            return None
        named = (info.output_index("boxes"), info.output_index("scores"), info.output_index("labels"))
        if None not in named:
            return named  # type: ignore[return-value]
        # Unnamed: the one [.., 4] output is the boxes; scores then labels follow, as torchvision returns them.
        ranks = [len(s) for s in info.output_shapes]
        boxes = [i for i, s in enumerate(info.output_shapes) if s and s[-1] == 4]
        if len(boxes) != 1 or ranks[boxes[0]] not in (2, 3):
            return None
        rest = [i for i in range(3) if i != boxes[0]]
        if any(ranks[i] != ranks[boxes[0]] - 1 for i in rest):
            return None
        return boxes[0], rest[0], rest[1]

    @classmethod
    def matches(cls, info: ModelInfo, input_hw: tuple[int, int]) -> bool:
        return cls._indices(info) is not None

    @classmethod
    def classes_in(cls, info: ModelInfo) -> int | None:
        return None

    def __init__(self, input_hw: tuple[int, int], num_classes: int, preprocess: PreprocessSpec | None = None,
                 outputs: tuple[int, int, int] = (0, 1, 2)):
        super().__init__(input_hw, num_classes, preprocess)
        self._boxes, self._scores, self._labels = outputs

    @classmethod
    def for_model(cls, info: ModelInfo, input_hw: tuple[int, int], num_classes: int,
                  preprocess: PreprocessSpec | None = None) -> TorchvisionAdapter:
        return cls(input_hw, num_classes, preprocess, cls._indices(info) or (0, 1, 2))

    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        boxes = outputs[self._boxes][index]  # LoadedModel gives every output a batch axis
        scores = outputs[self._scores][index]
        labels = outputs[self._labels][index]
        keep = scores >= min_confidence  # padding rows are NaN: never kept
        return Candidates.build(boxes[keep], scores[keep], labels[keep], suppressed=True)
