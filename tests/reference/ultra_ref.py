"""Reference side of the equality tests; runs in the training interpreter (STREAMD_TRAIN_PYTHON), not in .venv.

  python tests/reference/ultra_ref.py export --yaml yolov8n.yaml --imgsz 320 --out CACHE/yolov8n.onnx
  python tests/reference/ultra_ref.py predict --model CACHE/yolov8n.onnx --imgsz 320 --conf 0.25 \\
      --iou 0.7 --max-det 100 --out ref.json IMAGE...

`export` builds the model from its yaml (random init, seed 0, nothing downloaded) and exports ONNX.
A freshly initialised network is degenerate as a test subject: its activations shrink layer by layer
(BatchNorm running statistics still at mean 0 / var 1), so every anchor predicts the same box, and the
class prior (YOLO: logit log(5 / nc / (640 / s)^2); RT-DETR: 0.01) puts every score near 1e-5..1e-2, where a
1e-3 score tolerance compares nothing. Two cheap steps fix both without training or downloads:
BatchNorm statistics are re-estimated on the calibration images (forward passes, no gradients), and the
class-logit layers' prior bias is zeroed and their weights scaled by --gain. Scores then spread over
(0, 1) and boxes vary in size and place, so thresholds, ranking, NMS and box mapping all do real work.

`predict` runs ultralytics' own `YOLO(model.onnx).predict` / `RTDETR(model.onnx).predict` on the images
and writes per-image detections (xyxy in source pixels, confidence, class) to JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.reference.batchnorm import recalibrate_batchnorm  # noqa: E402
from tools.export.metadata import read_metadata  # noqa: E402
from tools.offline import prepare_offline_ultralytics  # noqa: E402


def _spread_class_logits(model, nc: int, gain: float) -> int:
    """Zero the prior bias of every layer that emits ``nc`` class logits and scale its weights; returns the count."""
    import torch

    head = model.model[-1]
    changed = 0
    for module in head.modules():
        out = getattr(module, "out_channels", None) or getattr(module, "out_features", None)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and out == nc and module.bias is not None:
            with torch.no_grad():
                module.bias.zero_()
                module.weight.mul_(gain)
            changed += 1
    return changed


def _recalibrate_batchnorm(model, images: list[Path], imgsz: int) -> int:
    """Re-estimate every BatchNorm's running mean/var on ``images`` (letterboxed like predict)."""
    import cv2
    import numpy as np
    import torch
    from ultralytics.data.augment import LetterBox

    letterbox = LetterBox((imgsz, imgsz), auto=False)
    batch = [letterbox(image=cv2.imread(str(p)))[..., ::-1].transpose(2, 0, 1) for p in images]
    x = torch.from_numpy(np.ascontiguousarray(np.stack(batch))).float() / 255
    return recalibrate_batchnorm(model, [x[i : i + 4] for i in range(0, len(x), 4)])


def export(args: argparse.Namespace) -> int:
    prepare_offline_ultralytics(args.config_dir)
    import torch
    from ultralytics import RTDETR, YOLO

    torch.manual_seed(0)
    cls = RTDETR if "rtdetr" in args.yaml else YOLO
    model = cls(args.yaml)
    nc = len(model.model.names)
    if args.calib:
        _recalibrate_batchnorm(model.model, args.calib, args.imgsz)
    changed = _spread_class_logits(model.model, nc, args.gain)
    if not changed:
        print(f"no class-logit layers with {nc} outputs found in {args.yaml}", file=sys.stderr)
        return 1
    work = args.out.parent / (args.out.stem + ".work")
    work.mkdir(parents=True, exist_ok=True)
    pt = work / (args.out.stem + ".pt")
    model.save(str(pt))
    exported = YOLO(str(pt)) if cls is YOLO else RTDETR(str(pt))
    extra = {"nms": False} if args.end2end else {}  # ultralytics >= 8.4 exports the NMS-free branch on nms=False
    path = exported.export(format="onnx", imgsz=args.imgsz, dynamic=args.dynamic, simplify=True, opset=17,
                           device="cpu", half=False, **extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, args.out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{args.out}: {changed} class-logit layers re-initialised")
    return 0


def predict(args: argparse.Namespace) -> int:
    prepare_offline_ultralytics(args.config_dir)
    from ultralytics import RTDETR, YOLO

    meta = read_metadata(args.model)
    cls = RTDETR if meta.get("head") == "RTDETRDecoder" else YOLO
    model = cls(str(args.model)) if cls is RTDETR else cls(str(args.model), task="detect")
    results = []
    for image in args.images:
        (r,) = model.predict(str(image), imgsz=args.imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det,
                             agnostic_nms=args.agnostic, device="cpu", verbose=False, rect=False)
        results.append({
            "image": str(image),
            "height": int(r.orig_shape[0]),
            "width": int(r.orig_shape[1]),
            "xyxy": r.boxes.xyxy.cpu().numpy().tolist(),
            "confidence": r.boxes.conf.cpu().numpy().tolist(),
            "class_id": r.boxes.cls.cpu().numpy().astype(int).tolist(),
        })
    args.out.write_text(json.dumps(results))
    return 0


def fp16(args: argparse.Namespace) -> int:
    """FP16 copy with float16 inputs and outputs (onnxconverter-common), metadata kept. Static-shape exports
    convert cleanly; dynamic ones carry shape arithmetic the converter breaks."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(args.model))
    del model.graph.value_info[:]  # stale float32 shape annotations make the converter emit mismatched casts
    half = float16.convert_float_to_float16(model, keep_io_types=args.keep_io_types)
    del half.metadata_props[:]
    half.metadata_props.extend(model.metadata_props)
    onnx.save(half, str(args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", type=Path, default=REPO / ".yolo")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--yaml", required=True)
    ex.add_argument("--imgsz", type=int, default=320)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--dynamic", action="store_true")
    ex.add_argument("--end2end", action="store_true", help="export the NMS-free head (YOLOv10, YOLO26)")
    ex.add_argument("--gain", type=float, default=0.2, help="multiplies the class-logit weights")
    ex.add_argument("--calib", type=Path, nargs="*", default=[], help="images for BatchNorm statistics")
    pr = sub.add_parser("predict")
    pr.add_argument("--model", type=Path, required=True)
    pr.add_argument("--imgsz", type=int, default=320)
    pr.add_argument("--conf", type=float, default=0.25)
    pr.add_argument("--iou", type=float, default=0.7)
    pr.add_argument("--max-det", type=int, default=300)
    pr.add_argument("--agnostic", action="store_true")
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("images", type=Path, nargs="+")
    half = sub.add_parser("fp16")
    half.add_argument("--model", type=Path, required=True)
    half.add_argument("--out", type=Path, required=True)
    half.add_argument("--keep-io-types", action="store_true", help="keep float32 inputs and outputs")
    args = parser.parse_args(argv)
    return {"export": export, "predict": predict, "fp16": fp16}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
