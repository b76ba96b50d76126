"""Model adapters: turn one image's raw ONNX outputs into candidate boxes; selection from the model file."""

from __future__ import annotations

from streamd.infer.adapters.base import Adapter, ModelInfo
from streamd.infer.adapters.ultralytics import UltralyticsAdapter
from streamd.infer.adapters.yolox import YoloxAdapter

ADAPTERS: dict[str, type[Adapter]] = {"ultralytics": UltralyticsAdapter, "yolox": YoloxAdapter}

__all__ = ["ADAPTERS", "Adapter", "ModelInfo", "UltralyticsAdapter", "YoloxAdapter"]
