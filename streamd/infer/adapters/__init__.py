"""Model adapters: turn one image's raw ONNX outputs into candidate boxes; selection from the model file."""

from __future__ import annotations

from streamd.infer.adapters.base import Adapter, ModelInfo
from streamd.infer.adapters.detr import RfdetrAdapter
from streamd.infer.adapters.fastestdet import FastestDetAdapter
from streamd.infer.adapters.torchvision import TorchvisionAdapter
from streamd.infer.adapters.ultralytics import RtdetrAdapter, UltralyticsAdapter, UltralyticsEndToEndAdapter
from streamd.infer.adapters.yolox import YoloxAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    a.name: a
    for a in (UltralyticsAdapter, UltralyticsEndToEndAdapter, RtdetrAdapter, YoloxAdapter, FastestDetAdapter,
              RfdetrAdapter, TorchvisionAdapter)
}

__all__ = ["ADAPTERS", "Adapter", "FastestDetAdapter", "ModelInfo", "RfdetrAdapter", "RtdetrAdapter",
           "TorchvisionAdapter", "UltralyticsAdapter", "UltralyticsEndToEndAdapter", "YoloxAdapter"]
