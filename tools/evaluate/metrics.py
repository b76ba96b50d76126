"""COCO-standard metrics with pycocotools, plus threshold metrics read off pycocotools' own matching.

mAP@0.5 and mAP@0.5:0.95 are COCOeval's. Precision, recall and F1 at the chosen confidence use the
detection-to-ground-truth matches COCOeval made at IoU 0.5 (area "all", 100 detections per image),
so the two views never disagree about what a true positive is. The confusion matrix matches
class-agnostically (a box on the right object with the wrong class is a confusion, not a miss).
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Any

import numpy as np


def _pycocotools() -> tuple[Any, Any, Any]:
    try:
        from pycocotools import mask
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise SystemExit("error: evaluation needs pycocotools: pip install -e '.[tools]'") from exc
    return COCO, COCOeval, mask


@dataclass
class ClassResult:
    name: str
    category_id: int
    images: int
    instances: int
    ap50: float
    ap: float
    precision: float
    recall: float
    f1: float


@dataclass
class Result:
    map50: float
    map: float
    precision: float
    recall: float
    f1: float
    mean_iou: float
    matched: int
    detections_at_conf: int
    instances: int
    stats: list[float]  # COCOeval's 12 summary numbers
    per_class: list[ClassResult]
    pr_curves: dict[int, np.ndarray]  # category id -> precision at 101 recall points, IoU 0.5
    coco_text: str


def coco_from_dicts(gt: dict[str, Any]) -> Any:
    COCO, _, _ = _pycocotools()
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate(gt: dict[str, Any], predictions: list[dict[str, Any]], conf: float) -> Result:
    COCO, COCOeval, mask = _pycocotools()
    coco_gt = coco_from_dicts(gt)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        coco_dt = coco_gt.loadRes(copy.deepcopy(predictions)) if predictions else COCO()  # loadRes edits its input
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if not predictions:
            evaluator.params.imgIds = sorted(coco_gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats]
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]: IoU thr, recall pts, class, area, max dets
    cat_ids = [int(c) for c in evaluator.params.catIds]
    a_all, m_last = evaluator.params.areaRngLbl.index("all"), len(evaluator.params.maxDets) - 1

    tp: dict[int, int] = {c: 0 for c in cat_ids}
    fp: dict[int, int] = {c: 0 for c in cat_ids}
    npos: dict[int, int] = {c: 0 for c in cat_ids}
    ious: list[float] = []
    anns = coco_gt.anns
    dts = coco_dt.anns if predictions else {}
    for e in evaluator.evalImgs:
        if e is None or e["aRng"] != evaluator.params.areaRng[a_all]:
            continue
        c = e["category_id"]
        npos[c] += int(np.sum(~np.asarray(e["gtIgnore"], bool)))
        matches = np.asarray(e["dtMatches"])[0]  # IoU 0.5
        ignored = np.asarray(e["dtIgnore"])[0].astype(bool)
        for dt_id, gt_id, score, ign in zip(e["dtIds"], matches, e["dtScores"], ignored):
            if score < conf or ign:
                continue
            if gt_id > 0:
                tp[c] += 1
                ious.append(float(mask.iou([dts[dt_id]["bbox"]], [anns[int(gt_id)]["bbox"]], [0])[0][0]))
            else:
                fp[c] += 1
    per_class = []
    images_with = {c: len({a["image_id"] for a in coco_gt.loadAnns(coco_gt.getAnnIds(catIds=[c]))}) for c in cat_ids}
    pr_curves = {}
    for k, c in enumerate(cat_ids):
        p = precision[:, :, k, a_all, m_last]
        ap = float(np.mean(p[p > -1])) if np.any(p > -1) else float("nan")
        ap50 = float(np.mean(p[0][p[0] > -1])) if np.any(p[0] > -1) else float("nan")
        pr_curves[c] = p[0]
        prec = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 0.0
        rec = tp[c] / npos[c] if npos[c] else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class.append(ClassResult(str(coco_gt.cats[c]["name"]), int(c), int(images_with[c]), int(npos[c]), ap50, ap,
                                     prec, rec, f1))
    total_tp, total_fp, total_pos = sum(tp.values()), sum(fp.values()), sum(npos.values())
    p_all = total_tp / (total_tp + total_fp) if total_tp + total_fp else 0.0
    r_all = total_tp / total_pos if total_pos else 0.0
    return Result(
        map50=stats[1], map=stats[0], precision=p_all, recall=r_all,
        f1=2 * p_all * r_all / (p_all + r_all) if p_all + r_all else 0.0,
        mean_iou=float(np.mean(ious)) if ious else 0.0, matched=total_tp, detections_at_conf=total_tp + total_fp,
        instances=total_pos, stats=stats, per_class=per_class, pr_curves=pr_curves, coco_text=text.getvalue(),
    )


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes a [n, 4] against b [m, 4]."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def confusion_matrix(gt_boxes: list[tuple[np.ndarray, np.ndarray]], det_boxes: list[tuple[np.ndarray, np.ndarray]],
                     num_classes: int, iou: float = 0.5) -> np.ndarray:
    """[(nc + 1) x (nc + 1)] counts: rows predicted class, columns true class; index nc is background.

    Per image, detections (already at the chosen confidence, sorted by score) are matched greedily to
    the unmatched ground-truth box of highest IoU >= ``iou``, whatever the classes.
    """
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    bg = num_classes
    for (g_xyxy, g_cls), (d_xyxy, d_cls) in zip(gt_boxes, det_boxes):
        used = np.zeros(len(g_cls), bool)
        overlaps = _iou_matrix(d_xyxy, g_xyxy) if len(d_cls) and len(g_cls) else np.zeros((len(d_cls), len(g_cls)))
        for i in range(len(d_cls)):
            candidates = np.where(~used & (overlaps[i] >= iou))[0] if len(g_cls) else []
            if len(candidates):
                j = candidates[np.argmax(overlaps[i, candidates])]
                used[j] = True
                matrix[d_cls[i], g_cls[j]] += 1
            else:
                matrix[d_cls[i], bg] += 1
        for j in np.where(~used)[0]:
            matrix[bg, g_cls[j]] += 1
    return matrix
