"""Rebuild a trained model from tools.train's weights, for export and evaluation.

  from tools.train.load import load_trained
  model = load_trained("torchvision", Path("runs/belt-frcnn/weights/best.pt"))

What comes back depends on the framework (each runner's ``load_trained`` says more):
  yolo, rtdetr   the ultralytics YOLO / RTDETR object (``.model`` the torch module, ``.names`` a dict)
  rfdetr         the rfdetr variant object (``.model.model`` the torch module, ``.class_names``,
                 ``.model_config.resolution``)
  torchvision    the FasterRCNN module in eval mode, with ``.names`` and ``.imgsz`` attached
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.train.options import FRAMEWORKS, TrainError, load_options, run_dir_of


def framework_of(weights: Path) -> str:
    """The framework a weights file came from: its run folder's streamd_train.json, else its suffix."""
    saved = load_options(run_dir_of(weights))
    if saved is not None:
        return saved.framework
    if weights.suffix == ".pth":
        return "rfdetr"
    raise TrainError(f"{weights}: no streamd_train.json in its run folder, so say which framework made it")


def load_trained(framework: str | None, weights: Path) -> Any:
    if not weights.is_file():
        raise TrainError(f"weights {weights} do not exist")
    framework = framework or framework_of(weights)
    if framework in ("yolo", "rtdetr"):
        from tools.train import ultralytics_runner

        return ultralytics_runner.load_trained(weights)
    if framework == "rfdetr":
        from tools.train import rfdetr_runner

        return rfdetr_runner.load_trained(weights)
    if framework == "torchvision":
        from tools.train import torchvision_runner

        return torchvision_runner.load_trained(weights)
    raise TrainError(f"unknown framework {framework!r}; one of {', '.join(FRAMEWORKS)}")
