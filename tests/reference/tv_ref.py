"""Reference side of the torchvision equality test; runs in the training interpreter (STREAMD_TRAIN_PYTHON).

  python tests/reference/tv_ref.py export --arch ssdlite --out CACHE/tv-ssdlite.onnx --calib IMAGE...
  python tests/reference/tv_ref.py predict --model CACHE/tv-ssdlite.onnx --threshold 0.3 --out ref.json IMAGE...

Architectures (random init, ``weights=None, weights_backbone=None``: nothing downloaded), 320 x 320:
  fasterrcnn  fasterrcnn_mobilenet_v3_large_320_fpn
  ssdlite     ssdlite320_mobilenet_v3_large

`export` builds the model (seed 0), makes it a meaningful test subject (below) and exports it through
tools.export.frameworks.export_torchvision, which fixes the model's transform to 320 x 320 (a fixed-size
ONNX input; SSDlite's transform is fixed-size already). `predict` rebuilds the same model (a fingerprint of
its weights in the ONNX metadata proves it) and calls it the way torchvision's documentation does,
``model([image])`` with the whole frame as a float 0..1 RGB tensor, so torchvision's own transform resizes
it and its own postprocess maps the boxes back to the frame; the detections (xyxy in frame pixels, score,
label) go to JSON, those at or below --threshold dropped.

A freshly initialised detector is degenerate as a test subject: without trained weights its BatchNorm
layers (plain BatchNorm2d when weights_backbone=None) hold mean 0 / var 1, so activations shrink or blow up
layer by layer, and the class layers put every class near 1/91 (softmax, Faster R-CNN) or near 0.01
(sigmoid-free SSD softmax likewise), under torchvision's own score thresholds. Two cheap steps fix both
without training or downloads: BatchNorm statistics are re-estimated on the calibration images (forward
passes in eval mode with only the BatchNorm layers in training mode, no gradients), and the class layers'
bias is zeroed and their weights scaled by --gain, so scores spread and NMS has real overlaps to resolve.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.reference.batchnorm import recalibrate_batchnorm  # noqa: E402
from tools.export.metadata import read_metadata  # noqa: E402

IMGSZ = 320
FINGERPRINT_KEY = "streamd_reference_fingerprint"
GAINS = {"fasterrcnn": 40.0, "ssdlite": 3.0}  # class-logit weight scale per architecture (see the docstring)


def read_rgb(path: Path):
    """The image as a float 0..1 RGB CHW tensor (OpenCV decodes, as streamd does: same pixels on both sides)."""
    import cv2
    import torch

    image = cv2.imread(str(path))
    if image is None:
        raise SystemExit(f"{path}: not an image")
    return torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1).float() / 255


def class_layers(model) -> list:
    """The layers that emit class logits: Faster R-CNN's cls_score, SSDlite's per-level classification convs."""
    import torch

    heads = getattr(model, "roi_heads", None)
    if heads is not None:
        return [heads.box_predictor.cls_score]
    convs = []
    for block in model.head.classification_head.module_list:
        last = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        convs.append(last)
    return convs


def build(arch: str, calib: list[Path], gain: float):
    import torch
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn, ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    if arch == "fasterrcnn":
        model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
        model.transform.fixed_size = (IMGSZ, IMGSZ)  # what export_torchvision sets: calibrate as it will run
    elif arch == "ssdlite":
        model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    else:
        raise SystemExit(f"unknown --arch {arch!r}: fasterrcnn or ssdlite")
    tensors = [read_rgb(p) for p in calib]
    recalibrate_batchnorm(model, [tensors[i : i + 4] for i in range(0, len(tensors), 4)])
    with torch.no_grad():
        for layer in class_layers(model):
            layer.bias.zero_()
            layer.weight.mul_(gain)
    return model.eval()


def fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def coco_names() -> dict[int, str]:
    """torchvision's COCO label ids (1..90 with gaps, 0 = background) -> names, from its own weights enum
    (metadata only; nothing is downloaded)."""
    from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_320_FPN_Weights

    categories = FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1.meta["categories"]
    return {i: name for i, name in enumerate(categories) if name != "N/A"}


def export(args: argparse.Namespace) -> int:
    from tools.export.frameworks import export_torchvision, write_metadata

    gain = args.gain if args.gain is not None else GAINS[args.arch]
    model = build(args.arch, args.calib, gain)
    path = export_torchvision(model, args.out, IMGSZ, coco_names())
    names = json.loads(read_metadata(path)["names"])
    write_metadata(path, "torchvision", IMGSZ, names, {
        FINGERPRINT_KEY: fingerprint(model), "streamd_reference_arch": args.arch,
        "streamd_reference_gain": str(gain), "streamd_reference_calib": json.dumps([str(p) for p in args.calib])})
    print(f"{path}: {args.arch}, {len(names)} labels, fingerprint {fingerprint(model)}")
    return 0


def predict(args: argparse.Namespace) -> int:
    import torch

    meta = read_metadata(args.model)
    calib = [Path(p) for p in json.loads(meta["streamd_reference_calib"])]
    model = build(meta["streamd_reference_arch"], calib, float(meta["streamd_reference_gain"]))
    if fingerprint(model) != meta.get(FINGERPRINT_KEY):
        print(f"the rebuilt model's weights differ from those exported to {args.model} "
              f"({fingerprint(model)} != {meta.get(FINGERPRINT_KEY)}); delete the file to re-export", file=sys.stderr)
        return 1
    results = []
    with torch.no_grad():
        for image in args.images:
            tensor = read_rgb(image)
            (out,) = model([tensor])
            keep = out["scores"] > args.threshold
            results.append({
                "image": str(image),
                "height": int(tensor.shape[1]),
                "width": int(tensor.shape[2]),
                "xyxy": out["boxes"][keep].numpy().tolist(),
                "confidence": out["scores"][keep].numpy().tolist(),
                "class_id": out["labels"][keep].numpy().astype(int).tolist(),
            })
    args.out.write_text(json.dumps(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--arch", choices=sorted(GAINS), required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--gain", type=float, default=None, help="multiplies the class-logit weights")
    ex.add_argument("--calib", type=Path, nargs="+", required=True, help="images for BatchNorm statistics")
    pr = sub.add_parser("predict")
    pr.add_argument("--model", type=Path, required=True, help="the ONNX file `export` wrote")
    pr.add_argument("--threshold", type=float, default=0.3)
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    return {"export": export, "predict": predict}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
