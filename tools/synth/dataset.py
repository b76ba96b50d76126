"""YOLO-format dataset from conveyor scenes: images + labels, split by seed so no video feeds two splits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import yaml
from tqdm import tqdm

from streamd.synth import CLASSES, ConveyorScene, SceneConfig

MIN_VISIBLE_PX = 8


def scene_for(seed: int) -> SceneConfig:
    """Vary speed and density with the seed so the dataset covers the range the demo uses."""
    speeds = (3.0, 4.5, 6.0, 8.0, 10.0)
    densities = (0.6, 1.0, 1.5, 2.0)
    return SceneConfig(seed=seed, seconds=12.0, belt_speed=speeds[seed % len(speeds)],
                       density=densities[(seed // len(speeds)) % len(densities)])


def write_dataset(out: Path, splits: dict[str, list[int]], every: int = 6, jpeg_quality: int = 90,
                  base: SceneConfig | None = None) -> dict[str, int]:
    """Render each seed's scene and keep every ``every``-th frame; returns images written per split."""
    written = {}
    total = sum(len(seeds) for seeds in splits.values())
    bar = tqdm(total=total, desc="scenes", unit="scene", disable=None)
    for split, seeds in splits.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        count = 0
        for seed in seeds:
            config = scene_for(seed) if base is None else replace(base, seed=seed)
            scene = ConveyorScene(config)
            for index in range(0, config.frames, every):
                image, boxes = scene.render(index)
                stem = f"s{seed:05d}_f{index:05d}"
                cv2.imwrite(str(out / "images" / split / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
                lines = []
                for _, class_id, x1, y1, x2, y2 in boxes:
                    if x2 - x1 < MIN_VISIBLE_PX or y2 - y1 < MIN_VISIBLE_PX:
                        continue
                    w, h = config.width, config.height
                    lines.append(f"{int(class_id)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                                 f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
                (out / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
                count += 1
            bar.update(1)
        written[split] = count
    bar.close()
    data = {"path": str(out.resolve()), **{split: f"images/{split}" for split in splits},
            "names": {i: name for i, name in enumerate(CLASSES)}}
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return written
