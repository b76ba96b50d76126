"""Offline augmentation with albumentations: flips, rotation + scale, brightness/contrast, blur.

Boxes go through the same transform as the pixels (albumentations' bbox support, YOLO format); a
box whose visible part falls below ``min_visibility`` of its area is dropped, not kept as a sliver.
Rotation uses the rotated corners' bounding box ("largest_box"), which always covers the object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
from tqdm import tqdm

from tools.dataset.yolo import DatasetError, YoloDataset, format_box, place, read_boxes, write_data_yaml

LABEL_DECIMALS = 6


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5  # probabilities
    vflip: float = 0.0
    rotate: float = 15.0  # degrees, +-
    scale: tuple[float, float] = (0.8, 1.2)
    affine_p: float = 0.7
    brightness: float = 0.25
    contrast: float = 0.25
    color_p: float = 0.7
    blur: int = 5  # max kernel (odd)
    blur_p: float = 0.3
    min_visibility: float = 0.3


def build(config: AugmentConfig, seed: int | None) -> Any:
    try:
        import albumentations as A
    except ImportError as exc:
        raise SystemExit("error: augmentation needs albumentations: pip install -e '.[tools]'") from exc
    transforms = [
        A.HorizontalFlip(p=config.hflip),
        A.VerticalFlip(p=config.vflip),
        A.Affine(scale=config.scale, rotate=(-config.rotate, config.rotate), rotate_method="largest_box",
                 border_mode=cv2.BORDER_CONSTANT, fill=114, p=config.affine_p),
        A.RandomBrightnessContrast(brightness_limit=config.brightness, contrast_limit=config.contrast,
                                   p=config.color_p),
        A.Blur(blur_limit=(3, max(3, config.blur)), p=config.blur_p),
    ]
    bbox = A.BboxParams(format="yolo", label_fields=["class_labels"], min_visibility=config.min_visibility,
                        clip=True, filter_invalid_bboxes=True)
    return A.Compose(transforms, bbox_params=bbox, seed=seed)


def augment_dataset(ds: YoloDataset, out: Path, copies: int = 2, config: AugmentConfig | None = None,
                    seed: int = 0, keep_originals: bool = True, jpeg_quality: int = 95,
                    progress: bool = True) -> dict[str, int]:
    """Write ``copies`` augmented versions of every image (name_aug<k>.jpg) and, by default, the originals."""
    if copies < 1:
        raise ValueError("--copies must be >= 1")
    pipeline = build(config or AugmentConfig(), seed)
    counts = {"images": 0, "boxes_in": 0, "boxes_out": 0}
    for image in tqdm(ds.images(), desc="augment", unit="image", disable=not progress):
        pixels = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if pixels is None:
            raise DatasetError(f"{image}: cannot read image (run `python -m tools.dataset validate`)")
        rel = ds.relative(image)
        label = ds.label_path(image)
        boxes = read_boxes(label)
        if keep_originals:
            place(image, out / "images" / rel, "copy")
            target = out / "labels" / rel.with_suffix(".txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(label.read_text() if label.is_file() else "")
        for k in range(copies):
            result = pipeline(image=pixels, bboxes=[(b.cx, b.cy, b.w, b.h) for b in boxes],
                              class_labels=[b.class_id for b in boxes])
            name = rel.with_name(f"{rel.stem}_aug{k}.jpg")
            (out / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / "images" / name), result["image"], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            # 6 decimals like the originals (1e-6 of the side is far below a pixel); the float32
            # round trip through albumentations would otherwise show as 10 noisy digits.
            lines = [format_box(int(c), float(cx), float(cy), float(w), float(h), decimals=LABEL_DECIMALS)
                     for (cx, cy, w, h), c in zip(result["bboxes"], result["class_labels"])]
            target = out / "labels" / name.with_suffix(".txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(line + "\n" for line in lines))
            counts["images"] += 1
            counts["boxes_in"] += len(boxes)
            counts["boxes_out"] += len(lines)
    write_data_yaml(out, ds.names)
    return counts
