"""streamd.infer.preprocess: letterbox / resize into the batch buffer and mapping boxes back."""

from __future__ import annotations

import numpy as np
import pytest

from streamd.infer.preprocess import PreprocessSpec, Transform, letterbox_into, to_tensor

BGR_ONLY = PreprocessSpec(rgb=False)


def solid(width: int, height: int, bgr: tuple[int, int, int] = (10, 20, 30)) -> np.ndarray:
    img = np.empty((height, width, 3), np.uint8)
    img[...] = bgr
    return img


@pytest.mark.parametrize(
    ("src_wh", "dst_hw", "pad", "expected"),
    [
        # (width, height) -> (h, w): ratio, left, top, new_w, new_h
        ((128, 96), (64, 64), "center", (0.5, 0, 8, 64, 48)),
        ((128, 96), (64, 64), "top_left", (0.5, 0, 0, 64, 48)),
        ((96, 128), (64, 64), "center", (0.5, 8, 0, 48, 64)),
        ((96, 128), (64, 64), "top_left", (0.5, 0, 0, 48, 64)),
        ((960, 540), (416, 416), "top_left", (416 / 960, 0, 0, 416, 234)),
        ((960, 540), (416, 416), "center", (416 / 960, 0, 91, 416, 234)),
        ((32, 32), (64, 96), "center", (2.0, 16, 0, 64, 64)),  # upscaling into a wide input
    ],
)
def test_letterbox_geometry_and_padding(src_wh, dst_hw, pad, expected) -> None:
    ratio, left, top, new_w, new_h = expected
    src = solid(*src_wh)
    dst = np.zeros((*dst_hw, 3), np.uint8)
    t = letterbox_into(src, dst, PreprocessSpec(pad_position=pad, pad_value=114, rgb=False))
    assert t == Transform(pytest.approx(ratio), pytest.approx(ratio), float(left), float(top))
    inside = np.zeros(dst_hw, bool)
    inside[top : top + new_h, left : left + new_w] = True
    assert (dst[inside] == (10, 20, 30)).all()
    assert (dst[~inside] == 114).all()


def test_pad_value_is_used() -> None:
    dst = np.zeros((64, 64, 3), np.uint8)
    letterbox_into(solid(128, 96), dst, PreprocessSpec(pad_value=0, rgb=False, pad_position="top_left"))
    assert (dst[48:] == 0).all() and (dst[:48] == (10, 20, 30)).all()


def test_plain_resize_stretches_without_padding() -> None:
    src = solid(128, 96)
    src[:48] = (200, 0, 0)  # top half differs
    dst = np.full((64, 32, 3), 7, np.uint8)
    t = letterbox_into(src, dst, PreprocessSpec(letterbox=False, rgb=False))
    assert t == Transform(32 / 128, 64 / 96, 0.0, 0.0)
    assert (dst[:31] == (200, 0, 0)).all()
    assert (dst[33:] == (10, 20, 30)).all()
    assert not (dst == 7).any()  # every pixel written


@pytest.mark.parametrize("letterbox", [True, False])
def test_rgb_swap(letterbox: bool) -> None:
    src = solid(40, 30, (255, 0, 0))  # pure blue in BGR
    rgb = np.zeros((32, 32, 3), np.uint8)
    bgr = np.zeros((32, 32, 3), np.uint8)
    letterbox_into(src, rgb, PreprocessSpec(letterbox=letterbox, pad_value=114, rgb=True, pad_position="top_left"))
    letterbox_into(src, bgr, PreprocessSpec(letterbox=letterbox, pad_value=114, rgb=False, pad_position="top_left"))
    assert tuple(bgr[0, 0]) == (255, 0, 0)
    assert tuple(rgb[0, 0]) == (0, 0, 255)
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])


def test_non_uniform_image_keeps_channel_order_and_position() -> None:
    src = np.zeros((96, 128, 3), np.uint8)
    src[:, :64] = (0, 0, 250)  # left half red (BGR)
    src[:, 64:] = (0, 250, 0)  # right half green
    dst = np.zeros((64, 64, 3), np.uint8)
    letterbox_into(src, dst, PreprocessSpec(pad_position="center", rgb=True))
    assert tuple(dst[32, 10]) == (250, 0, 0)  # red, now in RGB
    assert tuple(dst[32, 50]) == (0, 250, 0)
    assert tuple(dst[2, 10]) == (114, 114, 114)


@pytest.mark.parametrize(
    ("src_wh", "dst_hw", "spec"),
    [
        ((128, 96), (64, 64), PreprocessSpec(pad_position="center")),
        ((128, 96), (64, 64), PreprocessSpec(pad_position="top_left")),
        ((96, 128), (64, 64), PreprocessSpec(pad_position="center")),
        ((960, 540), (416, 416), PreprocessSpec(pad_position="top_left")),
        ((960, 540), (320, 640), PreprocessSpec(letterbox=False)),
    ],
)
def test_to_source_round_trip(src_wh, dst_hw, spec) -> None:
    width, height = src_wh
    t = letterbox_into(solid(width, height), np.zeros((*dst_hw, 3), np.uint8), spec)
    src_boxes = np.array([[0, 0, width, height], [10, 20, 30, 40], [width * 0.25, height * 0.5, width * 0.75, height]],
                         np.float64)
    in_model = src_boxes.copy()
    in_model[:, [0, 2]] = src_boxes[:, [0, 2]] * t.scale_x + t.pad_x
    in_model[:, [1, 3]] = src_boxes[:, [1, 3]] * t.scale_y + t.pad_y
    np.testing.assert_allclose(t.to_source(in_model, width, height), src_boxes, atol=1e-6)


def test_to_source_known_boxes() -> None:
    t = Transform(0.5, 0.5, 0.0, 8.0)  # 128x96 letterboxed (centre) into 64x64
    boxes = np.array([[24, 24, 40, 40], [0, 8, 64, 56]], np.float32)
    out = t.to_source(boxes, 128, 96)
    np.testing.assert_allclose(out, [[48, 32, 80, 64], [0, 0, 128, 96]])
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ([-4, 0, 70, 80], [0, 0, 128, 96]),
        ([-10, 4, 20, 30], [0, 0, 40, 44]),
        ([60, 50, 90, 60], [120, 84, 128, 96]),
    ],
)
def test_to_source_clips_to_the_frame(box: list[float], expected: list[float]) -> None:
    t = Transform(0.5, 0.5, 0.0, 8.0)
    out = t.to_source(np.array([box], np.float32), 128, 96)
    np.testing.assert_allclose(out[0], expected)


def test_to_tensor_layout_and_scale() -> None:
    batch = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    out = np.full((2, 3, 4, 5), -1, np.float32)
    result = to_tensor(batch, PreprocessSpec(scale=1 / 255), out)
    assert result is out
    np.testing.assert_allclose(out, batch.transpose(0, 3, 1, 2).astype(np.float32) / 255, rtol=1e-6)
    to_tensor(batch, PreprocessSpec(scale=1.0), out)
    assert out[1, 2, 3, 4] == batch[1, 3, 4, 2]
