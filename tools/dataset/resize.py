"""Shrink images to a maximum side (aspect kept) or to an exact size.

YOLO labels are normalised to the image, so an aspect-keeping or a stretching resize leaves them
unchanged: labels are copied as they are. Smaller images never grow unless asked.
"""

from __future__ import annotations

from pathlib import Path

import cv2
from tqdm import tqdm

from tools.dataset.yolo import DatasetError, YoloDataset, place, write_data_yaml


def target_size(width: int, height: int, max_side: int | None, size: tuple[int, int] | None,
                upscale: bool) -> tuple[int, int]:
    if size is not None:
        return size
    assert max_side is not None
    scale = max_side / max(width, height)
    if scale >= 1 and not upscale:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_dataset(ds: YoloDataset, out: Path, max_side: int | None = None, size: tuple[int, int] | None = None,
                   upscale: bool = False, jpeg_quality: int = 95, progress: bool = True) -> int:
    if (max_side is None) == (size is None):
        raise ValueError("give exactly one of --max-side or --size")
    written = 0
    for image in tqdm(ds.images(), desc="resize", unit="image", disable=not progress):
        pixels = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise DatasetError(f"{image}: cannot read image (run `python -m tools.dataset validate`)")
        h, w = pixels.shape[:2]
        new_w, new_h = target_size(w, h, max_side, size, upscale)
        rel = ds.relative(image)
        target = out / "images" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (new_w, new_h) == (w, h):
            place(image, target, "copy")
        else:
            interpolation = cv2.INTER_AREA if new_w < w else cv2.INTER_LINEAR
            cv2.imwrite(str(target), cv2.resize(pixels, (new_w, new_h), interpolation=interpolation),
                        [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        label = ds.label_path(image)
        if label.is_file():
            place(label, out / "labels" / rel.with_suffix(".txt"), "copy")
        written += 1
    write_data_yaml(out, ds.names)
    return written
