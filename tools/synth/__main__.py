"""python -m tools.synth: conveyor videos with ground truth, and YOLO datasets from other seeds.

  python -m tools.synth video --seed 1 --speed 6 --density 1.2 --seconds 20 --out demo.mp4
  python -m tools.synth dataset --out datasets/conveyor --train 100-139 --val 140-147 --test 148-155
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from streamd.synth import SceneConfig, render_video
from tools.synth.dataset import scene_for, write_dataset


def seed_range(text: str) -> list[int]:
    """'100-139' or '1,2,5' (or both: '100-119,130'); argparse shows the message of a bad one."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                if int(b) < int(a):
                    raise argparse.ArgumentTypeError(f"{part!r} runs backwards; write LOW-HIGH, e.g. 100-139")
                seeds.extend(range(int(a), int(b) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed list; write a range like 100-139 or a list "
                                         "like 1,2,5") from None
    if not seeds:
        raise argparse.ArgumentTypeError("no seeds given; write a range like 100-139 or a list like 1,2,5")
    return seeds


def positive(kind: type) -> Any:
    """argparse type: a number > 0."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return value
    return parse


SCENE = scene_for(0)  # every dataset seed renders a scene this long (speed and density vary with the seed)
SEEDS_HELP = ("scene seeds for the {split} split: a range (LOW-HIGH, inclusive) or a comma list; each seed is one "
              f"{SCENE.seconds:g} s scene of its own speed and density, so no scene feeds two splits "
              "(default {default}: {count} scenes)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    video = sub.add_parser("video", help="one H.264 video + ground-truth JSON",
                           description="Render one conveyor video and its ground truth (boxes per frame, "
                                       "expected line counts) to OUT and OUT.json.")
    video.add_argument("--seed", type=int, default=1, help="scene seed: the same seed gives the same video (default 1)")
    video.add_argument("--speed", type=positive(float), default=6.0, help="belt speed, pixels per frame (default 6)")
    video.add_argument("--density", type=positive(float), default=1.0,
                       help="products per second, on average (default 1)")
    video.add_argument("--seconds", type=positive(float), default=20.0, help="video length (default 20)")
    video.add_argument("--fps", type=positive(int), default=30, help="frames per second (default 30)")
    video.add_argument("--out", type=Path, required=True, help="video path; the truth goes to OUT.json")
    data = sub.add_parser("dataset", help="YOLO dataset (images, labels, data.yaml) split by seed",
                          description="Render conveyor scenes into a YOLO dataset: OUT/images/<split>, "
                                      "OUT/labels/<split> and OUT/data.yaml. Each seed is one scene; every "
                                      f"--every-th of its {SCENE.frames} frames becomes an image.")
    data.add_argument("--out", type=Path, required=True, help="new dataset folder")
    for split, default in (("train", "100-139"), ("val", "140-147"), ("test", "148-155")):
        data.add_argument(f"--{split}", type=seed_range, default=seed_range(default), metavar="SEEDS",
                          help=SEEDS_HELP.format(split=split, default=default, count=len(seed_range(default))))
    data.add_argument("--every", type=positive(int), default=6,
                      help=f"keep every Nth frame of each scene (default 6: {-(-SCENE.frames // 6)} images per seed; "
                           "larger: fewer, less alike images)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command == "video":
        config = SceneConfig(seed=args.seed, belt_speed=args.speed, density=args.density, seconds=args.seconds,
                             fps=args.fps)
        with tqdm(total=config.frames, desc=args.out.name, unit="frame", disable=None) as bar:
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
