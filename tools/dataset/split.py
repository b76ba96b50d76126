"""Reproducible, class-balanced train/val/test split.

Stratification for multi-label images: each image is filed under its rarest class (the class with
the fewest boxes in the whole dataset among those it contains; `background` when it has none), so a
rare class is spread over the splits rather than landing in one by chance. Within each stratum the
images are shuffled with the seed (from sorted names, so the result depends only on the files and
the seed) and cut by the ratios with largest-remainder rounding.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from tools.dataset.yolo import YoloDataset, place, read_boxes, write_data_yaml

SPLITS = ("train", "val", "test")


def assign(ds: YoloDataset, ratios: list[float], seed: int) -> dict[str, list[Path]]:
    if len(ratios) not in (2, 3) or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(f"ratios {ratios} must be 2 or 3 non-negative numbers that sum to 1 (e.g. 0.8 0.1 0.1)")
    images = ds.images()
    classes = {image: {b.class_id for b in read_boxes(ds.label_path(image))} for image in images}
    frequency = Counter(b for cs in classes.values() for b in cs)
    strata: dict[str, list[Path]] = defaultdict(list)
    for image in images:
        present = classes[image]
        key = "background" if not present else str(min(present, key=lambda c: (frequency[c], c)))
        strata[key].append(image)
    rng = random.Random(seed)
    ordered: list[Path] = []
    for key in sorted(strata, key=lambda k: (len(strata[k]), k)):  # rarest strata first
        members = sorted(strata[key])
        rng.shuffle(members)
        ordered.extend(members)
    # Deal the ordered images to the split furthest below its share so far: the totals match the
    # ratios and every stratum (a run of consecutive images) is spread over the splits in proportion.
    names = SPLITS[: len(ratios)]
    out: dict[str, list[Path]] = {name: [] for name in names}
    for k, image in enumerate(ordered, start=1):
        deficits = [ratios[i] * k - len(out[name]) for i, name in enumerate(names)]
        out[names[deficits.index(max(deficits))]].append(image)
    return {name: sorted(paths) for name, paths in out.items()}


def write_split(ds: YoloDataset, out: Path, parts: dict[str, list[Path]], mode: str = "copy",
                progress: bool = True) -> dict[str, Counter[int]]:
    """Copy (or link) images and labels into OUT/images/<split>, OUT/labels/<split>; class counts per split."""
    counts: dict[str, Counter[int]] = {}
    total = sum(len(v) for v in parts.values())
    with tqdm(total=total, desc="split", unit="image", disable=not progress) as bar:
        for name, images in parts.items():
            counts[name] = Counter()
            for image in images:
                rel = ds.relative(image)
                place(image, out / "images" / name / rel, mode)
                label = ds.label_path(image)
                target = out / "labels" / name / rel.with_suffix(".txt")
                if label.is_file():
                    place(label, target, "copy")
                    counts[name].update(b.class_id for b in read_boxes(label))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text("")
                bar.update(1)
    write_data_yaml(out, ds.names, {name: f"images/{name}" for name in parts})
    return counts
