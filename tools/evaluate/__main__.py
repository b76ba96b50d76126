"""python -m tools.evaluate: accuracy of an ONNX model on a labelled YOLO folder, as the daemon runs it.

  python -m tools.evaluate --model streamd/models/conveyor.onnx --data datasets/conveyor/data.yaml --split test \\
      --out reports/conveyor
  python -m tools.evaluate --model ../shared/media/models/yolox-nano/yolox_nano.onnx \\
      --labels ../shared/media/models/coco.names --data ../shared/media/datasets/coco128 --out reports/yolox

The model runs through streamd's own loader, adapters, pre- and post-processing. mAP@0.5 and
mAP@0.5:0.95 come from pycocotools on every detection above --eval-conf (COCO protocol, 100 per
image); precision, recall, F1 and mean IoU of matches are at --conf (the deployed threshold).
OUT gets predictions.json (COCO results), ground_truth.json, summary.json, summary.md,
pr_curves.png and confusion_matrix.png.

Model classes map to dataset classes (--class-map auto, the default) by name when more classes
match by name than by position, as for a torchvision export whose class 0 is `background`;
otherwise by index (class i is class i), where names may be spelt differently (coco.names
`motorbike` vs COCO's `motorcycle`) and still mean the same class. The report lists such
differences, and warns when model and dataset share no class name at all. --class-map index or
name forces one rule.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from streamd.errors import ModelError
from streamd.infer.postprocess import PostprocessParams
from tools.dataset.coco import yolo_to_coco
from tools.dataset.yolo import DatasetError, open_dataset, read_boxes
from tools.evaluate.metrics import Result, confusion_matrix, evaluate
from tools.evaluate.runner import Detector


def _key(name: str) -> str:
    return name.strip().lower()


def class_mapping(model_names: list[str], data_names: list[str], by: str) -> tuple[dict[int, int], list[str]]:
    """model class -> dataset class index, and notes on names that differ or are missing.

    ``by``: "index", "name", or "auto" (by name when that matches more classes than by index).
    """
    notes = []
    data_keys = {_key(n) for n in data_names}
    by_name = sum(_key(n) in data_keys for n in model_names)
    by_index = sum(_key(m) == _key(d) for m, d in zip(model_names, data_names))
    if by == "auto":
        by = "name" if by_name > by_index else "index"
        if by_index < min(len(model_names), len(data_names)):  # not every name sits at its index: say which rule
            notes.append(f"classes matched by {by} ({by_name} of the dataset's {len(data_names)} names are "
                         f"model class names, {by_index} at the same index); --class-map index|name overrides")
    if by_name == 0:
        notes.append(f"WARNING: no dataset class name is a model class name (model: {', '.join(model_names[:5])}"
                     f"{' ...' if len(model_names) > 5 else ''}; dataset: {', '.join(data_names[:5])}"
                     f"{' ...' if len(data_names) > 5 else ''}): is --data the dataset this model was trained for?")
    if by == "index":
        mapping = {i: i for i in range(min(len(model_names), len(data_names)))}
        differ = [f"{i}: model `{model_names[i]}` = data `{data_names[i]}`" for i in mapping
                  if model_names[i].strip().lower() != data_names[i].strip().lower()]
        if differ:
            notes.append(f"{len(differ)} classes are spelt differently and matched by index: " + "; ".join(differ))
        if len(model_names) > len(data_names):
            notes.append(f"model classes {len(data_names)}..{len(model_names) - 1} have no dataset class; "
                         "their detections are dropped")
        if len(data_names) > len(model_names):
            notes.append(f"dataset classes the model does not predict (recall 0): "
                         f"{', '.join(data_names[len(model_names):])}")
        return mapping, notes
    lookup = {_key(n): i for i, n in enumerate(data_names)}
    mapping = {i: lookup[_key(n)] for i, n in enumerate(model_names) if _key(n) in lookup}
    missing = [n for i, n in enumerate(model_names) if i not in mapping]
    if missing:
        notes.append(f"model classes not in the dataset (dropped): {', '.join(missing)}")
    unpredicted = sorted(set(range(len(data_names))) - set(mapping.values()))
    if unpredicted:
        notes.append(f"dataset classes the model does not predict (recall 0): "
                     f"{', '.join(data_names[i] for i in unpredicted)}")
    return mapping, notes


def run_model(detector: Detector, ds: Any, gt: dict[str, Any], mapping: dict[int, int], offset: int,
              batch: int, progress: bool = True) -> tuple[list[dict[str, Any]], list[tuple[np.ndarray, np.ndarray]]]:
    """COCO-format predictions for every image, and per image (xyxy, dataset class, score) for the matrix."""
    predictions: list[dict[str, Any]] = []
    per_image: list[tuple[np.ndarray, np.ndarray]] = []
    image_ids = {img["file_name"]: img["id"] for img in gt["images"]}
    images = ds.images()
    lut = np.full(max(mapping, default=0) + 2, -1, np.int64)
    for k, v in mapping.items():
        lut[k] = v
    for start in tqdm(range(0, len(images), batch), desc="evaluate", unit="batch", disable=not progress):
        paths = images[start : start + batch]
        pixels = []
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise DatasetError(f"{path}: cannot read image (run `python -m tools.dataset validate`)")
            pixels.append(image)
        for path, dets in zip(paths, detector.detect(pixels)):
            image_id = image_ids[ds.relative(path).as_posix()]
            cls = lut[np.clip(dets.class_id, 0, len(lut) - 1)] if len(dets.class_id) else np.zeros(0, np.int64)
            keep = cls >= 0
            xyxy, score, cls = dets.xyxy[keep].astype(float), dets.confidence[keep].astype(float), cls[keep]
            per_image.append((np.concatenate([xyxy, score[:, None], cls[:, None]], axis=1), cls))
            for (x1, y1, x2, y2), s, c in zip(xyxy, score, cls):
                predictions.append({"image_id": image_id, "category_id": int(c) + offset,
                                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                                    "score": round(float(s), 5)})
    return predictions, per_image


def markdown(result: Result, meta: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation of `{meta['model']}`", "",
        f"Dataset `{meta['data']}` ({meta['images']} images, {result.instances} boxes); adapter "
        f"`{meta['adapter']}`, input {meta['input_hw'][0]}x{meta['input_hw'][1]}, NMS IoU {meta['iou']}"
        f"{' class-agnostic' if meta['agnostic'] else ''}; measured by `python -m tools.evaluate` on {meta['date']}.",
        "",
        "| mAP@0.5 | mAP@0.5:0.95 | precision | recall | F1 | mean IoU (matched) | at conf |",
        "|---|---|---|---|---|---|---|",
        f"| {result.map50:.4f} | {result.map:.4f} | {result.precision:.4f} | {result.recall:.4f} | {result.f1:.4f} "
        f"| {result.mean_iou:.4f} | {meta['conf']} |",
        "",
        *(f"Note: {n}" for n in meta["notes"]),
        "",
        "| class | images | instances | AP@0.5 | AP@0.5:0.95 | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result.per_class:
        if c.instances == 0:
            continue
        lines.append(f"| {c.name} | {c.images} | {c.instances} | {c.ap50:.3f} | {c.ap:.3f} | {c.precision:.3f} "
                     f"| {c.recall:.3f} | {c.f1:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="ONNX model file")
    parser.add_argument("--data", type=Path, required=True, help="YOLO dataset folder, data.yaml or images folder")
    parser.add_argument("--split", help="with a data.yaml: train, val or test")
    parser.add_argument("--names", type=Path, help="dataset class names file (overrides the dataset's)")
    parser.add_argument("--labels", help="model class names file (as the pipeline's `labels:`)")
    parser.add_argument("--adapter", default="auto", help="as the pipeline's `adapter:`")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="as the pipeline's input_size")
    parser.add_argument("--conf", type=float, default=0.25, help="confidence for precision/recall/F1 (deployed value)")
    parser.add_argument("--eval-conf", type=float, default=0.001, help="lowest score kept for mAP (COCO protocol)")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU (as the pipeline's postprocess)")
    parser.add_argument("--agnostic", action="store_true", help="class-agnostic NMS (FastestDet's original decoder)")
    parser.add_argument("--max-det", type=int, default=100, help="detections kept per image")
    parser.add_argument("--class-map", choices=("auto", "index", "name"), default="auto",
                        help="how model classes map to dataset classes (see above)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    parser.add_argument("--provider", action="append", dest="providers", help="execution provider (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)

    try:
        ds = open_dataset(args.data, args.names, args.split)
        if not ds.names:
            raise DatasetError(f"{args.data}: no class names; give --names FILE")
        offset = 1
        gt = yolo_to_coco(ds, offset=offset, progress=False)
        if not gt["images"]:
            raise DatasetError(f"{ds.images_root}: no images")
        params = PostprocessParams(confidence=args.eval_conf, iou=args.iou, class_agnostic=args.agnostic,
                                   max_detections=args.max_det)
        detector = Detector.open(str(args.model), params, args.batch, args.adapter,
                                 tuple(args.input_size) if args.input_size else None, args.labels, args.providers,
                                 args.threads)
    except (DatasetError, ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mapping, notes = class_mapping(detector.model.names, ds.names, args.class_map)
    for note in notes:
        print(note if note.startswith("WARNING") else f"note: {note}", file=sys.stderr)
    started = time.perf_counter()
    try:
        predictions, per_image = run_model(detector, ds, gt, mapping, offset, args.batch)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    result = evaluate(gt, predictions, args.conf)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predictions.json").write_text(json.dumps(predictions))
    (args.out / "ground_truth.json").write_text(json.dumps(gt))
    meta = {"model": str(args.model), "model_path": str(args.model.resolve()), "data": str(args.data), "split": args.split, "images": len(gt["images"]),
            "adapter": detector.model.adapter.name, "input_hw": list(detector.model.input_hw),
            "conf": args.conf, "eval_conf": args.eval_conf, "iou": args.iou, "agnostic": args.agnostic,
            "max_det": args.max_det, "class_map": args.class_map, "notes": notes, "date": time.strftime("%Y-%m-%d"),
            "seconds": round(elapsed, 2),
            "model_ms_median": round(float(np.median(detector.timings.model)), 3) if detector.timings.model else None,
            "providers": detector.model.providers, "file_bytes": args.model.stat().st_size}
    summary = {
        **meta, "mAP50": result.map50, "mAP50-95": result.map, "precision": result.precision, "recall": result.recall,
        "f1": result.f1, "mean_iou": result.mean_iou, "instances": result.instances, "matched": result.matched,
        "detections_at_conf": result.detections_at_conf, "coco_stats": result.stats,
        "per_class": [c.__dict__ for c in result.per_class],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text(markdown(result, meta))
    if not args.no_plots:
        from tools.evaluate import plots

        names = {c["id"]: c["name"] for c in gt["categories"]}
        plots.pr_curves(result.pr_curves, names, args.out)
        gt_boxes = []
        for path in ds.images():
            h_w = next(img for img in gt["images"] if img["file_name"] == ds.relative(path).as_posix())
            boxes = read_boxes(ds.label_path(path))
            xyxy = np.array([[b.xyxy[0] * h_w["width"], b.xyxy[1] * h_w["height"], b.xyxy[2] * h_w["width"],
                              b.xyxy[3] * h_w["height"]] for b in boxes]).reshape(-1, 4)
            gt_boxes.append((xyxy, np.array([b.class_id for b in boxes], np.int64)))
        dets = [(d[d[:, 4] >= args.conf][:, :4], d[d[:, 4] >= args.conf][:, 5].astype(np.int64)) for d, _ in per_image]
        plots.confusion(confusion_matrix(gt_boxes, dets, len(ds.names)), ds.names, args.out)
    print("\n".join(ln for ln in result.coco_text.splitlines() if ln.lstrip().startswith("Average")))
    print(f"{args.model}: mAP50 {result.map50:.4f}  mAP50-95 {result.map:.4f}  P {result.precision:.4f}  "
          f"R {result.recall:.4f}  F1 {result.f1:.4f}  mean IoU {result.mean_iou:.4f} (conf {args.conf}) "
          f"on {len(gt['images'])} images in {elapsed:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
