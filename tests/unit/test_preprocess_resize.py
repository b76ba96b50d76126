"""streamd.infer.preprocess resize modes: linear (8-bit INTER_LINEAR, the default and ultralytics' own),
linear_float (PyTorch's bilinear, antialias=False, on float pixels: rfdetr and torchvision) and area.

The PyTorch convention is written out here in NumPy (half-pixel centres, edge clamping, no low-pass
filter: what torch.nn.functional.interpolate(mode="bilinear", align_corners=False) computes) so the
check needs no torch in the daemon's environment."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamd.infer.adapters import RfdetrAdapter, TorchvisionAdapter, UltralyticsAdapter, YoloxAdapter
from streamd.infer.model import load_model
from streamd.infer.preprocess import PreprocessSpec, letterbox_into, to_tensor


def torch_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """F.interpolate(bilinear, align_corners=False, antialias=False) of an H x W x C image, in float64."""
    src = image.astype(np.float64)
    h, w = src.shape[:2]

    def axis(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(out) + 0.5) * (size / out) - 0.5, 0, size - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, size - 1), pos - lo

    y0, y1, fy = axis(out_h, h)
    x0, x1, fx = axis(out_w, w)
    rows = src[y0] * (1 - fy)[:, None, None] + src[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


@pytest.fixture
def frame() -> np.ndarray:
    """A textured 540 x 960 frame (noise plus gradients: every resize kernel difference shows)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:540, 0:960]
    base = np.stack([x * 255 / 959, y * 255 / 539, (x + y) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dst_hw", [(256, 256), (384, 384), (320, 640), (1080, 1920)])
def test_linear_float_equals_pytorch_bilinear(frame: np.ndarray, dst_hw: tuple[int, int]) -> None:
    spec = PreprocessSpec(letterbox=False, rgb=False, resize="linear_float")
    dst = np.zeros((*dst_hw, 3), spec.pixel_dtype)
    letterbox_into(frame, dst, spec)
    assert dst.dtype == np.float32
    expected = torch_bilinear(frame, *dst_hw)
    assert np.abs(dst - expected).max() < 1e-3  # grey levels; float32 rounding only


def test_eight_bit_linear_is_not_pytorch_bilinear(frame: np.ndarray) -> None:
    """Why linear_float exists: the 8-bit path rounds every pixel (and OpenCV's fixed-point weights add
    more), about half a grey level off PyTorch's float result."""
    dst = np.zeros((256, 256, 3), np.uint8)
    letterbox_into(frame, dst, PreprocessSpec(letterbox=False, rgb=False, resize="linear"))
    error = np.abs(dst - torch_bilinear(frame, 256, 256))
    assert 0.4 < error.max() <= 1.0


def test_linear_default_is_unchanged_opencv_inter_linear(frame: np.ndarray) -> None:
    spec = PreprocessSpec(letterbox=False, rgb=False)
    assert spec.resize == "linear" and spec.pixel_dtype == np.uint8
    dst = np.zeros((256, 384, 3), np.uint8)
    letterbox_into(frame, dst, spec)
    np.testing.assert_array_equal(dst, cv2.resize(frame, (384, 256), interpolation=cv2.INTER_LINEAR))


def test_area_is_opencv_inter_area(frame: np.ndarray) -> None:
    dst = np.zeros((256, 256, 3), np.uint8)
    letterbox_into(frame, dst, PreprocessSpec(letterbox=False, rgb=False, resize="area"))
    np.testing.assert_array_equal(dst, cv2.resize(frame, (256, 256), interpolation=cv2.INTER_AREA))


def test_linear_float_into_an_eight_bit_buffer_rounds(frame: np.ndarray) -> None:
    """A caller that still allocates uint8 gets the float result rounded to the nearest level, not truncated."""
    dst = np.zeros((256, 256, 3), np.uint8)
    letterbox_into(frame, dst, PreprocessSpec(letterbox=False, rgb=False, resize="linear_float"))
    np.testing.assert_array_equal(dst, np.clip(np.rint(torch_bilinear(frame, 256, 256)), 0, 255))


def test_linear_float_letterbox_and_rgb(frame: np.ndarray) -> None:
    spec = PreprocessSpec(letterbox=True, pad_position="center", pad_value=114, rgb=True, resize="linear_float")
    dst = np.zeros((320, 320, 3), spec.pixel_dtype)
    t = letterbox_into(frame, dst, spec)
    assert (t.pad_x, t.pad_y) == (0.0, 70.0)  # 960 x 540 -> 320 x 180, centred
    assert (dst[:70] == 114).all() and (dst[250:] == 114).all()
    expected = torch_bilinear(frame, 180, 320)[..., ::-1]
    assert np.abs(dst[70:250] - expected).max() < 1e-3


def test_to_tensor_takes_float_pixels() -> None:
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 4, 5, 3)).astype(np.float32)
    spec = PreprocessSpec(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="linear_float")
    out = to_tensor(pixels, spec, np.zeros((2, 3, 4, 5), np.float32))
    mean = np.array(spec.mean).reshape(1, 3, 1, 1)
    std = np.array(spec.std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out, (pixels.transpose(0, 3, 1, 2) / 255 - mean) / std, rtol=1e-5, atol=1e-6)


def test_unknown_resize_is_refused() -> None:
    with pytest.raises(ValueError, match="resize 'cubic' is not one of linear, linear_float, area"):
        PreprocessSpec(resize="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resize 'bogus'"):
        PreprocessSpec().with_overrides({"resize": "bogus"})
    assert PreprocessSpec().with_overrides({"resize": "area"}).resize == "area"


def test_adapter_defaults() -> None:
    """PyTorch-side families resize float pixels; ultralytics and YOLOX keep the 8-bit path (exact for them)."""
    assert RfdetrAdapter.preprocess.resize == "linear_float"
    assert TorchvisionAdapter.preprocess.resize == "linear_float"
    assert UltralyticsAdapter.preprocess.resize == "linear"
    assert YoloxAdapter.preprocess.resize == "linear"


def test_pipeline_override_reaches_the_model(tmp_path) -> None:
    """load_model's preprocess overrides set the resize mode like any other field (and refuse bad ones)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["dets_in"], ["dets"]), helper.make_node("Identity", ["labels_in"], ["labels"])],
        "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, 10, 4]),
         helper.make_tensor_value_info("labels", TensorProto.FLOAT, [1, 10, 3])],
        initializer=[helper.make_tensor("dets_in", TensorProto.FLOAT, [1, 10, 4], [0.5] * 40),
                     helper.make_tensor("labels_in", TensorProto.FLOAT, [1, 10, 3], [0.0] * 30)],
    )
    path = tmp_path / "detr.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert load_model(str(path)).adapter.preprocess.resize == "linear_float"
    assert load_model(str(path), preprocess={"resize": "linear"}).adapter.preprocess.resize == "linear"
    from streamd.errors import ModelError

    with pytest.raises(ModelError, match="resize 'nearest'"):
        load_model(str(path), preprocess={"resize": "nearest"})
