"""python -m tools.model_card: measure a detector's test-split accuracy and latency, write its model card.

  python -m tools.model_card --data datasets/conveyor/data.yaml --fp32 streamd/models/conveyor.onnx \\
      --int8 streamd/models/conveyor.int8.onnx --out streamd/models/MODEL_CARD.md --recipe RECIPE.md

Accuracy: ultralytics' validator on the `test` split, run on the ONNX files themselves (mAP50, mAP50-95,
precision, recall). Latency: the daemon's own model loader, batch 1, median and p90 over repeated runs.
Every number in the card comes from this run.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from tools.offline import prepare_offline_ultralytics


def accuracy(model: Path, data: Path, imgsz: int) -> dict[str, float]:
    from ultralytics import YOLO

    metrics = YOLO(str(model), task="detect").val(data=str(data), split="test", imgsz=imgsz, batch=1, device="cpu",
                                                  plots=False, verbose=False)
    return {"mAP50": float(metrics.box.map50), "mAP50-95": float(metrics.box.map), "precision": float(metrics.box.mp),
            "recall": float(metrics.box.mr)}


def latency(model: Path, threads: int, runs: int = 200) -> dict[str, float]:
    from streamd.infer.model import load_model

    loaded = load_model(str(model), intra_op_threads=threads)
    h, w = loaded.input_hw
    batch = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    for _ in range(20):
        loaded.run(batch)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        loaded.run(batch)
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.model_card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--int8", type=Path)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipe", type=Path, required=True, help="Markdown with how the model was made")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    prepare_offline_ultralytics()
    rows = []
    for name, path in (("fp32", args.fp32), ("int8", args.int8)):
        if path is None:
            continue
        acc = accuracy(path, args.data, args.imgsz)
        lat = latency(path, args.threads)
        rows.append((name, path, acc, lat))
        print(name, acc, lat)
    cpu = platform.processor() or platform.machine()
    lines = [
        "| model | file size | mAP50 | mAP50-95 | precision | recall | latency median | latency p90 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, path, acc, lat in rows:
        lines.append(f"| {name} (`{path.name}`) | {path.stat().st_size / 1e6:.2f} MB | {acc['mAP50']:.3f} | "
                     f"{acc['mAP50-95']:.3f} | {acc['precision']:.3f} | {acc['recall']:.3f} | "
                     f"{lat['median_ms']:.2f} ms | {lat['p90_ms']:.2f} ms |")
    measured = (f"Measured by `python -m tools.model_card` on {time.strftime('%Y-%m-%d')}: accuracy on the "
                f"`test` split of `{args.data}` at {args.imgsz} px; latency with ONNX Runtime "
                f"(CPUExecutionProvider, {args.threads} intra-op threads, batch 1) on this machine "
                f"({cpu}, {platform.system()}).")
    args.out.write_text(args.recipe.read_text().rstrip() + "\n\n## Measured\n\n" + measured + "\n\n"
                        + "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
