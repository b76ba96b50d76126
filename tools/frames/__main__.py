"""python -m tools.frames: pull training images out of a video file or a live stream.

  python -m tools.frames ../shared/media/videos/Traffic.mp4 --out frames/traffic --fps 2 --dedupe 6
  python -m tools.frames rtsp://user:pass@cam/stream --out frames/cam --fps 1 --duration 600 --max 500
  python -m tools.frames belt.mp4 --out frames/belt --scene 0.05 --dedupe 4 --format png

Selection: --every N and --fps F pick candidate frames; --scene T keeps a candidate only when it
differs from the last kept frame by at least T (mean absolute grey difference, 0..1);
--dedupe D drops a frame whose perceptual hash is within D bits of a recently kept frame.
Writes OUT/<name>_<frame>.jpg and OUT/manifest.csv (file, source with credentials redacted, frame
index, timestamp). Live sources run until --max, --duration or Ctrl-C. OUT must be new or empty;
--overwrite replaces an earlier run's images there. Exit status: 0 done, 1 the source cannot be read,
OUT is in use, or --start is past the video's end, 2 a bad option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamd.redact import redact
from tools.dataset.hashing import HASH_METHODS
from tools.frames.extract import ExtractError, Selection, extract, is_live


def _bounded(kind: type, low: float, high: float, meaning: str):  # type: ignore[no-untyped-def]
    """argparse type: a number in low..high, refused with what the range means (not silently 0 frames)."""
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low:g}..{high:g} ({meaning})")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.frames", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="video file path or stream URL (rtsp://, http://, ...)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for images and the manifest")
    parser.add_argument("--every", type=int, default=1, help="keep every Nth decoded frame (default 1: all)")
    parser.add_argument("--fps", type=float, help="at most this many frames per second of video time")
    parser.add_argument("--scene", type=_bounded(float, 0.0, 1.0, "a fraction of full-scale grey difference"),
                        metavar="T",
                        help="scene-change selection: keep a frame only when it differs from the last kept "
                             "frame by >= T (mean abs grey difference 0..1; 0.03-0.1 is typical)")
    parser.add_argument("--dedupe", type=_bounded(int, 0, 64, "bits of a 64-bit hash"), metavar="BITS",
                        help="drop near-duplicates: perceptual-hash Hamming distance <= BITS (of 64) to a recent "
                             "kept frame (0: identical only; 4-10 typical)")
    parser.add_argument("--hash", choices=HASH_METHODS, default="phash", help="perceptual hash for --dedupe")
    parser.add_argument("--dedupe-window", type=int, default=1000, help="kept frames remembered for --dedupe")
    parser.add_argument("--max", type=int, dest="max_frames", help="stop after writing this many images")
    parser.add_argument("--start", type=float, default=0.0, help="skip the first S seconds")
    parser.add_argument("--duration", type=float, help="stop after S seconds of video time")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--manifest", default="manifest.csv", help="manifest name in OUT (.csv or .jsonl)")
    parser.add_argument("--prefix", help="image name prefix (default: the video's name)")
    parser.add_argument("--overwrite", action="store_true",
                        help="OUT may hold an earlier run: delete the images its manifests list (and images named "
                             "<prefix>_<frame>.jpg|png) and those manifests first; other files stay")
    args = parser.parse_args(argv)

    if is_live(args.source) and args.max_frames is None and args.duration is None:
        print("note: live source without --max or --duration: runs until Ctrl-C", file=sys.stderr)
    if not args.manifest.endswith((".csv", ".jsonl")):
        print(f"error: --manifest {args.manifest} must end in .csv or .jsonl", file=sys.stderr)
        return 2
    selection = Selection(every=args.every, fps=args.fps, scene_threshold=args.scene, dedupe_threshold=args.dedupe,
                          hash_method=args.hash, dedupe_window=args.dedupe_window, max_frames=args.max_frames,
                          start_s=args.start, duration_s=args.duration)
    try:
        summary = extract(args.source, args.out, selection, args.format, args.quality, args.manifest, args.prefix,
                          overwrite=args.overwrite)
    except (ExtractError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stopped; images and {args.out / args.manifest} so far are kept", file=sys.stderr)
        return 130
    if summary.started_past_end(args.start):
        length = summary.length_s or 0.0
        last = summary.last_frame_s
        tail = f", last frame at {last:.2f} s" if last is not None and last < length - 0.005 else ""
        print(f"warning: --start {args.start:g} s is past the end of {redact(args.source)} ({length:.2f} s long"
              f"{tail}); no frames extracted: give a --start below {last if tail else length:.2f}", file=sys.stderr)
        return 1
    if summary.removed:
        print(f"--overwrite: deleted {summary.removed} images of the earlier run in {args.out}", file=sys.stderr)
    print(f"{redact(args.source)}: decoded {summary.decoded}, candidates {summary.candidates}, "
          f"kept {summary.kept} -> {args.out} (skipped: {summary.skipped_scene} below scene threshold, "
          f"{summary.skipped_duplicate} near-duplicates); manifest {args.out / args.manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
