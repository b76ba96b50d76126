"""Post-processing shared by every adapter: score threshold, class filter, NMS, cap, back to source pixels."""

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

    @staticmethod
    def empty() -> Candidates:
        return Candidates(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))


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


def finish(cands: Candidates, params: PostprocessParams, transform: Transform, width: int,
           height: int) -> Candidates:
    """Filter, suppress and map candidates to source pixels (clipped to the frame)."""
    keep = cands.confidence >= params.confidence
    if params.class_ids is not None:
        keep &= np.isin(cands.class_id, np.fromiter(params.class_ids, np.int32, len(params.class_ids)))
    xyxy, conf, cls = cands.xyxy[keep], cands.confidence[keep], cands.class_id[keep]
    if len(conf) == 0:
        return Candidates.empty()
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    if params.class_agnostic:
        idx = cv2.dnn.NMSBoxes(xywh.tolist(), conf.tolist(), params.confidence, params.iou)
    else:
        idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), conf.tolist(), cls.tolist(), params.confidence, params.iou)
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    idx = idx[np.argsort(-conf[idx], kind="stable")][: params.max_detections]  # cap after NMS, not before
    return Candidates(
        transform.to_source(xyxy[idx].astype(np.float32), width, height),
        conf[idx].astype(np.float32),
        cls[idx].astype(np.int32),
    )
