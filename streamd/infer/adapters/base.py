from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from streamd.infer.postprocess import Candidates
from streamd.infer.preprocess import PreprocessSpec


@dataclass(frozen=True)
class ModelInfo:
    """What the model file says about itself."""

    path: str
    input_name: str
    input_shape: tuple[int | str | None, ...]  # as declared: ints for static axes
    output_shapes: list[tuple[int | str | None, ...]]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def static_batch(self) -> int | None:
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None


class Adapter(ABC):
    name: str
    preprocess = PreprocessSpec()

    def __init__(self, input_hw: tuple[int, int], num_classes: int):
        self.input_hw = input_hw
        self.num_classes = num_classes

    @classmethod
    @abstractmethod
    def matches(cls, info: ModelInfo, input_hw: tuple[int, int]) -> bool:
        """Whether this adapter can read the model's outputs (used for auto-detection)."""

    @abstractmethod
    def decode(self, outputs: list[np.ndarray], index: int, min_confidence: float) -> Candidates:
        """Candidates of batch item ``index`` in model-input pixels, at or above ``min_confidence``."""
