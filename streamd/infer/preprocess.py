"""Letterbox / plain-resize pre-processing into a reusable batch buffer, and mapping boxes back to the source.

Every model family wants its pixels differently (letterbox or stretch, pad position, channel order,
scaling, mean/std, how the frame is resampled); a ``PreprocessSpec`` says which, adapters carry the
family's defaults and a pipeline may override single fields (``with_overrides``).

Resampling matters more than it looks. ultralytics resizes 8-bit pixels with OpenCV's INTER_LINEAR, so
``resize="linear"`` into a uint8 buffer is exact for it and the cheapest path. PyTorch-side frameworks
(rfdetr's predict, torchvision's detection transform) resize float pixels with bilinear interpolation,
half-pixel centres and no antialiasing: the same kernel as INTER_LINEAR, but without rounding every
resized pixel to a whole grey level. That rounding (up to 0.5 grey level, plus OpenCV's 11-bit fixed-point
weights) is enough to change which queries a DETR's top-k query selection keeps, so those adapters default
to ``resize="linear_float"``: OpenCV INTER_LINEAR on float32 pixels, which agrees with
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` to ~1e-4 grey levels, written
into a float32 buffer (``PreprocessSpec.pixel_dtype``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

import cv2
import numpy as np

from streamd.ipc.ring import ModelInputRequest

PadPosition = Literal["center", "top_left"]
Resize = Literal["linear", "linear_float", "area"]
RESIZE_MODES = get_args(Resize)


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
    # linear: OpenCV INTER_LINEAR on 8-bit pixels (ultralytics, YOLOX); linear_float: the same kernel on float
    # pixels, no rounding (PyTorch bilinear, antialias=False: rfdetr, torchvision); area: OpenCV INTER_AREA on
    # 8-bit pixels, an antialiased downscale close to (not equal to) PIL / torchvision antialias=True
    resize: Resize = "linear"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")

    @property
    def pixel_dtype(self) -> type[np.generic]:
        """dtype of the resized-pixel buffer (``letterbox_into``'s ``dst``): float32 keeps linear_float's precision."""
        return np.float32 if self.resize == "linear_float" else np.uint8

    def with_overrides(self, overrides: dict[str, Any] | None) -> PreprocessSpec:
        """This spec with the fields a pipeline set (None values mean "keep the adapter's default")."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing fields {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()
                                  if v is not None}
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


def _resize(image: np.ndarray, size: tuple[int, int], spec: PreprocessSpec, dst_dtype: np.dtype) -> np.ndarray:
    """``image`` resized to ``size`` (w, h) as ``spec.resize`` says, in a dtype assignable to ``dst_dtype``."""
    if spec.resize == "linear":
        return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if spec.resize == "area":
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    resized = cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    if dst_dtype == np.uint8:  # no float buffer given: round rather than truncate on assignment
        return np.clip(np.rint(resized), 0, 255, out=resized).astype(np.uint8)
    return resized


