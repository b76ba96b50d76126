"""pipelines[].roi: only a rectangle of the frame goes to the model, and boxes come back in source pixels."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from streamd.config.models import PipelineConfig
from streamd.infer.preprocess import (PreprocessSpec, clip_box, crop_i420, crop_into, letterbox_i420_into,
                                      model_input_request, roi_pixels)
from tests.unit.test_ring import make_ring  # noqa: F401


def i420(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(16, 236, (height * 3 // 2, width), dtype=np.uint8)


def test_roi_pixels_grow_to_the_even_grid() -> None:
    assert roi_pixels(((10.5, 7.0), (301.2, 99.0))) == (10, 6, 302, 100)
    assert roi_pixels(((-20, -5), (640, 360))) == (0, 0, 640, 360)


def test_clip_box_keeps_what_is_inside_and_falls_back_to_the_whole_frame() -> None:
    assert clip_box((0, 40, 1000, 300), 640, 360) == (0, 40, 640, 300)
    assert clip_box((0, 0, 640, 360), 640, 360) is None  # the whole frame: no crop
    assert clip_box((700, 0, 800, 100), 640, 360) is None  # outside: the whole frame rather than nothing
    assert clip_box(None, 640, 360) is None


@pytest.mark.parametrize("box", [(0, 0, 32, 16), (6, 2, 40, 30), (10, 4, 64, 32)])
def test_a_cropped_i420_frame_is_the_crop_of_its_bgr_frame(box: tuple[int, int, int, int]) -> None:
    yuv = i420(64, 32)
    x1, y1, x2, y2 = box
    full = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
    assert np.array_equal(cv2.cvtColor(crop_i420(yuv, 64, 32, box), cv2.COLOR_YUV2BGR_I420), full[y1:y2, x1:x2])


@pytest.mark.parametrize("letterbox", [True, False])
def test_the_decoders_cropped_model_pixels_equal_the_inference_stages(letterbox: bool) -> None:
    spec = PreprocessSpec(letterbox=letterbox)
    box = (8, 10, 56, 26)
    yuv = i420(64, 32, seed=3)
    request = replace(model_input_request(spec, (16, 32)), crop=box)
    from_decoder = np.zeros((16, 32, 3), np.uint8)
    transform = letterbox_i420_into(request, yuv, 64, 32, from_decoder)
    here = np.zeros((16, 32, 3), np.uint8)
    t = crop_into(cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420), box, here, spec)
    assert np.array_equal(from_decoder, here)
    assert transform == pytest.approx((t.scale_x, t.scale_y, t.pad_x, t.pad_y))


def test_a_box_found_in_the_crop_maps_back_to_source_pixels() -> None:
    spec = PreprocessSpec()
    image = np.zeros((360, 640, 3), np.uint8)
    dst = np.zeros((320, 320, 3), np.uint8)
    t = crop_into(image, (160, 100, 480, 260), dst, spec)  # 320 x 160 at full model width: scale 1
    assert (t.scale_x, t.scale_y) == (1.0, 1.0)
    # a box at model pixels (10, 90)-(30, 110): 10 px right of the crop's left, 10 px below its letterboxed top
    source = t.to_source(np.array([[10.0, 90.0, 30.0, 110.0]]), 640, 360)
    assert source.tolist() == [[170.0, 110.0, 190.0, 130.0]]


def test_the_ring_carries_the_crop_from_consumer_to_decoder(make_ring) -> None:  # noqa: F811
    ring = make_ring(n_slots=3, max_width=64, max_height=32)
    request = replace(model_input_request(PreprocessSpec(), (16, 16)), crop=(4, 2, 40, 30))
    gen = ring.request_model_input(request)
    got = ring.model_request()
    assert got is not None and got.crop == (4, 2, 40, 30) and got.gen == gen
    ring.request_model_input(replace(request, crop=None))
    assert ring.model_request().crop is None


def test_a_roi_must_be_top_left_then_bottom_right() -> None:
    PipelineConfig(model="m.onnx", roi=[[0, 40], [640, 300]])
    with pytest.raises(ValidationError, match="top-left corner first"):
        PipelineConfig(model="m.onnx", roi=[[640, 300], [0, 40]])
