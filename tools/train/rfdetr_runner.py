"""RF-DETR (Roboflow's DINOv2-backed DETR) through its own PyTorch Lightning trainer, offline.

rfdetr reads COCO JSON in train/valid/test folders, so the YOLO dataset is converted with tools.dataset
into <run>/dataset (images are symlinked, not copied). The nano/small/medium variants use 16-pixel
patches, for which rfdetr builds the DINOv2 backbone from a bundled config instead of fetching
facebook/dinov2 from the Hugging Face hub; the hub is switched off anyway so nothing can be fetched.
Weights: rfdetr's checkpoint_best_total.pth (the better of the EMA and regular model) becomes
weights/best.pth; last.ckpt (full trainer state) is what --resume continues from.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tools.dataset.coco import yolo_to_coco
from tools.dataset.yolo import DatasetError, open_dataset, place, read_names
from tools.train.options import (
    MAP50,
    MAP50_95,
    TrainError,
    TrainOptions,
    best_row,
    link_or_copy,
    save_options,
    write_summary,
)

VARIANTS = {"nano": "RFDETRNano", "small": "RFDETRSmall", "medium": "RFDETRMedium"}
PATCH_MULTIPLE = 32  # patch_size 16 x num_windows 2 for every variant above
SPLITS = {"train": "train", "val": "valid", "test": "test"}  # data.yaml split -> rfdetr folder


def prepare_offline_hf() -> None:
    """Keep transformers / huggingface_hub from reaching the network (set before rfdetr is imported)."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ[key] = "1"
    os.environ.setdefault("WANDB_MODE", "disabled")


def _import_rfdetr() -> Any:
    prepare_offline_hf()
    try:
        import rfdetr

        importlib.import_module("pytorch_lightning")  # rfdetr's trainer, only in its `train` extra
    except ModuleNotFoundError as exc:
        raise TrainError(f"--framework rfdetr needs the `{exc.name}` package, which {sys.executable} lacks; "
                         "install it with: pip install 'rfdetr[train]>=1.11'") from exc
    return rfdetr


