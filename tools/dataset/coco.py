"""YOLO txt <-> COCO JSON.

Lossless round trip: each COCO annotation also carries its YOLO line as written (`yolo_line`), and
coco -> yolo writes that text back whenever it still agrees with the annotation's `bbox` and class
(so a file edited in a COCO tool is converted from the edited bbox). Category ids are class index +
``offset`` (1 by default: COCO tools treat 0 as background); coco -> yolo maps categories sorted by id
to 0..n-1, which also closes the gaps of the original COCO ids (1..90 -> 0..79).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tools.dataset.yolo import DatasetError, YoloDataset, format_box, image_size, place, read_boxes, write_data_yaml

AGREE_PX = 1e-3  # a stored YOLO line is reused when its box is within this many pixels of the COCO bbox


def yolo_to_coco(ds: YoloDataset, offset: int = 1, progress: bool = True) -> dict[str, Any]:
    images, annotations = [], []
    max_class = -1
    for image_id, image in enumerate(tqdm(ds.images(), desc="yolo->coco", unit="image", disable=not progress), 1):
        width, height = image_size(image)
        images.append({"id": image_id, "file_name": ds.relative(image).as_posix(), "width": width, "height": height})
        for box in read_boxes(ds.label_path(image)):
            max_class = max(max_class, box.class_id)
            w, h = box.w * width, box.h * height
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": box.class_id + offset,
                "bbox": [box.cx * width - w / 2, box.cy * height - h / 2, w, h], "area": w * h, "iscrowd": 0,
                "segmentation": [], "yolo_line": box.text,
            })
    names = list(ds.names)
    if max_class >= len(names):  # keep every class a label uses, even without a name
        names += [f"class_{i}" for i in range(len(names), max_class + 1)]
    categories = [{"id": i + offset, "name": name, "supercategory": ""} for i, name in enumerate(names)]
    return {"info": {"description": f"converted from YOLO labels in {ds.source} by tools.dataset",
                     "yolo_category_offset": offset},
            "images": images, "annotations": annotations, "categories": categories}


def _line_for(ann: dict[str, Any], class_index: int, width: int, height: int, where: str) -> str:
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: annotation {ann.get('id')} has no valid `bbox` [x, y, w, h]") from exc
    stored = ann.get("yolo_line")
    if isinstance(stored, str):
        parts = stored.split()
        try:
            cls, cx, cy, sw, sh = int(parts[0]), *(float(p) for p in parts[1:5])
            agrees = (cls == class_index and len(parts) == 5
                      and abs(cx * width - sw * width / 2 - x) < AGREE_PX and abs(sw * width - w) < AGREE_PX
                      and abs(cy * height - sh * height / 2 - y) < AGREE_PX and abs(sh * height - h) < AGREE_PX)
        except (ValueError, IndexError):
            agrees = False
        if agrees:
            return stored
    return format_box(class_index, (x + w / 2) / width, (y + h / 2) / height, w / width, h / height)


def coco_to_yolo(coco: dict[str, Any], out: Path, images_dir: Path | None, mode: str = "copy",
                 where: str = "coco json", progress: bool = True) -> dict[str, int]:
    """Write OUT/labels/<file>.txt (and OUT/images/<file> from ``images_dir``) and OUT/data.yaml."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DatasetError(f"{where}: no `{key}` list; is this a COCO detection file?")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
    crowd = 0
    for ann in coco["annotations"]:
        if ann.get("image_id") not in by_image:
            raise DatasetError(f"{where}: annotation {ann.get('id')} refers to image_id {ann.get('image_id')}, "
                               "which is not in `images`")
        if ann.get("category_id") not in index:
            raise DatasetError(f"{where}: annotation {ann.get('id')} has category_id {ann.get('category_id')}, "
                               "which is not in `categories`")
        if ann.get("iscrowd"):
            crowd += 1  # crowd regions are not objects to detect; YOLO has no way to say "ignore"
            continue
        by_image[ann["image_id"]].append(ann)
    written = 0
    for img in tqdm(coco["images"], desc="coco->yolo", unit="image", disable=not progress):
        rel = Path(img["file_name"])
        width, height = int(img["width"]), int(img["height"])
        lines = [_line_for(a, index[a["category_id"]], width, height, where) for a in by_image[img["id"]]]
        label = out / "labels" / rel.with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if images_dir is not None:
            src = images_dir / rel
            if not src.is_file():
                raise DatasetError(f"{where}: image {img['file_name']} not found in {images_dir} (give --images)")
            place(src, out / "images" / rel, mode)
        written += 1
    write_data_yaml(out, [str(c["name"]) for c in categories])
    return {"images": written, "annotations": sum(len(v) for v in by_image.values()), "crowd_skipped": crowd}


def load_coco(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO object with images, annotations, categories")
    return data
