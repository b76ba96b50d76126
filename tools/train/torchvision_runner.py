"""torchvision Faster R-CNN with a small training loop of our own (torchvision ships models, not a trainer).

SGD with --lr0/--momentum/--weight-decay, a linear warm-up over the first epoch then cosine decay, one
checkpoint per epoch (weights/last.pt: model, optimizer, scheduler, epoch, best score) so --resume
continues exactly where a run stopped, and validation mAP by pycocotools after every epoch
(results.csv). weights/best.pt holds the model of the epoch with the highest mAP50-95.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path
from typing import Any

from tools.dataset.yolo import read_names
from tools.train.options import (
    MAP50,
    MAP50_95,
    TrainError,
    TrainOptions,
    append_csv,
    best_row,
    save_options,
    truncate_csv,
    write_summary,
)

ARCHS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
         "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2")


def check(opts: TrainOptions) -> None:
    if opts.model not in ARCHS:
        raise TrainError(f"--model {opts.model!r} is not a torchvision detector tools.train builds; "
                         f"choose one of {', '.join(ARCHS)}")


def build_model(arch: str, num_classes: int, imgsz: int) -> Any:
    """An untrained detector: no weights fetched (weights=None, weights_backbone=None); the model resizes
    every image so its longer side is ``imgsz`` (min_size=max_size=imgsz)."""
    if arch not in ARCHS:
        raise TrainError(f"{arch!r} is not one of the torchvision detectors tools.train builds: {', '.join(ARCHS)}")
    from torchvision.models import get_model

    return get_model(arch, weights=None, weights_backbone=None, num_classes=num_classes,
                     min_size=imgsz, max_size=imgsz)


def load_weights(model: Any, path: Path) -> None:
    """Start from a user's file: a state_dict, or a tools.train checkpoint. Tensors whose shape differs
    (the class head of a COCO model) keep their fresh initialisation; what was skipped is printed."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise TrainError(f"--weights {path}: expected a state_dict (or a tools.train checkpoint), "
                         f"found {type(state).__name__}")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape}
    if not usable:
        raise TrainError(f"--weights {path}: none of its tensors fit {type(model).__name__}; "
                         "was it saved from the same --model?")
    model.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    print(f"--weights {path}: loaded {len(usable)}/{len(own)} tensors"
          + (f"; kept fresh: {', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''}" if skipped else ""),
          file=sys.stderr)


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _schedule(steps_per_epoch: int, epochs: int) -> Any:
    warmup = max(1, min(steps_per_epoch, 1000))
    total = max(1, steps_per_epoch * epochs)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.001 + (1 - 0.001) * step / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    return factor


def _save(path: Path, payload: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a kill mid-write never leaves a broken last.pt behind


def _model_payload(model: Any, opts: TrainOptions, names: list[str], epoch: int, score: float) -> dict[str, Any]:
    return {"framework": "torchvision", "arch": opts.model, "num_classes": len(names) + 1, "names": names,
            "imgsz": opts.imgsz, "epoch": epoch, "map50_95": score, "model": model.state_dict()}


def train(opts: TrainOptions, resume_from: Path | None = None) -> Path:
    import torch
    from tqdm import tqdm

    from tools.train.torchvision_data import evaluate, loader

    names = read_names(opts.data)
    run_dir = opts.run_dir
    weights = run_dir / "weights"
    device = torch.device(opts.device)
    _seed(opts.seed)
    model = build_model(opts.model, len(names) + 1, opts.imgsz)
    if opts.weights and resume_from is None:
        load_weights(model, opts.weights)
    model.to(device)
    train_loader = loader(opts.data, "train", opts.batch, opts.workers, train=True, seed=opts.seed)
    val_loader = loader(opts.data, "val", opts.batch, opts.workers, train=False, seed=opts.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=opts.lr0, momentum=opts.momentum, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(len(train_loader), opts.epochs))
    start, best = 0, -1.0
    if resume_from is not None:
        ckpt = torch.load(resume_from, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        start, best = int(ckpt["epoch"]), float(ckpt["best_map50_95"])
        truncate_csv(run_dir / "results.csv", start)
        if start >= opts.epochs:
            raise TrainError(f"{resume_from} already finished {start} of {opts.epochs} epochs; "
                             f"give --epochs N with N > {start} to train further")
        print(f"resuming {resume_from} at epoch {start + 1}/{opts.epochs}", file=sys.stderr)
    save_options(opts)
    for epoch in range(start + 1, opts.epochs + 1):
        model.train()
        train_loader.generator.manual_seed(opts.seed + epoch)  # same order per epoch, resumed or not
        sums: dict[str, float] = {}
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{opts.epochs}", unit="batch", disable=None)
        for images, targets in bar:
            images = [im.to(device) for im in images]
            targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
                       for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise TrainError(f"epoch {epoch}: loss is {loss.item()}; lower --lr0 (now {opts.lr0})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for key, value in {"loss": loss, **losses}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        metrics = evaluate(model, val_loader, device)
        row = {"epoch": epoch, **{f"train/{k}": round(v / max(len(train_loader), 1), 5) for k, v in sums.items()},
               MAP50: round(metrics["map50"], 5), MAP50_95: round(metrics["map50_95"], 5),
               "lr/pg0": optimizer.param_groups[0]["lr"]}
        append_csv(run_dir / "results.csv", row)
        print(f"epoch {epoch}/{opts.epochs}: loss {row['train/loss']}, mAP50 {metrics['map50']:.4f}, "
              f"mAP50-95 {metrics['map50_95']:.4f}", file=sys.stderr)
        if metrics["map50_95"] > best or not (weights / "best.pt").is_file():
            best = max(best, metrics["map50_95"])
            _save(weights / "best.pt", _model_payload(model, opts, names, epoch, metrics["map50_95"]))
        _save(weights / "last.pt", {**_model_payload(model, opts, names, epoch, metrics["map50_95"]),
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "rng": torch.get_rng_state(), "best_map50_95": best})
    return summarize(run_dir, opts, names)


def resume(checkpoint: Path, opts: TrainOptions) -> Path:
    last = checkpoint if checkpoint.is_file() else opts.run_dir / "weights" / "last.pt"
    if not last.is_file():
        raise TrainError(f"{last} does not exist; torchvision runs resume from weights/last.pt")
    return train(opts, resume_from=last)


def summarize(run_dir: Path, opts: TrainOptions, names: list[str]) -> Path:
    epochs, best_epoch, map50, map50_95 = best_row(run_dir / "results.csv")
    write_summary(run_dir, opts, epochs_done=epochs, best_epoch=best_epoch, map50=map50, map50_95=map50_95,
                  best=run_dir / "weights" / "best.pt", last=run_dir / "weights" / "last.pt", names=names)
    return run_dir


def load_trained(weights: Path) -> Any:
    """The Faster R-CNN of a best.pt / last.pt, in eval mode; ``.names`` and ``.imgsz`` are attached for export."""
    import torch

    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("framework") != "torchvision":
        raise TrainError(f"{weights} is not a tools.train torchvision checkpoint (weights/best.pt of such a run)")
    model = build_model(ckpt["arch"], int(ckpt["num_classes"]), int(ckpt["imgsz"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    model.names = list(ckpt["names"])
    model.imgsz = int(ckpt["imgsz"])
    return model
