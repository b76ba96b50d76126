"""Export an ultralytics model yaml (e.g. yolov8n.yaml) to ONNX for the benchmark, in the training interpreter.

    .venv-train/bin/python -m tools.bench_pipeline.export_model --yaml yolov8n.yaml --imgsz 320 --out nano.onnx

Built from the yaml with random weights (nothing is downloaded): the speed of a nano network at
320 px is that of the trained one, but it detects nothing, so trackers and events get no load.
Dynamic batch and input size, like the project's own exports, so streamd can batch streams.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tools.offline import prepare_offline_ultralytics  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_pipeline.export_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--yaml", required=True, help="ultralytics model yaml, e.g. yolov8n.yaml or yolo11n.yaml")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config-dir", type=Path, default=REPO / "out" / "bench-pipeline" / "yolo-config")
    args = parser.parse_args(argv)
    prepare_offline_ultralytics(args.config_dir)
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = YOLO(args.yaml)
        pt = Path(tmp) / (Path(args.yaml).stem + ".pt")
        model.save(str(pt))
        exported = YOLO(str(pt)).export(format="onnx", imgsz=args.imgsz, dynamic=True, simplify=True, opset=17,
                                        device="cpu", half=False)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(exported, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
