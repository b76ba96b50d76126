"""Dataset statistics: images, boxes per class and per image, box sizes (pixels), COCO size buckets;
a class histogram and a box-size plot as PNG (matplotlib, imported only here)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tools.dataset.yolo import YoloDataset, image_size, read_boxes

SMALL, MEDIUM = 32 * 32, 96 * 96  # COCO's area buckets


@dataclass
class Stats:
    images: int = 0
    empty_images: int = 0
    classes: Counter[int] = field(default_factory=Counter)
    images_per_class: Counter[int] = field(default_factory=Counter)
    widths: list[float] = field(default_factory=list)
    heights: list[float] = field(default_factory=list)
    boxes_per_image: list[int] = field(default_factory=list)

    def summary(self, names: list[str]) -> dict[str, Any]:
        w, h = np.asarray(self.widths), np.asarray(self.heights)
        area = w * h

        def quantiles(values: np.ndarray) -> dict[str, float]:
            if values.size == 0:
                return {}
            q = np.percentile(values, [0, 5, 50, 95, 100])
            return {k: round(float(v), 2) for k, v in zip(("min", "p5", "median", "p95", "max"), q)}

        def name(i: int) -> str:
            return names[i] if 0 <= i < len(names) else f"class_{i} (no name)"

        return {
            "images": self.images, "empty_images": self.empty_images, "boxes": int(sum(self.classes.values())),
            "boxes_per_image": quantiles(np.asarray(self.boxes_per_image, float)),
            "classes": {name(i): {"boxes": self.classes[i], "images": self.images_per_class[i]}
                        for i in sorted(self.classes)},
            "classes_without_boxes": [n for i, n in enumerate(names) if self.classes[i] == 0],
            "box_width_px": quantiles(w), "box_height_px": quantiles(h),
            "size_buckets": {"small (<32^2)": int((area < SMALL).sum()),
                             "medium": int(((area >= SMALL) & (area < MEDIUM)).sum()),
                             "large (>=96^2)": int((area >= MEDIUM).sum())},
        }


def collect(ds: YoloDataset, progress: bool = True) -> Stats:
    stats = Stats()
    for image in tqdm(ds.images(), desc="stats", unit="image", disable=not progress):
        width, height = image_size(image)
        boxes = read_boxes(ds.label_path(image))
        stats.images += 1
        stats.empty_images += not boxes
        stats.boxes_per_image.append(len(boxes))
        stats.images_per_class.update({b.class_id for b in boxes})
        for b in boxes:
            stats.classes[b.class_id] += 1
            stats.widths.append(b.w * width)
            stats.heights.append(b.h * height)
    return stats


def plot(stats: Stats, names: list[str], out: Path) -> list[Path]:
    """class_histogram.png and box_sizes.png in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(set(stats.classes) | set(range(len(names))))
    labels = [names[i] if i < len(names) else f"class_{i}" for i in ids]
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(ids) + 2), 4))
    ax.bar(range(len(ids)), [stats.classes[i] for i in ids], color="tab:blue")
    ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=7 if len(ids) > 20 else 9)
    ax.set_ylabel("boxes")
    ax.set_title(f"boxes per class ({stats.images} images, {sum(stats.classes.values())} boxes)")
    fig.tight_layout()
    hist = out / "class_histogram.png"
    fig.savefig(hist, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(stats.widths, stats.heights, s=4, alpha=0.5)
    ax.set_xlabel("box width (px)")
    ax.set_ylabel("box height (px)")
    ax.set_title("box sizes")
    fig.tight_layout()
    sizes = out / "box_sizes.png"
    fig.savefig(sizes, dpi=110)
    plt.close(fig)
    return [hist, sizes]
