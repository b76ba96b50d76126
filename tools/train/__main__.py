"""python -m tools.train: train a detector fully offline, with one set of options for four frameworks.

  python -m tools.train --data datasets/conveyor/data.yaml --model tools/train/models/yolov8-pico.yaml \\
      --epochs 40 --imgsz 320 --batch 32 --seed 0 --project runs --name conveyor-pico
  python -m tools.train --framework rtdetr --data datasets/conveyor/data.yaml --epochs 40 --name belt-rtdetr
  python -m tools.train --framework rfdetr --data datasets/conveyor/data.yaml --imgsz 320 --name belt-rfdetr
  python -m tools.train --framework torchvision --data datasets/conveyor/data.yaml --name belt-frcnn
  python -m tools.train --resume runs/belt-frcnn --epochs 60          # continue (and extend) a run

Frameworks and their --model (default first):
  yolo         ultralytics YOLO from a model yaml (tools/train/models/yolov8-pico.yaml, yolov8n.yaml, ...)
  rtdetr       ultralytics RT-DETR from a yaml (tools/train/models/rtdetr-pico.yaml, rtdetr-l.yaml, ...)
  rfdetr       RF-DETR variant: nano, small, medium (needs `pip install 'rfdetr[train]'`; --imgsz a multiple of 32)
  torchvision  Faster R-CNN: fasterrcnn_mobilenet_v3_large_320_fpn, fasterrcnn_mobilenet_v3_large_fpn,
               fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2

The dataset is a YOLO folder (data.yaml with train and val splits); it is converted where a framework
needs another format. Every run starts from scratch unless --weights gives a file you supply; nothing
is downloaded. Unset options take the framework's defaults (printed at start): DETRs use AdamW at
lr 1e-4, YOLO and Faster R-CNN SGD at 0.01. The run folder <project>/<name>/ always holds
streamd_train.json (the options), results.csv (per epoch), metrics.json (summary) and weights/best.*.
--resume takes a run folder or its last checkpoint; ultralytics runs continue an interrupted run with
its saved settings, rfdetr and torchvision runs also accept a larger --epochs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from tools.dataset.yolo import DatasetError, open_dataset
from tools.train.options import (DEFAULTS, FRAMEWORKS, TrainError, TrainOptions, check_weights, load_options,
                                 run_dir_of)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=FRAMEWORKS, help="what trains the model (default: yolo)")
    p.add_argument("--data", type=Path, help="dataset data.yaml (YOLO format), or the folder holding it")
    p.add_argument("--model", help="model yaml / variant / architecture (see above; default per framework)")
    p.add_argument("--weights", type=Path,
                   help="start from these weights (a file you supply), not from scratch: a .pt for yolo and rtdetr, "
                        "a .pth or .pt for rfdetr and torchvision (not an exported .onnx)")
    p.add_argument("--resume", type=Path, help="continue the run in this folder (or that wrote this checkpoint)")
    p.add_argument("--epochs", type=int, help="total epochs (default 40)")
    p.add_argument("--imgsz", type=int, default=320, help="training image size in pixels")
    p.add_argument("--batch", type=int, help="images per step (default: yolo 32, rtdetr 16, rfdetr 4, torchvision 8)")
    p.add_argument("--lr0", "--lr", dest="lr0", type=float, help="initial learning rate")
    p.add_argument("--momentum", type=float, help="SGD momentum (Adam beta1 for ultralytics AdamW)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", help="ultralytics only: SGD, AdamW, ... (default: yolo SGD, rtdetr AdamW)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="data loader processes (default 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--project", type=Path, default=Path("runs"))
    p.add_argument("--name", default="train")
    return p


def _data_yaml(data: Path | None) -> Path:
    hint = "give a dataset's data.yaml (make one with `python -m tools.dataset split ...` or `python -m tools.synth dataset`)"
    if data is None:
        raise TrainError(f"--data is required (unless --resume); {hint}")
    if data.is_dir():
        data = data / "data.yaml"
    if not data.is_file():
        raise TrainError(f"--data {data} does not exist; {hint}")
    for split in ("train", "val"):
        ds = open_dataset(data, split=split)
        if not ds.images():
            raise TrainError(f"--data {data}: the {split} split ({ds.images_root}) has no images")
        if not ds.names:
            raise TrainError(f"--data {data}: no class `names`; add them to the data.yaml")
    return data


def options_from(args: argparse.Namespace) -> TrainOptions:
    framework = args.framework or "yolo"
    d = DEFAULTS[framework]
    opts = TrainOptions(
        framework=framework, data=_data_yaml(args.data).resolve(), model=args.model or d.model,
        weights=args.weights.resolve() if args.weights else None,
        epochs=args.epochs or 40, imgsz=args.imgsz, batch=args.batch or d.batch,
        lr0=d.lr0 if args.lr0 is None else args.lr0, momentum=d.momentum if args.momentum is None else args.momentum,
        weight_decay=d.weight_decay if args.weight_decay is None else args.weight_decay,
        optimizer=args.optimizer or d.optimizer, seed=args.seed,
        workers=2 if args.workers is None else args.workers, device=args.device or "cpu",
        project=args.project.resolve(), name=args.name,  # absolute: --resume may run from anywhere
    )
    if args.weights is not None:
        check_weights(framework, args.weights)
    if opts.framework in ("yolo", "rtdetr") and opts.model.endswith((".yaml", ".yml")) and "/" in opts.model \
            and not Path(opts.model).is_file():
        raise TrainError(f"--model {opts.model} does not exist")
    return opts


def _check(opts: TrainOptions) -> None:
    """Framework-specific refusals, before anything is printed or converted."""
    if opts.framework == "rfdetr":
        from tools.train import rfdetr_runner

        rfdetr_runner.check(opts)
    elif opts.framework == "torchvision":
        from tools.train import torchvision_runner

        torchvision_runner.check(opts)


def _train(opts: TrainOptions) -> Path:
    _check(opts)
    print(f"tools.train: {opts.framework} {opts.model} on {opts.data}: {opts.epochs} epochs, imgsz {opts.imgsz}, "
          f"batch {opts.batch}, lr0 {opts.lr0}, momentum {opts.momentum}, weight decay {opts.weight_decay}, "
          f"seed {opts.seed}, device {opts.device} -> {opts.run_dir}"
          + (f", from {opts.weights}" if opts.weights else ", from scratch"), file=sys.stderr)
    if opts.framework in ("yolo", "rtdetr"):
        from tools.train import ultralytics_runner

        return ultralytics_runner.train(opts)
    if opts.framework == "rfdetr":
        from tools.train import rfdetr_runner

        return rfdetr_runner.train(opts)
    from tools.train import torchvision_runner

    return torchvision_runner.train(opts)


def _resume(args: argparse.Namespace) -> Path:
    resume: Path = args.resume
    if not resume.exists():
        raise TrainError(f"--resume {resume} does not exist; give a run folder or its weights/last.pt")
    run_dir = run_dir_of(resume)
    saved = load_options(run_dir)
    framework = saved.framework if saved else (args.framework or "yolo")
    if args.framework and args.framework != framework:
        raise TrainError(f"--resume {resume} is a {framework} run (see {run_dir}/streamd_train.json), "
                         f"not --framework {args.framework}")
    if framework in ("yolo", "rtdetr"):
        from tools.train import ultralytics_runner

        checkpoint = resume if resume.is_file() else run_dir / "weights" / "last.pt"
        if not checkpoint.is_file():
            raise TrainError(f"{checkpoint} does not exist; ultralytics runs resume from weights/last.pt")
        if args.epochs:
            print("note: ultralytics resumes with the run's own epoch count; --epochs is ignored", file=sys.stderr)
        return ultralytics_runner.resume(checkpoint, saved, framework)
    if saved is None:
        raise TrainError(f"{run_dir} has no streamd_train.json, so its options are unknown; start a new run")
    opts = replace(saved.with_epochs(args.epochs), device=args.device or saved.device,
                   workers=saved.workers if args.workers is None else args.workers,
                   project=run_dir.resolve().parent, name=run_dir.name)  # the folder may have moved
    if framework == "rfdetr":
        from tools.train import rfdetr_runner

        return rfdetr_runner.resume(resume, opts)
    from tools.train import torchvision_runner

    return torchvision_runner.resume(resume, opts)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run_dir = _resume(args) if args.resume else _train(options_from(args))
    except (TrainError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"tools.train: run folder {run_dir} (metrics.json, results.csv, weights/)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
