"""python -m tools.synth: conveyor videos with ground truth, and YOLO datasets from other seeds.

  python -m tools.synth video --seed 1 --speed 6 --density 1.2 --seconds 20 --out demo.mp4
  python -m tools.synth dataset --out datasets/conveyor --train 100-139 --val 140-147 --test 148-155
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from streamd.synth import SceneConfig, render_video
from tools.synth.dataset import write_dataset


def seed_range(text: str) -> list[int]:
    """'100-139' or '1,2,5'."""
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            seeds.extend(range(int(a), int(b) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    video = sub.add_parser("video", help="one H.264 video + ground-truth JSON")
    video.add_argument("--seed", type=int, default=1)
    video.add_argument("--speed", type=float, default=6.0, help="belt speed, pixels per frame")
    video.add_argument("--density", type=float, default=1.0, help="products per second, on average")
    video.add_argument("--seconds", type=float, default=20.0)
    video.add_argument("--fps", type=int, default=30)
    video.add_argument("--out", type=Path, required=True, help="video path; the truth goes to OUT.json")
    data = sub.add_parser("dataset", help="YOLO dataset (images, labels, data.yaml) split by seed")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--train", type=seed_range, default=seed_range("100-139"))
    data.add_argument("--val", type=seed_range, default=seed_range("140-147"))
    data.add_argument("--test", type=seed_range, default=seed_range("148-155"))
    data.add_argument("--every", type=int, default=6, help="keep every Nth frame")
    args = parser.parse_args(argv)

    if args.command == "video":
        config = SceneConfig(seed=args.seed, belt_speed=args.speed, density=args.density, seconds=args.seconds,
                             fps=args.fps)
        with tqdm(total=config.frames, desc=args.out.name, unit="frame") as bar:
            truth = render_video(config, args.out, args.out.with_suffix(".json"),
                                 progress=lambda done, _total: bar.update(done - bar.n))
        print(f"{args.out}: {config.frames} frames; products crossing x={config.line_x}: "
              + ", ".join(f"{k} {v}" for k, v in truth.counts.items()))
        return 0
    overlap = set(args.train) & set(args.val) | set(args.train) & set(args.test) | set(args.val) & set(args.test)
    if overlap:
        print(f"error: seeds {sorted(overlap)} appear in more than one split; give disjoint ranges", file=sys.stderr)
        return 1
    written = write_dataset(args.out, {"train": args.train, "val": args.val, "test": args.test}, every=args.every)
    print(f"{args.out}: " + ", ".join(f"{k} {v} images" for k, v in written.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
