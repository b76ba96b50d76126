"""python -m tools.bench_models: latency and throughput of models x batch x threads x providers.

  python -m tools.bench_models --model streamd/models/conveyor.onnx --model streamd/models/conveyor.int8.onnx \\
      --batch 1 4 --threads 1 2 --images datasets/conveyor/images/val --out reports/bench \\
      --eval reports/conveyor-fp32/summary.json --eval reports/conveyor-int8/summary.json

Every configuration runs the daemon's path (streamd.infer: letterbox, tensor, ONNX Runtime session
as `load_model` builds it, adapter decode, NMS) on real images when --images is given (random ones
otherwise): median, p90 and p99 milliseconds per batch (end to end and model only) and images/s.
Precision is read from the file (metadata `streamd_precision`, QDQ nodes, float16 tensors). Writes
OUT/bench.csv and OUT/bench.md, and with --eval summaries from tools.evaluate a speed-versus-accuracy
plot (OUT/speed_vs_accuracy.png). Timings vary run to run: compare rows from one run on one machine.
Exit status: 0 done, 1 a model fails to load or run, 2 a bad option (checked before any model runs).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from streamd.errors import ModelError
from streamd.infer.postprocess import PostprocessParams
from tools.dataset.yolo import IMAGE_SUFFIXES
from tools.evaluate.runner import Detector

FIELDS = ["model", "precision", "size_mb", "provider", "threads", "batch", "static_batch", "median_ms", "p90_ms",
          "p99_ms", "model_median_ms", "images_per_s", "runs"]


def precision_of(path: Path) -> str:
    """fp32, fp16, int8-qdq or int8-dynamic, from what the file holds."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    declared = {p.key: p.value for p in proto.metadata_props}.get("streamd_precision")
    if declared:
        return declared
    ops = {n.op_type for n in proto.graph.node}
    if "QuantizeLinear" in ops and "DequantizeLinear" in ops and not ops & {"DynamicQuantizeLinear"}:
        return "int8-qdq"
    if ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}:
        return "int8-dynamic"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16"
    return "fp32"


class UsageError(Exception):
    """A command-line value that cannot work; the message names the option and what to give instead."""


def load_images(folder: Path | None, count: int, hw: tuple[int, int]) -> list[np.ndarray]:
    if folder is None:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (hw[0], hw[1], 3), dtype=np.uint8) for _ in range(count)]
    if not folder.is_dir():
        raise UsageError(f"--images {folder} is not a folder; give a folder of images, or leave --images out "
                         "for random pixels")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not paths:
        raise UsageError(f"--images {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); give a folder "
                         "that holds some, e.g. a dataset's images/val")
    images = [image for image in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths) if image is not None]
    if not images:
        raise UsageError(f"--images {folder}: none of its first {len(paths)} images can be decoded; "
                         "run `python -m tools.dataset validate` on it")
    return images


def load_summary(path: Path) -> dict[str, Any]:
    """A tools.evaluate summary.json, or a UsageError saying what the file is not."""
    hint = "give the summary.json that `python -m tools.evaluate --out DIR` writes in DIR"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f":{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise UsageError(f"--eval {path}{where} is not JSON; {hint}") from exc
    missing = [key for key in ("model", "mAP50-95") if not isinstance(summary, dict) or key not in summary]
    if missing:
        raise UsageError(f"--eval {path} is not a tools.evaluate summary (no {' or '.join(repr(k) for k in missing)}"
                         f" key); {hint}")
    return summary


