"""Post-processing shared by every adapter: score threshold, class filter, NMS, cap, back to source pixels.

Adapters only decode their layout into ``Candidates`` (model-input pixels); everything after that lives
here once, so a fix to thresholds, NMS or box mapping reaches every model family.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from streamd.infer.preprocess import Transform


@dataclass(frozen=True)
class Candidates:
    """Boxes in model-input pixels (xyxy) with their best class score, before NMS."""

    xyxy: np.ndarray  # float32 [n, 4]
    confidence: np.ndarray  # float32 [n]
    class_id: np.ndarray  # int32 [n]
    suppressed: bool = False  # True: the model already removed duplicates (end-to-end heads): no NMS here

    @staticmethod
    def empty() -> Candidates:
        return Candidates(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    @staticmethod
    def build(xyxy: np.ndarray, confidence: np.ndarray, class_id: np.ndarray, suppressed: bool = False) -> Candidates:
        """Candidates with the dtypes every consumer expects (float32 boxes and scores, int32 classes)."""
        return Candidates(np.ascontiguousarray(xyxy, np.float32).reshape(-1, 4),
                          np.ascontiguousarray(confidence, np.float32).reshape(-1),
                          np.ascontiguousarray(class_id).astype(np.int32, copy=False).reshape(-1), suppressed)


@dataclass(frozen=True)
class PostprocessParams:
    confidence: float = 0.25
    iou: float = 0.45
    class_agnostic: bool = False
    max_detections: int = 300
    class_ids: frozenset[int] | None = None  # keep only these (None: all)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def best_class(scores: np.ndarray, min_confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``scores`` [n, nc]: (indices of rows whose best score >= min_confidence, that score, its class)."""
    if scores.shape[1] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int32)
    class_id = scores.argmax(axis=1)
    confidence = np.take_along_axis(scores, class_id[:, None], axis=1)[:, 0]
    rows = np.flatnonzero(confidence >= min_confidence)
    return rows, confidence[rows], class_id[rows]


def nms(xyxy: np.ndarray, confidence: np.ndarray, class_id: np.ndarray, iou: float, class_agnostic: bool) -> np.ndarray:
    """Indices kept by greedy NMS (OpenCV's C++ implementation), highest score first.

    Class-aware NMS only suppresses boxes of the same class (OpenCV offsets each class's boxes apart).
    """
    if len(confidence) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).astype(np.float64)
    floor = 0.0  # OpenCV re-applies a score threshold (score > floor); the caller already applied its own
    if class_agnostic:
        kept = cv2.dnn.NMSBoxes(xywh.tolist(), confidence.tolist(), floor, iou)
    else:
        kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), confidence.tolist(), class_id.tolist(), floor, iou)
    idx = np.asarray(kept, dtype=np.int64).reshape(-1)
    return idx[np.argsort(-confidence[idx], kind="stable")]


def finish(cands: Candidates, params: PostprocessParams, transform: Transform, width: int,
           height: int) -> Candidates:
    """Filter, suppress and map candidates to source pixels (clipped to the frame)."""
    keep = cands.confidence >= params.confidence
    if params.class_ids is not None:
        keep &= np.isin(cands.class_id, np.fromiter(params.class_ids, np.int32, len(params.class_ids)))
    xyxy, conf, cls = cands.xyxy[keep], cands.confidence[keep], cands.class_id[keep]
    if len(conf) == 0:
        return Candidates.empty()
    if cands.suppressed:  # end-to-end heads: the model's own ranking, no second suppression
        idx = np.argsort(-conf, kind="stable")
    else:
        idx = nms(xyxy, conf, cls, params.iou, params.class_agnostic)
    idx = idx[: params.max_detections]  # cap after NMS, not before
    return Candidates(
        transform.to_source(xyxy[idx].astype(np.float32), width, height),
        conf[idx].astype(np.float32),
        cls[idx].astype(np.int32),
    )
