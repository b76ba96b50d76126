"""streamd.infer.postprocess: threshold, class filter, NMS, cap and mapping of candidates."""

from __future__ import annotations

import numpy as np
import pytest

from streamd.infer.postprocess import Candidates, PostprocessParams, cxcywh_to_xyxy, finish
from streamd.infer.preprocess import Transform

IDENTITY = Transform(1.0, 1.0, 0.0, 0.0)


def cands(rows: list[tuple[float, float, float, float, float, int]]) -> Candidates:
    arr = np.array([r[:5] for r in rows], np.float32).reshape(-1, 5)
    return Candidates(arr[:, :4].copy(), arr[:, 4].copy(), np.array([r[5] for r in rows], np.int32))


# Two overlapping pairs (IoU ~0.82) of different classes, plus an isolated box.
ROWS = [
    (10, 10, 60, 60, 0.9, 0),
    (12, 10, 62, 60, 0.8, 0),  # same class as row 0, overlapping
    (10, 12, 60, 62, 0.7, 1),  # other class, overlapping row 0
    (200, 200, 240, 240, 0.5, 2),
    (300, 300, 310, 310, 0.2, 1),  # below 0.25
]


def test_cxcywh_to_xyxy() -> None:
    np.testing.assert_allclose(cxcywh_to_xyxy(np.array([[10, 20, 4, 6]], np.float32)), [[8, 17, 12, 23]])


@pytest.mark.parametrize(
    ("params", "kept_confidences"),
    [
        (PostprocessParams(), [0.9, 0.7, 0.5]),
        (PostprocessParams(class_agnostic=True), [0.9, 0.5]),
        (PostprocessParams(iou=0.95), [0.9, 0.8, 0.7, 0.5]),  # overlap (IoU 0.92) below the threshold
        (PostprocessParams(confidence=0.1), [0.9, 0.7, 0.5, 0.2]),
        (PostprocessParams(confidence=0.75), [0.9]),
        (PostprocessParams(max_detections=5), [0.9, 0.7, 0.5]),
        (PostprocessParams(max_detections=1), [0.9]),
        pytest.param(
            PostprocessParams(max_detections=2), [0.9, 0.7],
            id="max_detections-caps-after-nms",
        ),
        (PostprocessParams(class_ids=frozenset({1, 2})), [0.7, 0.5]),
        (PostprocessParams(class_ids=frozenset({7})), []),
        (PostprocessParams(confidence=0.95), []),
    ],
)
def test_finish_table(params: PostprocessParams, kept_confidences: list[float]) -> None:
    out = finish(cands(ROWS), params, IDENTITY, 1000, 1000)
    np.testing.assert_allclose(out.confidence, kept_confidences, atol=1e-6)
    assert out.xyxy.shape == (len(kept_confidences), 4)
    assert len(out.class_id) == len(kept_confidences)


def test_finish_keeps_box_class_and_score_together_and_maps_to_source() -> None:
    t = Transform(0.5, 0.5, 4.0, 8.0)
    out = finish(cands(ROWS), PostprocessParams(), t, 1000, 1000)
    assert out.class_id.tolist() == [0, 1, 2]
    np.testing.assert_allclose(out.xyxy, [[12, 4, 112, 104], [12, 8, 112, 108], [392, 384, 472, 464]])


def test_finish_on_no_candidates() -> None:
    out = finish(Candidates.empty(), PostprocessParams(), IDENTITY, 10, 10)
    assert out.xyxy.shape == (0, 4) and out.confidence.shape == (0,) and out.class_id.shape == (0,)
