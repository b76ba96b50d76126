"""python -m tools.dataset: work on YOLO-format datasets (DIR/images + DIR/labels, or a data.yaml).

  python -m tools.dataset validate datasets/belt                 # non-zero exit on errors
  python -m tools.dataset convert yolo2coco datasets/belt --out belt.json
  python -m tools.dataset convert coco2yolo belt.json --images datasets/belt/images --out datasets/belt2
  python -m tools.dataset dedupe datasets/belt --threshold 6 --out datasets/belt-unique
  python -m tools.dataset split datasets/belt-unique --ratios 0.8 0.1 0.1 --seed 0 --out datasets/belt-split
  python -m tools.dataset resize datasets/belt --max-side 640 --out datasets/belt-640
  python -m tools.dataset augment datasets/belt-split/data.yaml --split train --copies 2 --out datasets/belt-aug
  python -m tools.dataset stats datasets/belt --out reports/belt-stats

Every command reads SOURCE and writes a new OUT folder; nothing is changed in place. Class names
come from data.yaml, classes.txt, a single *.names file beside images/, or --names FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.dataset.hashing import HASH_METHODS
from tools.dataset.yolo import DatasetError, open_dataset

LINK_MODES = ("copy", "hardlink", "symlink")


def _source(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="dataset folder, its data.yaml, or an images folder")
    p.add_argument("--names", type=Path, help="class names file (one per line) or data.yaml; overrides the dataset's")
    p.add_argument("--split", help="with a data.yaml: which split (train, val, test); default: all of images/")


def _refuse_existing(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"output folder {out} exists and is not empty; choose a new --out")


def cmd_validate(args: argparse.Namespace) -> int:
    from tools.dataset.validate import validate

    ds = open_dataset(args.source, args.names, args.split)
    report = validate(ds, tolerance=args.tolerance, min_box_px=args.min_box_px)
    for finding in report.findings:
        print(finding)
    if args.report:
        args.report.write_text(report.to_json())
    errors = len(report.errors) + (len(report.warnings) if args.strict else 0)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts().items())) or "none"
    print(f"{args.source}: {report.images} images, {report.label_files} label files, {report.boxes} boxes; "
          f"{len(report.errors)} errors, {len(report.warnings)} warnings ({counts})")
    return 1 if errors else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from tools.dataset.coco import coco_to_yolo, load_coco, yolo_to_coco

    if args.direction == "yolo2coco":
        ds = open_dataset(args.source, args.names, args.split)
        coco = yolo_to_coco(ds, offset=args.category_offset)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(coco))
        print(f"{args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes, "
              f"{len(coco['categories'])} categories (ids from {args.category_offset})")
        return 0
    _refuse_existing(args.out)
    result = coco_to_yolo(load_coco(args.source), args.out, args.images, args.link, where=str(args.source))
    print(f"{args.out}: {result['images']} label files, {result['annotations']} boxes"
          + (f"; {result['crowd_skipped']} crowd annotations skipped" if result["crowd_skipped"] else "")
          + ("" if args.images else "; no --images given, so labels and data.yaml only"))
    return 0


def cmd_dedupe(args: argparse.Namespace) -> int:
    from tools.dataset.dedupe import find_duplicates, write_subset

    ds = open_dataset(args.source, args.names, args.split)
    kept, dropped = find_duplicates(ds, args.threshold, args.hash)
    for image, match, distance in dropped:
        print(f"{image}: near-duplicate of {match} ({distance} bits)")
    if args.out:
        _refuse_existing(args.out)
        write_subset(ds, kept, args.out, args.link)
    print(f"{len(kept)} kept, {len(dropped)} near-duplicates" + (f" -> {args.out}" if args.out else " (dry run: give --out)"))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from tools.dataset.split import assign, write_split

    ds = open_dataset(args.source, args.names, args.split)
    _refuse_existing(args.out)
    parts = assign(ds, args.ratios, args.seed)
    counts = write_split(ds, args.out, parts, args.link)
    names = ds.names
    print("| class | " + " | ".join(parts) + " |")
    print("|---|" + "---|" * len(parts))
    for cid in sorted(set().union(*counts.values())):
        label = names[cid] if cid < len(names) else f"class_{cid}"
        print(f"| {label} | " + " | ".join(str(counts[s][cid]) for s in parts) + " |")
    print(f"{args.out}: " + ", ".join(f"{s} {len(v)} images" for s, v in parts.items()) + f" (seed {args.seed})")
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    from tools.dataset.resize import resize_dataset

    ds = open_dataset(args.source, args.names, args.split)
    _refuse_existing(args.out)
    n = resize_dataset(ds, args.out, args.max_side, tuple(args.size) if args.size else None, args.upscale)
    print(f"{args.out}: {n} images")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from tools.dataset.augment import AugmentConfig, augment_dataset

    ds = open_dataset(args.source, args.names, args.split)
    _refuse_existing(args.out)
    config = AugmentConfig(hflip=args.hflip, vflip=args.vflip, rotate=args.rotate, scale=(args.scale_min, args.scale_max),
                           brightness=args.brightness, contrast=args.contrast, blur=args.blur,
                           min_visibility=args.min_visibility)
    counts = augment_dataset(ds, args.out, args.copies, config, args.seed, not args.no_originals)
    print(f"{args.out}: {counts['images']} augmented images; boxes {counts['boxes_in']} -> {counts['boxes_out']} "
          f"(dropped below min_visibility {args.min_visibility})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from tools.dataset.stats import collect, plot

    ds = open_dataset(args.source, args.names, args.split)
    stats = collect(ds)
    summary = stats.summary(ds.names)
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "stats.json").write_text(json.dumps(summary, indent=2))
        for path in plot(stats, ds.names, args.out):
            print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="report every problem, by file and line; exit 1 on errors")
    _source(p)
    p.add_argument("--tolerance", type=float, default=1e-6, help="how far (normalised) a box may leave the image")
    p.add_argument("--min-box-px", type=float, default=1.0, help="boxes thinner than this are degenerate")
    p.add_argument("--strict", action="store_true", help="warnings (empty labels, repeated boxes) fail too")
    p.add_argument("--report", type=Path, help="also write the findings as JSON")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("convert", help="YOLO txt <-> COCO JSON (lossless round trip)")
    p.add_argument("direction", choices=("yolo2coco", "coco2yolo"))
    _source(p)
    p.add_argument("--out", type=Path, required=True, help="yolo2coco: JSON file; coco2yolo: new dataset folder")
    p.add_argument("--images", type=Path, help="coco2yolo: folder the JSON's file_name values are relative to")
    p.add_argument("--category-offset", type=int, default=1, help="yolo2coco: category id of class 0")
    p.add_argument("--link", choices=LINK_MODES, default="copy", help="coco2yolo: how images are placed")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("dedupe", help="drop near-duplicate images (perceptual hash)")
    _source(p)
    p.add_argument("--threshold", type=int, default=4, help="Hamming distance in bits (of 64) that counts as a duplicate")
    p.add_argument("--hash", choices=HASH_METHODS, default="phash")
    p.add_argument("--out", type=Path, help="write the unique images + labels here (else only report)")
    p.add_argument("--link", choices=LINK_MODES, default="copy")
    p.set_defaults(run=cmd_dedupe)

    p = sub.add_parser("split", help="reproducible class-balanced train/val(/test) split")
    _source(p)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.1, 0.1], help="train val [test], summing to 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--link", choices=LINK_MODES, default="copy")
    p.set_defaults(run=cmd_split)

    p = sub.add_parser("resize", help="shrink images (labels are normalised, so they stay valid)")
    _source(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--max-side", type=int, help="longest side in pixels, aspect kept")
    group.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="exact size (stretches)")
    p.add_argument("--upscale", action="store_true", help="also enlarge smaller images")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=cmd_resize)

    p = sub.add_parser("augment", help="albumentations: flips, rotation, scale, brightness/contrast, blur")
    _source(p)
    p.add_argument("--copies", type=int, default=2, help="augmented versions per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hflip", type=float, default=0.5, help="probability")
    p.add_argument("--vflip", type=float, default=0.0, help="probability")
    p.add_argument("--rotate", type=float, default=15.0, help="max rotation, degrees")
    p.add_argument("--scale-min", type=float, default=0.8)
    p.add_argument("--scale-max", type=float, default=1.2)
    p.add_argument("--brightness", type=float, default=0.25)
    p.add_argument("--contrast", type=float, default=0.25)
    p.add_argument("--blur", type=int, default=5, help="max blur kernel")
    p.add_argument("--min-visibility", type=float, default=0.3, help="drop boxes less visible than this fraction")
    p.add_argument("--no-originals", action="store_true", help="write only the augmented images")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=cmd_augment)

    p = sub.add_parser("stats", help="class histogram, boxes per image, box sizes")
    _source(p)
    p.add_argument("--out", type=Path, help="folder for stats.json, class_histogram.png, box_sizes.png")
    p.set_defaults(run=cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
