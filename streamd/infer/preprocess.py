"""Letterbox / plain-resize pre-processing into a reusable batch buffer, and mapping boxes back to the source.

Every model family wants its pixels differently (letterbox or stretch, pad position, channel order,
scaling, mean/std); a ``PreprocessSpec`` says which, adapters carry the family's defaults and a
pipeline may override single fields (``with_overrides``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import cv2
import numpy as np

PadPosition = Literal["center", "top_left"]


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model family wants its input. Adapters supply defaults."""

    letterbox: bool = True  # False: plain resize to the input size (aspect not kept)
    pad_position: PadPosition = "center"
    pad_value: int = 114
    rgb: bool = True  # channel order the model expects (frames arrive as BGR)
    scale: float = 1.0 / 255.0  # multiplied into the pixel values
    mean: tuple[float, float, float] | None = None  # subtracted after scaling, in the model's channel order
    std: tuple[float, float, float] | None = None  # divided by after the mean

    def with_overrides(self, overrides: dict[str, Any] | None) -> PreprocessSpec:
        """This spec with the fields a pipeline set (None values mean "keep the adapter's default")."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing fields {unknown}; known: {sorted(known)}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
        return replace(self, **values)


@dataclass(frozen=True)
class Transform:
    """source -> model input: x_in = x_src * scale_x + pad_x (likewise y)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_source(self, xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
        out = np.empty_like(xyxy)
        out[:, [0, 2]] = (xyxy[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (xyxy[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
        return out


def letterbox_into(image: np.ndarray, dst: np.ndarray, spec: PreprocessSpec) -> Transform:
    """Resize ``image`` (H x W x 3 BGR) into ``dst`` (h x w x 3 uint8) as ``spec`` says; returns the transform."""
    dst_h, dst_w = dst.shape[:2]
    src_h, src_w = image.shape[:2]
    if not spec.letterbox:
        dst[...] = cv2.resize(image, (dst_w, dst_h), interpolation=cv2.INTER_LINEAR)
        transform = Transform(dst_w / src_w, dst_h / src_h, 0.0, 0.0)
    else:
        ratio = min(dst_w / src_w, dst_h / src_h)
        new_w, new_h = max(1, round(src_w * ratio)), max(1, round(src_h * ratio))
        if spec.pad_position == "center":
            left, top = (dst_w - new_w) // 2, (dst_h - new_h) // 2
        else:
            left, top = 0, 0
        dst[...] = spec.pad_value
        dst[top : top + new_h, left : left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        # the scale each axis really got (sides are rounded to whole pixels), as ultralytics maps boxes back
        transform = Transform(new_w / src_w, new_h / src_h, float(left), float(top))
    if spec.rgb:
        dst[...] = dst[..., ::-1]
    return transform


def to_tensor(batch: np.ndarray, spec: PreprocessSpec, out: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> NCHW scaled (then mean/std normalised), written into ``out`` (preallocated, float32 or
    float16: the dtype of ``out`` decides, so FP16 models get their input without another copy)."""
    np.multiply(batch.transpose(0, 3, 1, 2), np.float32(spec.scale), out=out, casting="unsafe")
    if spec.mean is not None:
        out -= np.asarray(spec.mean, out.dtype).reshape(1, 3, 1, 1)
    if spec.std is not None:
        out /= np.asarray(spec.std, out.dtype).reshape(1, 3, 1, 1)
    return out
