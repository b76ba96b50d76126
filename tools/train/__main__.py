"""python -m tools.train: train an ultralytics detector fully offline.

  python -m tools.train --data datasets/conveyor/data.yaml --model tools/train/models/yolov8-pico.yaml \\
      --epochs 40 --imgsz 320 --batch 32 --seed 0 --project runs --name conveyor-pico

Starts from scratch unless --weights gives a .pt file you supply; --resume continues a run from its
last.pt. The run folder gets ultralytics' metrics (results.csv, plots) and weights/best.pt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.offline import prepare_offline_ultralytics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset data.yaml (YOLO format)")
    parser.add_argument("--model", default="tools/train/models/yolov8-pico.yaml", help="model yaml")
    parser.add_argument("--weights", type=Path, help="start from these weights (.pt), instead of from scratch")
    parser.add_argument("--resume", type=Path, help="continue the run that wrote this last.pt")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr0", type=float, default=0.01, help="initial learning rate")
    parser.add_argument("--momentum", type=float, default=0.937)
    parser.add_argument("--weight-decay", type=float, default=0.0005)
    parser.add_argument("--optimizer", default="SGD")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--project", type=Path, default=Path("runs"))
    parser.add_argument("--name", default="train")
    args = parser.parse_args(argv)

    for path, what in ((args.data, "--data"), (args.weights, "--weights"), (args.resume, "--resume")):
        if path is not None and not path.is_file():
            print(f"error: {what} {path} does not exist", file=sys.stderr)
            return 1
    prepare_offline_ultralytics()
    from ultralytics import YOLO  # imported after the offline environment is set

    if args.resume:
        model = YOLO(str(args.resume))
        model.train(resume=True)
        return 0
    model = YOLO(args.model)
    if args.weights:
        model = model.load(str(args.weights))
    model.train(
        data=str(args.data.resolve()), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, lr0=args.lr0,
        momentum=args.momentum, weight_decay=args.weight_decay, optimizer=args.optimizer, seed=args.seed,
        deterministic=True, workers=args.workers, device=args.device, project=str(args.project.resolve()),
        name=args.name, exist_ok=True, pretrained=False, amp=False, plots=True, verbose=True,
        # the belt only moves left to right and products are never upside down in a way that matters
        fliplr=0.5, flipud=0.5, mosaic=1.0, close_mosaic=5,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