def letterbox_geometry(src_w: int, src_h: int, dst_w: int, dst_h: int,
                       spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """Where the resized frame goes in the model input: (left, top, new_w, new_h)."""
    if not spec.letterbox:
        return 0, 0, dst_w, dst_h
    ratio = min(dst_w / src_w, dst_h / src_h)
    new_w, new_h = max(1, round(src_w * ratio)), max(1, round(src_h * ratio))
    if spec.pad_position == "center":
        return (dst_w - new_w) // 2, (dst_h - new_h) // 2, new_w, new_h
    return 0, 0, new_w, new_h


def letterbox_into(image: np.ndarray, dst: np.ndarray, spec: PreprocessSpec) -> Transform:
    """Resize ``image`` (H x W x 3 BGR uint8) into ``dst`` (h x w x 3, of ``spec.pixel_dtype``) as ``spec`` says;
    returns the transform. A uint8 ``dst`` with ``resize="linear_float"`` gets the float result rounded."""
    dst_h, dst_w = dst.shape[:2]
    src_h, src_w = image.shape[:2]
    left, top, new_w, new_h = letterbox_geometry(src_w, src_h, dst_w, dst_h, spec)
    if not spec.letterbox:
        dst[...] = _resize(image, (dst_w, dst_h), spec, dst.dtype)
    else:
        dst[...] = spec.pad_value
        dst[top : top + new_h, left : left + new_w] = _resize(image, (new_w, new_h), spec, dst.dtype)
    if spec.rgb:
        dst[...] = dst[..., ::-1]
    # the scale each axis really got (sides are rounded to whole pixels), as ultralytics maps boxes back
    return Transform(new_w / src_w, new_h / src_h, float(left), float(top))


Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in source pixels, x2 and y2 exclusive


def roi_pixels(roi: tuple[tuple[float, float], tuple[float, float]]) -> Box:
    """A pipeline's ``roi`` as whole pixels on even coordinates (4:2:0 chroma is cropped with it): grown, never
    shrunk, to the even pixel grid."""
    (x1, y1), (x2, y2) = roi
    return (max(0, math.floor(x1) // 2 * 2), max(0, math.floor(y1) // 2 * 2),
            max(2, -(-math.ceil(x2) // 2) * 2), max(2, -(-math.ceil(y2) // 2) * 2))


def clip_box(box: Box | None, width: int, height: int) -> Box | None:
    """``box`` within a ``width`` x ``height`` frame; None for the whole frame (no box, or one covering it, or
    one entirely outside it: better the whole frame than nothing)."""
    if box is None:
        return None
    x1, y1 = min(box[0], width), min(box[1], height)
    x2, y2 = min(box[2], width), min(box[3], height)
    if x2 - x1 < 2 or y2 - y1 < 2 or (x1, y1, x2, y2) == (0, 0, width, height):
        return None
    return x1, y1, x2, y2


def crop_i420(yuv: np.ndarray, width: int, height: int, box: Box) -> np.ndarray:
    """The ``box`` (even coordinates) of an I420 frame (``height * 3 / 2`` x ``width``) as an I420 frame."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    flat = yuv.reshape(-1)
    plane = width * height
    out = np.empty(w * h * 3 // 2, np.uint8)
    out[: w * h].reshape(h, w)[...] = flat[:plane].reshape(height, width)[y1:y2, x1:x2]
    quarter = plane // 4
    for i in range(2):  # U, then V: half the resolution on both axes
        src = flat[plane + i * quarter: plane + (i + 1) * quarter].reshape(height // 2, width // 2)
        out[w * h + i * (w * h // 4): w * h + (i + 1) * (w * h // 4)].reshape(h // 2, w // 2)[...] = \
            src[y1 // 2: y2 // 2, x1 // 2: x2 // 2]
    return out.reshape(h * 3 // 2, w)


def crop_into(image: np.ndarray, box: Box | None, dst: np.ndarray, spec: PreprocessSpec) -> Transform:
    """:func:`letterbox_into` of the ``box`` of ``image`` (the whole frame when None), its transform still
    from source pixels."""
    clipped = clip_box(box, image.shape[1], image.shape[0])
    if clipped is None:
        return letterbox_into(image, dst, spec)
    x1, y1, x2, y2 = clipped
    t = letterbox_into(image[y1:y2, x1:x2], dst, spec)
    return Transform(t.scale_x, t.scale_y, t.pad_x - x1 * t.scale_x, t.pad_y - y1 * t.scale_y)


def prepares_in_decoder(spec: PreprocessSpec) -> bool:
    """True when the decoder can make this model's input (8-bit pixels; ``linear_float`` stays in inference)."""
    return spec.pixel_dtype == np.uint8


def model_input_request(spec: PreprocessSpec, input_hw: tuple[int, int]) -> ModelInputRequest:
    """What the inference stage asks a decoder for (FrameRing.request_model_input) for this model."""
    return ModelInputRequest(width=input_hw[1], height=input_hw[0], letterbox=spec.letterbox,
                             top_left=spec.pad_position == "top_left", pad_value=spec.pad_value, rgb=spec.rgb,
                             area=spec.resize == "area")


def spec_of_request(request: ModelInputRequest) -> PreprocessSpec:
    return PreprocessSpec(letterbox=request.letterbox, pad_position="top_left" if request.top_left else "center",
                          pad_value=request.pad_value, rgb=request.rgb, resize="area" if request.area else "linear")


def letterbox_i420_into(request: ModelInputRequest, yuv: np.ndarray, width: int, height: int,
                        dst: np.ndarray) -> tuple[float, float, float, float]:
    """The decoder's half of "decode into what the model needs": one I420 frame (``height * 3 / 2`` x ``width``)
    converted to the model's channel order and letterboxed into ``dst`` (the ring slot's model area, uint8
    ``request.height x request.width x 3``). Pixel for pixel what :func:`crop_into` makes of
    :meth:`FrameRing.read`'s BGR frame (the same OpenCV conversion, the same resize). Returns the transform.
    A request with a crop converts only that part of the frame."""
    box = clip_box(request.crop, width, height)
    if box is not None:
        sx, sy, px, py = letterbox_i420_into(replace(request, crop=None), crop_i420(yuv, width, height, box),
                                             box[2] - box[0], box[3] - box[1], dst)
        return sx, sy, px - box[0] * sx, py - box[1] * sy
    spec = spec_of_request(request)
    full = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420 if request.rgb else cv2.COLOR_YUV2BGR_I420)
    left, top, new_w, new_h = letterbox_geometry(width, height, request.width, request.height, spec)
    interpolation = cv2.INTER_AREA if request.area else cv2.INTER_LINEAR
    if (new_w, new_h) != (request.width, request.height):
        dst[:top] = request.pad_value
        dst[top + new_h:] = request.pad_value
        dst[top : top + new_h, :left] = request.pad_value
        dst[top : top + new_h, left + new_w:] = request.pad_value
    region = dst[top : top + new_h, left : left + new_w]
    if (new_w, new_h) == (width, height):
        region[...] = full
    else:
        cv2.resize(full, (new_w, new_h), dst=region, interpolation=interpolation)
    return new_w / width, new_h / height, float(left), float(top)


def to_tensor(batch: np.ndarray, spec: PreprocessSpec, out: np.ndarray) -> np.ndarray:
    """uint8 (or float32, see ``PreprocessSpec.pixel_dtype``) NHWC -> NCHW scaled (then mean/std normalised),
    written into ``out`` (preallocated, float32 or float16: the dtype of ``out`` decides, so FP16 models get
    their input without another copy)."""
    np.multiply(batch.transpose(0, 3, 1, 2), np.float32(spec.scale), out=out, casting="unsafe")
    if spec.mean is not None:
        out -= np.asarray(spec.mean, out.dtype).reshape(1, 3, 1, 1)
    if spec.std is not None:
        out /= np.asarray(spec.std, out.dtype).reshape(1, 3, 1, 1)
    return out