def check(opts: TrainOptions) -> None:
    """Refuse what rfdetr would refuse later, before the dataset is converted."""
    if opts.model not in VARIANTS:
        raise TrainError(f"--model {opts.model!r} is not an RF-DETR variant tools.train builds offline; "
                         f"choose one of {', '.join(VARIANTS)}")
    if opts.imgsz % PATCH_MULTIPLE:
        up = (opts.imgsz // PATCH_MULTIPLE + 1) * PATCH_MULTIPLE
        raise TrainError(f"--imgsz {opts.imgsz}: RF-DETR needs a multiple of {PATCH_MULTIPLE} "
                         f"(patch 16 x 2 windows); use {up - PATCH_MULTIPLE} or {up}")


def convert_dataset(data: Path, out: Path) -> Path:
    """YOLO data.yaml -> rfdetr's layout: out/{train,valid,test}/_annotations.coco.json + images."""
    if out.exists():
        shutil.rmtree(out)
    for split, folder in SPLITS.items():
        try:
            ds = open_dataset(data, split=split)
        except DatasetError:
            if split == "test":
                continue  # rfdetr only reads test when asked to
            raise
        coco = yolo_to_coco(ds, offset=1, progress=False)
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        for image in ds.images():
            place(image, target / ds.relative(image), "symlink")
        (target / "_annotations.coco.json").write_text(json.dumps(coco), encoding="utf-8")
    return out


def _model(opts: TrainOptions, rfdetr: Any) -> Any:
    cls = getattr(rfdetr, VARIANTS[opts.model])
    weights = str(opts.weights.resolve()) if opts.weights else None
    return cls(pretrain_weights=weights, resolution=opts.imgsz, device=opts.device)


def _fit(opts: TrainOptions, resume: Path | None) -> Path:
    check(opts)
    rfdetr = _import_rfdetr()
    run_dir = opts.run_dir.resolve()
    save_options(opts)
    dataset = convert_dataset(opts.data, run_dir / "dataset")
    model = _model(opts, rfdetr)
    if opts.momentum != 0.9:
        print("note: RF-DETR trains with AdamW; --momentum is not used", file=sys.stderr)
    model.train(
        dataset_dir=str(dataset), output_dir=str(run_dir), epochs=opts.epochs, batch_size=opts.batch,
        grad_accum_steps=1, lr=opts.lr0, lr_encoder=opts.lr0 * 1.5, weight_decay=opts.weight_decay,
        num_workers=opts.workers, seed=opts.seed, device=opts.device, class_names=read_names(opts.data),
        resume=str(resume) if resume else None, progress_bar="tqdm", tensorboard=False,
        checkpoint_interval=10**6,  # last.ckpt and the best only: no 480 MB archive every 10 epochs
    )
    return summarize(run_dir, opts)


def train(opts: TrainOptions) -> Path:
    return _fit(opts, None)


def resume(checkpoint: Path, opts: TrainOptions) -> Path:
    """Continue from last.ckpt (optimizer, scheduler and EMA state included) up to opts.epochs in total."""
    ckpt = checkpoint if checkpoint.suffix == ".ckpt" else opts.run_dir / "last.ckpt"
    if not ckpt.is_file():
        raise TrainError(f"{ckpt} does not exist; RF-DETR resumes from the run's last.ckpt")
    return _fit(opts, ckpt.resolve())


def summarize(run_dir: Path, opts: TrainOptions) -> Path:
    _results_from_lightning(run_dir / "metrics.csv", run_dir / "results.csv")
    best_src = run_dir / "checkpoint_best_total.pth"
    if not best_src.is_file():
        raise TrainError(f"{best_src} was not written; see rfdetr's log above")
    best = run_dir / "weights" / "best.pth"
    link_or_copy(best_src, best)
    last = run_dir / "last.ckpt"
    epochs, best_epoch, map50, map50_95 = best_row(run_dir / "results.csv")
    write_summary(run_dir, opts, epochs_done=epochs, best_epoch=best_epoch, map50=map50, map50_95=map50_95,
                  best=best, last=last if last.is_file() else None, names=read_names(opts.data))
    return run_dir


def _results_from_lightning(metrics_csv: Path, results_csv: Path) -> None:
    """One row per epoch with the shared mAP columns, merged into any earlier results.csv (a resumed run's
    Lightning log may start afresh). mAP is that of the better of the regular and EMA model, as best.pth is."""
    rows: dict[int, dict[str, str]] = {}
    if results_csv.is_file():
        with results_csv.open(newline="", encoding="utf-8") as f:
            rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
    if metrics_csv.is_file():
        merged: dict[int, dict[str, str]] = {}
        with metrics_csv.open(newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                merged.setdefault(int(r["epoch"]) + 1, {}).update({k: v for k, v in r.items() if v != ""})
        for epoch, r in merged.items():
            candidates = [(float(r[f"val/{p}mAP_50_95"]), float(r[f"val/{p}mAP_50"]))
                          for p in ("", "ema_") if r.get(f"val/{p}mAP_50_95")]
            best = max(candidates) if candidates else None
            rows[epoch] = {"epoch": str(epoch), "train/loss": r.get("train/loss", ""),
                           MAP50: f"{best[1]:.5f}" if best else "", MAP50_95: f"{best[0]:.5f}" if best else ""}
    with results_csv.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "train/loss", MAP50, MAP50_95])
        writer.writeheader()
        writer.writerows(rows[e] for e in sorted(rows))


def load_trained(weights: Path) -> Any:
    """The rfdetr model object (e.g. RFDETRNano) with the trained weights and class names, offline.

    ``.model.model`` is the torch module, ``.class_names`` the names, ``.model_config.resolution`` the size.
    """
    rfdetr = _import_rfdetr()
    return rfdetr.RFDETR.from_checkpoint(str(weights), trust_checkpoint=True, device="cpu")
