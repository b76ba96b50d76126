"""What every trainer shares: the options, their per-framework defaults, and the run folder they write.

A run folder is ``<project>/<name>/`` for every framework and always holds:
  streamd_train.json   the options the run started with (what ``--resume`` reads back)
  metrics.json         a summary: best epoch, mAP50 and mAP50-95 of the best weights, where they are
  results.csv          one row per epoch (ultralytics' own, or written here with the same mAP column names)
  weights/best.*       the best weights (best.pt, or best.pth for RF-DETR)
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

FRAMEWORKS = ("yolo", "rtdetr", "rfdetr", "torchvision")
OPTIONS_FILE = "streamd_train.json"
SUMMARY_FILE = "metrics.json"
# results.csv columns shared by every framework (ultralytics' names, so one reader fits all runs)
MAP50, MAP50_95 = "metrics/mAP50(B)", "metrics/mAP50-95(B)"


class TrainError(Exception):
    """Training cannot start or continue; the message names the file or option and what to do."""


@dataclass(frozen=True)
class Defaults:
    """Starting values that suit each framework's optimiser (DETRs diverge at YOLO's SGD learning rate)."""

    model: str
    batch: int
    lr0: float
    momentum: float
    weight_decay: float
    optimizer: str


DEFAULTS: dict[str, Defaults] = {
    "yolo": Defaults("tools/train/models/yolov8-pico.yaml", 32, 0.01, 0.937, 0.0005, "SGD"),
    "rtdetr": Defaults("tools/train/models/rtdetr-pico.yaml", 16, 0.0001, 0.9, 0.0001, "AdamW"),
    "rfdetr": Defaults("nano", 4, 0.0001, 0.9, 0.0001, "AdamW"),
    "torchvision": Defaults("fasterrcnn_mobilenet_v3_large_320_fpn", 8, 0.01, 0.9, 0.0001, "SGD"),
}


# What --weights each framework can start from. Ultralytics asserts on anything but .pt deep inside
# its loader; RF-DETR and torchvision runners torch.load the file, which reads .pt and .pth alike.
WEIGHT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "yolo": (".pt",),
    "rtdetr": (".pt",),
    "rfdetr": (".pth", ".pt"),
    "torchvision": (".pt", ".pth"),
}


def check_weights(framework: str, weights: Path) -> None:
    """Refuse a --weights file the framework cannot start from, before any framework code is imported.

    An exported .onnx, a missing file or a text file renamed .pt would otherwise fail deep inside
    ultralytics/torch with an AssertionError or UnpicklingError traceback.
    """
    accepted = WEIGHT_SUFFIXES[framework]
    if weights.is_dir():
        raise TrainError(f"--weights {weights} is a folder; give the weights file itself "
                         f"(e.g. {weights / 'weights' / ('best' + accepted[0])})")
    if not weights.is_file():
        raise TrainError(f"--weights {weights} does not exist; give a weights file you have")
    if weights.suffix.lower() not in accepted:
        hint = (" (an .onnx is an export: start from the .pt it was exported from)"
                if weights.suffix.lower() == ".onnx" else "")
        raise TrainError(f"--weights {weights}: --framework {framework} starts from {' or '.join(accepted)} "
                         f"files, not {weights.suffix or 'a file without a suffix'}{hint}")
    with weights.open("rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK\x03\x04) since torch 1.6, a protocol-2 pickle (\x80) before
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise TrainError(f"--weights {weights} is not a PyTorch checkpoint (torch.save writes a zip archive); "
                         "is it truncated, or another kind of file renamed?")


@dataclass(frozen=True)
class TrainOptions:
    """One training run, the same fields for every framework (a field a framework cannot use is said so at start)."""

    framework: str
    data: Path
    model: str
    weights: Path | None
    epochs: int
    imgsz: int
    batch: int
    lr0: float
    momentum: float
    weight_decay: float
    optimizer: str
    seed: int
    workers: int
    device: str
    project: Path
    name: str

    @property
    def run_dir(self) -> Path:
        return self.project / self.name

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: Path) -> TrainOptions:
        names = {f.name for f in fields(cls)}
        missing = names - data.keys()
        if missing:
            raise TrainError(f"{where}: missing {', '.join(sorted(missing))}; was this run started by tools.train?")
        values = {k: data[k] for k in names}
        for key in ("data", "project"):
            values[key] = Path(values[key])
        values["weights"] = Path(values["weights"]) if values["weights"] else None
        return cls(**values)

    def with_epochs(self, epochs: int | None) -> TrainOptions:
        return self if epochs is None else replace(self, epochs=epochs)


def save_options(opts: TrainOptions) -> Path:
    opts.run_dir.mkdir(parents=True, exist_ok=True)
    path = opts.run_dir / OPTIONS_FILE
    path.write_text(json.dumps(opts.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def run_dir_of(resume: Path) -> Path:
    """The run folder of a ``--resume`` argument: the folder itself, or the folder holding a checkpoint."""
    if resume.is_dir():
        return resume
    parent = resume.parent
    return parent.parent if parent.name == "weights" else parent


def load_options(run_dir: Path) -> TrainOptions | None:
    """The options a run started with, or None for runs made before tools.train wrote them."""
    path = run_dir / OPTIONS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix or delete it") from exc
    return TrainOptions.from_json(data, path)


def write_summary(run_dir: Path, opts: TrainOptions, *, epochs_done: int, best_epoch: int | None,
                  map50: float | None, map50_95: float | None, best: Path, last: Path | None,
                  names: list[str], metrics_file: str = "results.csv") -> Path:
    """metrics.json: the same few numbers for every framework, so scripts never parse four formats."""
    summary = {
        "framework": opts.framework, "model": opts.model, "data": str(opts.data), "imgsz": opts.imgsz,
        "epochs_done": epochs_done, "best_epoch": best_epoch,
        "mAP50": map50, "mAP50_95": map50_95,  # of the best weights, on the val split
        "best_weights": _rel(best, run_dir), "last_weights": _rel(last, run_dir) if last else None,
        "names": names, "metrics_file": metrics_file,
    }
    path = run_dir / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append one epoch row; the header is written with the first row (columns fixed by it)."""
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_csv(path: Path, keep_epochs: int) -> None:
    """Drop rows after ``keep_epochs`` (a resumed run rewrites the epochs its checkpoint had not kept)."""
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    header = list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(r for r in rows if int(r["epoch"]) <= keep_epochs)


def link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` without doubling disk use where the filesystem allows (checkpoints are large)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    tmp.replace(dst)


def best_row(results_csv: Path) -> tuple[int, int | None, float | None, float | None]:
    """(epochs in the file, best epoch, its mAP50, its mAP50-95): best is the first epoch with the highest
    mAP50-95, the rule ultralytics uses to keep best.pt."""
    if not results_csv.is_file():
        return 0, None, None, None
    with results_csv.open(newline="", encoding="utf-8") as f:
        rows = [{k.strip(): v.strip() for k, v in row.items() if k} for row in csv.DictReader(f)]
    best: dict[str, str] | None = None
    for row in rows:
        if row.get(MAP50_95, "") and (best is None or float(row[MAP50_95]) > float(best[MAP50_95])):
            best = row
    if best is None:
        return len(rows), None, None, None
    return len(rows), int(float(best["epoch"])), float(best[MAP50]), float(best[MAP50_95])
