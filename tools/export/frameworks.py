"""ONNX export of non-ultralytics detectors (RF-DETR, torchvision) with the metadata streamd configures itself from.

Both functions take a model object already in memory (built from a checkpoint by the caller, or freshly
initialised by the reference tests), write a float32 ONNX file and stamp it with ``streamd_adapter``,
``streamd_input_size``, ``streamd_precision`` and ``names``, so ``streamd model inspect`` and the daemon
need no pipeline settings for it. They need the train extra (torch, torchvision, rfdetr, onnx); the
daemon never imports this module.

  RF-DETR      rfdetr's own ``RFDETR.export`` (legacy TorchScript tracer, opset 17, dynamic batch):
               ``input`` [B, 3, S, S] -> ``dets`` [B, Q, 4] cxcywh normalised, ``labels`` [B, Q, C] logits.
  torchvision  ``torch.onnx.export`` of the detector on one image: ``image`` [3, S, S] float in 0..1 ->
               ``boxes`` [N, 4] xyxy in input pixels, ``scores`` [N], ``labels`` [N]. The model's own
               transform (resize, normalisation) and NMS are inside the graph. Its transform is set to a
               fixed S x S size first, so the eager model and the exported graph see a frame the same way
               (stretched to S x S, as streamd's torchvision adapter feeds it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Names = Sequence[str] | Mapping[int, str]

OPSET = 17


def slot_names(names: Names, slots: int) -> list[str]:
    """One name per output class index: a list is taken as is (padded with class_<i>), a mapping places each
    name at its id (COCO-style sparse category ids), every other slot is class_<i>."""
    if isinstance(names, Mapping):
        return [str(names.get(i, f"class_{i}")) for i in range(slots)]
    listed = [str(n) for n in names][:slots]
    return listed + [f"class_{i}" for i in range(len(listed), slots)]


def simplify(path: Path) -> None:
    """Fold constants and fuse what onnxslim can, in place (RF-DETR: ~3000 nodes to ~800; outputs unchanged)."""
    import onnx
    import onnxslim

    onnx.save(onnxslim.slim(str(path)), str(path))


def write_metadata(path: Path, adapter: str, imgsz: int, names: list[str], extra: dict[str, str] | None = None) -> None:
    """Stamp ``path`` with the keys streamd.infer.model reads (names as a JSON list)."""
    from tools.export.metadata import stamp

    stamp(path, {"streamd_adapter": adapter, "streamd_precision": "fp32", "streamd_input_size": f"{imgsz},{imgsz}",
                 "names": json.dumps(names), **(extra or {})})


def export_rfdetr(model: Any, out_path: str | Path, imgsz: int | None = None, names: Names | None = None,
                  dynamic_batch: bool = True) -> Path:
    """Export an ``rfdetr`` model object (RFDETRNano, RFDETRSmall, ... or one loaded from a checkpoint) to
    ``out_path`` with rfdetr's own exporter.

    ``imgsz`` defaults to the model's resolution and must be divisible by patch_size * num_windows (rfdetr
    checks). ``names`` defaults to the model's class names, placed the way rfdetr's predict reads its class
    ids: by COCO category id for the COCO-pretrained layout (more logit slots than names), by index otherwise.
    """
    out_path = Path(out_path)
    imgsz = int(imgsz or model.model.resolution)
    if names is None:
        names = _rfdetr_names(model)
    with tempfile.TemporaryDirectory(prefix="rfdetr-export-") as work:
        exported = Path(model.export(output_dir=work, shape=(imgsz, imgsz), opset_version=OPSET,
                                     dynamic_batch=dynamic_batch, verbose=False, output_name="model"))
        slots = _logit_slots(exported)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(exported, out_path)
    simplify(out_path)
    write_metadata(out_path, "rfdetr", imgsz, slot_names(names, slots))
    return out_path


def _rfdetr_names(model: Any) -> Names:
    from rfdetr.assets.coco_classes import COCO_CLASS_NAMES, COCO_CLASSES

    names = list(model.class_names)
    slots = getattr(getattr(model.model, "args", None), "num_classes", len(names))
    if slots > len(names) and names == list(COCO_CLASS_NAMES):
        return dict(COCO_CLASSES)  # pretrained COCO layout: logit index = COCO category id
    return names


def _logit_slots(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for output in proto.graph.output:
        if output.name == "labels":
            return int(output.type.tensor_type.shape.dim[-1].dim_value)
    raise ValueError(f"rfdetr export {path} has no `labels` output (outputs: {[o.name for o in proto.graph.output]})")


def _single_image(detector: Any) -> Any:
    """``detector`` as a module taking one [3, H, W] image in 0..1 and returning (boxes, scores, labels), the
    order streamd's adapter reads (torchvision returns a dict per image). Defined here so this module
    imports without torch."""
    import torch

    class SingleImage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            (out,) = self.detector([image])
            return out["boxes"], out["scores"], out["labels"]

    return SingleImage()


def export_torchvision(model: Any, out_path: str | Path, imgsz: int, names: Names) -> Path:
    """Export a torchvision detection model (Faster R-CNN, RetinaNet, FCOS, SSD, SSDlite) taking one image.

    The model's transform is fixed to ``imgsz`` x ``imgsz`` in place (``fixed_size``), so calling the model
    afterwards in PyTorch gives what the ONNX file gives on a frame stretched to that size. ``names`` index
    the model's labels (torchvision's COCO weights use category ids with label 0 = background).
    """
    import torch

    out_path = Path(out_path)
    transform = getattr(model, "transform", None)
    if transform is None or not hasattr(transform, "fixed_size"):
        raise ValueError(f"{type(model).__name__} has no GeneralizedRCNNTransform (`transform`); "
                         f"export_torchvision takes torchvision.models.detection models")
    transform.fixed_size = (imgsz, imgsz)
    model.eval()
    wrapper = _single_image(model).eval()
    example = torch.rand(3, imgsz, imgsz)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(wrapper, (example,), str(out_path), input_names=["image"],
                          output_names=["boxes", "scores", "labels"], opset_version=OPSET, do_constant_folding=True,
                          dynamic_axes={"boxes": {0: "detections"}, "scores": {0: "detections"},
                                        "labels": {0: "detections"}}, dynamo=False)
    slots = _torchvision_classes(model)
    if slots is None:
        slots = max(names) + 1 if isinstance(names, Mapping) else len(names)
    simplify(out_path)
    write_metadata(out_path, "torchvision", imgsz, slot_names(names, slots))
    return out_path


def _torchvision_classes(model: Any) -> int | None:
    """Number of label values the model can emit (its class count, background included), when findable."""
    heads = getattr(model, "roi_heads", None)
    predictor = getattr(heads, "box_predictor", None)
    if predictor is not None and hasattr(predictor, "cls_score"):
        return int(predictor.cls_score.out_features)
    classifier = getattr(getattr(model, "head", None), "classification_head", None)
    for attribute in ("num_columns", "num_classes"):  # SSD / SSDlite; RetinaNet / FCOS
        if hasattr(classifier, attribute):
            return int(getattr(classifier, attribute))
    return None
