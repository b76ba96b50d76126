"""Run a model on still images exactly as the inference stage runs it on frames.

The steps are the daemon's public functions in the daemon's order (streamd.infer.stage
InferenceStage._run_batch): letterbox_into -> to_tensor -> LoadedModel.run -> adapter.decode ->
finish. Nothing here re-implements pre- or post-processing, so what is evaluated or timed is what
`streamd run` deploys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from streamd.infer.model import LoadedModel, load_model
from streamd.infer.postprocess import Candidates, PostprocessParams, finish
from streamd.infer.preprocess import letterbox_into, to_tensor


@dataclass
class Timings:
    """Milliseconds per batch for each step (bounded by the number of batches a run makes)."""

    preprocess: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)
    postprocess: list[float] = field(default_factory=list)


class Detector:
    """A loaded model plus reusable batch buffers; ``detect`` returns detections in source pixels."""

    def __init__(self, model: LoadedModel, params: PostprocessParams, max_batch: int = 1):
        self.model = model
        self.params = params
        self.max_batch = max_batch
        h, w = model.input_hw
        self._pixels = np.zeros((max_batch, h, w, 3), model.adapter.preprocess.pixel_dtype)
        self._tensor = np.zeros((max_batch, 3, h, w), model.input_dtype)
        self.timings = Timings()

    @classmethod
    def open(cls, path: str, params: PostprocessParams, max_batch: int = 1, adapter: str = "auto",
             input_size: tuple[int, int] | None = None, labels: str | None = None,
             providers: list[str] | None = None, threads: int = 0) -> Detector:
        return cls(load_model(path, adapter, input_size, labels, providers, intra_op_threads=threads), params,
                   max_batch)

    def detect(self, images: list[np.ndarray]) -> list[Candidates]:
        """BGR uint8 images (any sizes, at most ``max_batch``) -> one Candidates per image."""
        if not 0 < len(images) <= self.max_batch:
            raise ValueError(f"detect() takes 1..{self.max_batch} images, got {len(images)}")
        t0 = time.perf_counter()
        spec = self.model.adapter.preprocess
        transforms = [letterbox_into(image, self._pixels[i], spec) for i, image in enumerate(images)]
        n = len(images)
        tensor = to_tensor(self._pixels[:n], spec, self._tensor[:n])
        t1 = time.perf_counter()
        outputs = self.model.run(tensor)
        t2 = time.perf_counter()
        results = [
            finish(self.model.adapter.decode(outputs, i, self.params.confidence), self.params, transform,
                   image.shape[1], image.shape[0])
            for i, (image, transform) in enumerate(zip(images, transforms))
        ]
        t3 = time.perf_counter()
        self.timings.preprocess.append((t1 - t0) * 1000)
        self.timings.model.append((t2 - t1) * 1000)
        self.timings.postprocess.append((t3 - t2) * 1000)
        return results
