"""YOLO and RT-DETR through ultralytics: its own trainer, results.csv, plots and weights/{best,last}.pt.

Both start from a model yaml (from scratch) unless --weights names a .pt to transfer from; nothing is
downloaded (tools.offline sets ultralytics' offline switches before it is imported).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.dataset.yolo import read_names
from tools.offline import prepare_offline_ultralytics
from tools.train.options import TrainError, TrainOptions, best_row, save_options, write_summary


def _model_class(framework: str) -> Any:
    prepare_offline_ultralytics()
    from ultralytics import RTDETR, YOLO  # imported after the offline environment is set

    return RTDETR if framework == "rtdetr" else YOLO


def train(opts: TrainOptions) -> Path:
    model = _model_class(opts.framework)(opts.model)
    if opts.weights:
        model = model.load(str(opts.weights))
    save_options(opts)
    model.train(
        data=str(opts.data.resolve()), epochs=opts.epochs, imgsz=opts.imgsz, batch=opts.batch, lr0=opts.lr0,
        momentum=opts.momentum, weight_decay=opts.weight_decay, optimizer=opts.optimizer, seed=opts.seed,
        deterministic=True, workers=opts.workers, device=opts.device, project=str(opts.project.resolve()),
        name=opts.name, exist_ok=True, pretrained=False, amp=False, plots=True, verbose=True,
        # the belt only moves left to right and products are never upside down in a way that matters
        fliplr=0.5, flipud=0.5, mosaic=1.0, close_mosaic=5,
    )
    return summarize(Path(model.trainer.save_dir), opts)


def resume(checkpoint: Path, opts: TrainOptions | None, framework: str) -> Path:
    """Continue an interrupted run from its last.pt; ultralytics restores every setting from the file."""
    cls = _model_class(framework)
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:  # ultralytics strips both when a run ends
        raise TrainError(f"{checkpoint} is from a finished run (ultralytics resumes only interrupted ones); "
                         f"to train further start a new run: --weights {checkpoint} --epochs N --name NEW")
    del ckpt
    model = cls(str(checkpoint))
    model.train(resume=True)
    run_dir = Path(model.trainer.save_dir)
    return summarize(run_dir, opts) if opts else run_dir


def summarize(run_dir: Path, opts: TrainOptions) -> Path:
    epochs, best_epoch, map50, map50_95 = best_row(run_dir / "results.csv")
    write_summary(run_dir, opts, epochs_done=epochs, best_epoch=best_epoch, map50=map50, map50_95=map50_95,
                  best=run_dir / "weights" / "best.pt", last=run_dir / "weights" / "last.pt",
                  names=read_names(opts.data))
    return run_dir


def load_trained(weights: Path) -> Any:
    """The ultralytics model object (YOLO or RTDETR, read from the file) for export or prediction."""
    prepare_offline_ultralytics()
    import torch
    from ultralytics import RTDETR, YOLO

    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    is_detr = type(ckpt.get("model") or ckpt.get("ema")).__name__ == "RTDETRDetectionModel"
    return (RTDETR if is_detr else YOLO)(str(weights))