def at_least(minimum: int) -> Any:
    """argparse type: an integer >= ``minimum`` (so --batch 0 is refused before any model loads)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def bench_one(path: Path, labels: str | None, provider: str, threads: int, batch: int, images: list[np.ndarray] | None,
              image_dir: Path | None, runs: int, warmup: int) -> dict[str, Any]:
    detector = Detector.open(str(path), PostprocessParams(), batch, labels=labels, providers=[provider],
                             threads=threads)
    pool = images if images is not None else load_images(image_dir, 16, detector.model.input_hw)
    batches = [[pool[(i * batch + k) % len(pool)] for k in range(batch)] for i in range(len(pool))]
    for i in range(warmup):
        detector.detect(batches[i % len(batches)])
    detector.timings.model.clear()
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        detector.detect(batches[i % len(batches)])
        times.append((time.perf_counter() - t0) * 1000)
    t = np.asarray(times)
    return {
        "model": str(path), "precision": precision_of(path), "size_mb": round(path.stat().st_size / 1e6, 3),
        "provider": detector.model.providers[0], "threads": threads, "batch": batch,
        "static_batch": detector.model.info.static_batch or "dynamic", "median_ms": round(float(np.median(t)), 3),
        "p90_ms": round(float(np.percentile(t, 90)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3),
        "model_median_ms": round(float(np.median(detector.timings.model)), 3),
        "images_per_s": round(batch * 1000 / float(np.mean(t)), 1), "runs": runs,
    }


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[f]) for f in FIELDS) + " |")
    return "\n".join(lines) + "\n"


def speed_vs_accuracy(rows: list[dict[str, Any]], evals: dict[str, dict[str, Any]], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for row in rows:
        summary = evals.get(str(Path(row["model"]).resolve()))
        if summary is not None and row["batch"] == 1:
            points.append((row, summary))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for row, summary in points:
        ax.scatter(row["median_ms"], summary["mAP50-95"], s=30)
        ax.annotate(f"{Path(row['model']).name} {row['provider'].replace('ExecutionProvider', '')} t{row['threads']}",
                    (row["median_ms"], summary["mAP50-95"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="median latency per image, batch 1 (ms, end to end)", ylabel="mAP@0.5:0.95",
           title="speed vs accuracy (up and left is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "speed_vs_accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", required=True, help="ONNX file (repeat for several)")
    parser.add_argument("--labels", help="class names file for models without names metadata")
    parser.add_argument("--batch", type=at_least(1), nargs="+", default=[1], help="batch sizes to run (>= 1)")
    parser.add_argument("--threads", type=at_least(1), nargs="+", default=[1, os.cpu_count() or 1],
                        help="ONNX Runtime intra-op threads to try (>= 1)")
    parser.add_argument("--provider", nargs="+", default=["CPUExecutionProvider"],
                        help="execution providers to try one at a time (unavailable ones are reported and skipped)")
    parser.add_argument("--images", type=Path, help="folder of real images to run (default: random pixels)")
    parser.add_argument("--runs", type=at_least(1), default=100, help="timed batches per configuration")
    parser.add_argument("--warmup", type=at_least(0), default=10, help="untimed batches first")
    parser.add_argument("--eval", type=Path, action="append", default=[], help="tools.evaluate summary.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    try:
        for option, path in [*(("--model", m) for m in args.model), *(("--eval", e) for e in args.eval)]:
            if not path.is_file():
                raise UsageError(f"{option} {path} does not exist")
        if args.labels and not Path(args.labels).is_file():
            raise UsageError(f"--labels {args.labels} does not exist; give a class names file, one name per line")
        summaries = [load_summary(path) for path in args.eval]
        images = load_images(args.images, 16, (0, 0)) if args.images else None
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    available = ort.get_available_providers()
    providers = [p for p in args.provider if p in available]
    for p in args.provider:
        if p not in available:
            print(f"note: provider {p} is not available here (available: {', '.join(available)}); skipped",
                  file=sys.stderr)
    if not providers:
        print("error: none of the requested providers is available", file=sys.stderr)
        return 1
    configs = list(itertools.product(args.model, providers, sorted(set(args.threads)), sorted(set(args.batch))))
    rows = []
    with tqdm(configs, desc="bench", unit="config", disable=None) as bar:
        for path, provider, threads, batch in bar:
            try:
                rows.append(bench_one(path, args.labels, provider, threads, batch, images, args.images, args.runs,
                                      args.warmup))
            except (ModelError, ValueError) as exc:
                bar.close()  # ends the bar's line, so the error starts on its own
                message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                print(f"error: {message}", file=sys.stderr)
                return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "bench.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    cpu = platform.processor() or platform.machine()
    header = (f"# Model benchmark\n\nMeasured by `python -m tools.bench_models` on {time.strftime('%Y-%m-%d')}, "
              f"{cpu} ({os.cpu_count()} cores), onnxruntime {ort.__version__}; {args.runs} runs after "
              f"{args.warmup} warm-up, {'images from ' + str(args.images) if args.images else 'random images'}. "
              "Latency is per batch, end to end (pre-processing, model, decode, NMS); `model_median_ms` is the "
              "ONNX Runtime call alone. A model with a static batch of 1 runs a batch one image at a time.")
    (args.out / "bench.md").write_text(markdown(rows, header))
    print(markdown(rows, header))
    evals = {}
    for summary in summaries:
        evals[summary.get("model_path") or str(Path(summary["model"]).resolve())] = summary
    if evals:
        plot = speed_vs_accuracy(rows, evals, args.out)
        print(f"wrote {plot}" if plot else "note: no --eval summary matches a benchmarked model (by path)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
