"""Near-duplicate removal: keep the first image (sorted order) of each group whose perceptual hashes
lie within a Hamming threshold; copy the kept images and their labels to a new folder."""

from __future__ import annotations

from pathlib import Path

import cv2
from tqdm import tqdm

from tools.dataset.hashing import NearDuplicateFilter
from tools.dataset.yolo import DatasetError, YoloDataset, place, write_data_yaml


def find_duplicates(ds: YoloDataset, threshold: int, method: str = "phash",
                    progress: bool = True) -> tuple[list[Path], list[tuple[Path, Path, int]]]:
    """(kept images, [(duplicate, the kept image it matches, distance)])."""
    images = ds.images()
    seen = NearDuplicateFilter(threshold, method, window=max(1, len(images)))
    kept: list[Path] = []
    dropped: list[tuple[Path, Path, int]] = []
    for image in tqdm(images, desc="hash", unit="image", disable=not progress):
        pixels = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if pixels is None:
            raise DatasetError(f"{image}: cannot read image (run `python -m tools.dataset validate`)")
        value = seen.hash(pixels)
        match = seen.match(value)
        if match is not None:
            dropped.append((image, Path(match[0]), match[1]))
            continue
        seen.remember(value, str(image))
        kept.append(image)
    return kept, dropped


def write_subset(ds: YoloDataset, images: list[Path], out: Path, mode: str = "copy") -> None:
    for image in images:
        rel = ds.relative(image)
        place(image, out / "images" / rel, mode)
        label = ds.label_path(image)
        if label.is_file():
            place(label, out / "labels" / rel.with_suffix(".txt"), "copy")
    write_data_yaml(out, ds.names)
