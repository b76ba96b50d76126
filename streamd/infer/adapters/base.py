"""What every model adapter is: a decoder from one model family's raw outputs to candidate boxes.

An adapter knows its family's output layout and pre-processing defaults, nothing else: thresholds,
NMS, the class filter and the mapping back to source pixels are shared (streamd.infer.postprocess).
"""

from __future__ import annotations

import ast
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TypeGuard

import numpy as np

from streamd.infer.postprocess import Candidates
from streamd.infer.preprocess import PreprocessSpec

Shape = tuple[int | None, ...]  # ints for static axes, None for dynamic ones


@dataclass(frozen=True)
class ModelInfo:
    """What the model file says about itself."""

    path: str
    input_name: str
    input_shape: Shape  # as declared: ints for static axes
    output_shapes: list[Shape]
    metadata: dict[str, str] = field(default_factory=dict)
    output_names: list[str] = field(default_factory=list)
    input_type: str = "tensor(float)"  # ONNX Runtime's type string of the image input

    @property
    def static_batch(self) -> int | None:
        if self.unbatched:
            return 1
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None

    @property
    def unbatched(self) -> bool:
        """A [3, H, W] input (torchvision-style exports): one image per run, outputs without a batch axis."""
        return len(self.input_shape) == 3

    @property
    def ultralytics(self) -> bool:
        """Exported by ultralytics (its metadata carries these keys)."""
        return "names" in self.metadata and ("task" in self.metadata or "stride" in self.metadata)

    def metadata_names(self) -> int | None:
        """How many class names the metadata lists (None when it lists none or they cannot be read)."""
        raw = self.metadata.get("names")
        if not raw:
            return None
        try:
            parsed = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return None
        return len(parsed) if isinstance(parsed, (dict, list, tuple)) else None

    def output_index(self, *names: str) -> int | None:
        """Index of the first output whose name is one of ``names`` (case-insensitive)."""
        lowered = [n.lower() for n in self.output_names]
        for name in names:
            if name in lowered:
                return lowered.index(name)
        return None


def static(dim: int | None) -> TypeGuard[int]:
    return isinstance(dim, int) and dim > 0


class Adapter(ABC):
    name: str
    description: str = ""
    preprocess = PreprocessSpec()

    def __init__(self, input_hw: tuple[int, int], num_classes: int, preprocess: PreprocessSpec | None = None):
        self.input_hw = input_hw
        self.num_classes = num_classes
        if preprocess is not None:  # pipeline overrides on top of the family's defaults
            self.preprocess = preprocess

    @classmethod
    def for_model(cls, info: ModelInfo, input_hw: tuple[int, int], num_classes: int,
                  preprocess: PreprocessSpec | None = None) -> Adapter:
        """An instance for this model file (adapters whose outputs can come in any order find theirs here)."""
        return cls(input_hw, num_classes, preprocess)

    @classmethod
    @abstractmethod
    def matches(cls, info: ModelInfo, input_hw: tuple[int, int]) -> bool:
        """Whether this adapter can read the model's outputs (used for auto-detection)."""

    @classmethod
    @abstractmethod
    def classes_in(cls, info: ModelInfo) -> int | None:
        """Number of classes the output layout reveals, None when only names (metadata, labels) can tell."""

    @abstractmethod
    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        """Candidates of batch item ``index`` in model-input pixels, at or above ``min_confidence``."""
