"""python -m tools.export: trained weights (or an ONNX file) -> ONNX variants the daemon configures itself from.

  python -m tools.export --weights runs/conveyor-pico/weights/best.pt --imgsz 320 \\
      --out streamd/models/conveyor.onnx --int8 --calibration datasets/conveyor/images/val
  python -m tools.export --onnx streamd/models/conveyor.onnx --out build/conveyor.onnx --fp16 --int8-dynamic \\
      --int8 --calibration datasets/conveyor/images/val --val-data datasets/conveyor/data.yaml --val-split val

Writes OUT (float32) with class names, input size and adapter in the ONNX metadata. From --weights
(any tools.train run's best weights, or an ultralytics .pt): YOLO/RT-DETR via ultralytics' export +
onnxslim (dynamic batch), RF-DETR via rfdetr's exporter, Faster R-CNN via torch.onnx (both then onnxslim);
from --onnx: a copy. Variants beside it:
  --fp16          OUT.fp16.onnx      float16 weights and activations, float32 inputs/outputs
  --int8-dynamic  OUT.int8dyn.onnx   INT8 weights, activations quantised at run time with one scale per
                                     tensor, so an image's output depends on its batch partners: only
                                     for pipelines with inference.max_batch 1 (the daemon warns)
  --prune F       OUT.pruned.onnx    float32 with the smallest fraction F of conv/linear weights zeroed (global
                                     magnitude pruning; --weights only): same speed on dense runtimes,
                                     compresses by about F
  --int8          OUT.int8.onnx      static INT8 QDQ calibrated on --calibration images, the detection
                                     head and the input stem left in float (found automatically,
                                     or --keep-float PREFIX)
With --val-data every variant is evaluated (tools.evaluate) and timed against FP32; a report goes to
OUT.report.md/.json. A variant whose mAP@0.5 drops more than --max-map50-drop below FP32's is renamed
*.rejected.onnx and the command exits 3: a broken variant is never shipped silently.

Exit status: 0 every variant written (and, with --val-data, within tolerance); 1 a variant could not be
made or measured; 2 bad input (a missing or unreadable file, a bad option: the message says which);
3 a variant was refused; 4 FP32 itself scores ~0 mAP@0.5 on --val-data, so the gate could not judge.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from streamd.errors import ModelError
from tools.dataset.yolo import DatasetError
from tools.export.metadata import stamp
from tools.export.quantize import calibration_images, quantize_int8

#: packages only the train extra installs; --weights needs them, --onnx does not
TRAIN_PACKAGES = ("torch", "torchvision", "ultralytics", "rfdetr", "onnxslim")


def _stem(out: Path) -> str:
    return out.name.removesuffix(".onnx")


def weights_framework(weights: Path) -> str:
    """The framework that trained ``weights``: its tools.train run folder says; a bare .pt is ultralytics'."""
    from tools.train.load import framework_of
    from tools.train.options import TrainError

    try:
        return framework_of(weights)
    except TrainError:
        return "yolo"


def input_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the files and options given, in one line naming the option; None when all is usable."""
    given = args.weights or args.onnx
    option = "--weights" if args.weights else "--onnx"
    if not given.is_file():
        return f"{option} {given} does not exist"
    if args.weights and args.weights.suffix == ".onnx":
        return f"--weights {given} is an ONNX file: give it as --onnx {given} to make variants of it"
    if args.onnx:
        try:
            model = onnx.load(str(args.onnx), load_external_data=False)
        except DecodeError:
            model = None
        if model is None or not model.graph.node:
            return (f"--onnx {given} is truncated or not an ONNX file: export or copy it again "
                    "(`streamd model inspect FILE` checks one)")
    if args.int8:
        if args.calibration is None:
            return "--int8 needs --calibration FOLDER with images (e.g. datasets/NAME/images/train)"
        if not args.calibration.exists():
            return f"--calibration {args.calibration} does not exist: give a folder of training images"
        if not args.calibration.is_dir():
            return f"--calibration {args.calibration} is not a folder: give a folder of training images"
        if not calibration_images(args.calibration):
            return (f"--calibration {args.calibration} has no .jpg/.png images (subfolders are not searched): "
                    "give the images folder itself, e.g. datasets/NAME/images/train")
    if args.calibration_count < 1:
        return "--calibration-count must be >= 1"
    if args.val_data is not None:
        if not args.val_data.exists():
            return f"--val-data {args.val_data} does not exist"
        from tools.dataset.yolo import open_dataset

        try:
            open_dataset(args.val_data, split=args.val_split)
        except DatasetError as exc:
            return f"--val-data {args.val_data}{' --val-split ' + args.val_split if args.val_split else ''}: {exc}"
    if args.prune is not None and (args.weights is None or not 0 < args.prune < 1):
        return ("--prune needs --weights (a torch model to prune) and a fraction between 0 and 1, e.g. --prune 0.3")
    if args.max_map50_drop < 0:
        return "--max-map50-drop must be >= 0"
    if args.runs < 1:
        return "--runs must be >= 1"
    return None


def export_weights(args: argparse.Namespace) -> None:
    """FP32 export of ``--weights`` (and its magnitude-pruned twin with ``--prune``) for any tools.train framework."""
    framework = weights_framework(args.weights)
    print(f"{args.weights}: {framework} weights")
    export_to = _export_ultralytics if framework in ("yolo", "rtdetr") else _export_torch
    export_to(args, framework, args.out, "fp32")
    if args.prune is not None:
        export_to(args, framework, args.out.with_name(_stem(args.out) + ".pruned.onnx"), "fp32-pruned", args.prune)


def _prune(module: object, amount: float | None) -> None:
    if amount is not None:
        from tools.export.prune import prune_magnitude

        print(f"pruned {prune_magnitude(module, amount):.1%} of the convolution and linear weights (global magnitude)")


def _export_ultralytics(args: argparse.Namespace, framework: str, out: Path, precision: str,
                        prune_amount: float | None = None) -> None:
    from tools.train.load import load_trained

    model = load_trained(framework, args.weights)  # YOLO or RTDETR, read from the checkpoint
    _prune(model.model, prune_amount)
    exported = Path(model.export(format="onnx", imgsz=args.imgsz, dynamic=True, simplify=True,
                                 opset=args.opset, device="cpu"))
    shutil.copyfile(exported, out)
    adapter = "rtdetr" if type(model).__name__ == "RTDETR" else "ultralytics"
    stamp(out, {"streamd_adapter": adapter, "streamd_precision": precision,
                "streamd_input_size": f"{args.imgsz},{args.imgsz}"})


def _export_torch(args: argparse.Namespace, framework: str, out: Path, precision: str,
                  prune_amount: float | None = None) -> None:
    """RF-DETR and torchvision Faster R-CNN: each framework's own export path, at the size it was trained at."""
    from tools.export.frameworks import export_rfdetr, export_torchvision
    from tools.train.load import load_trained

    model = load_trained(framework, args.weights)
    if framework == "rfdetr":
        _prune(model.model.model, prune_amount)
        export_rfdetr(model, out)
    else:
        _prune(model, prune_amount)
        export_torchvision(model, out, model.imgsz, ["background", *model.names])  # label 0 is background
    stamp(out, {"streamd_precision": precision})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="trained weights to export: tools.train's best.pt/best.pth of any "
                        "framework, or an ultralytics .pt (needs the train extra)")
    source.add_argument("--onnx", type=Path, help="an existing float32 ONNX model to make variants of")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--fp16", action="store_true", help="also write a float16 model")
    parser.add_argument("--int8-dynamic", action="store_true", help="also write a dynamic INT8 model")
    parser.add_argument("--int8", action="store_true", help="also write a static INT8 QDQ model")
    parser.add_argument("--prune", type=float, metavar="FRACTION",
                        help="also write a magnitude-pruned FP32 model with this fraction of weights zeroed "
                        "(0-1, needs --weights)")
    parser.add_argument("--calibration", type=Path, help="folder of calibration images (for --int8)")
    parser.add_argument("--calibration-count", type=int, default=200)
    parser.add_argument("--calibration-method", choices=("percentile", "minmax", "entropy"), default="percentile",
                        help="how --int8 sets activation ranges from the calibration images (default: the "
                        "99.999th percentile, which ignores rare outliers)")
    parser.add_argument("--keep-float", action="append", help="node-name prefix kept in float by --int8 "
                        "(repeatable; replaces the default: the detection head and the input stem up to the third "
                        "convolution, found automatically)")
    parser.add_argument("--val-data", type=Path, help="labelled YOLO folder/data.yaml to evaluate every variant on")
    parser.add_argument("--val-split", help="split of --val-data (e.g. val)")
    parser.add_argument("--labels", help="class names file for models without names metadata")
    parser.add_argument("--max-map50-drop", type=float, default=0.02,
                        help="largest mAP@0.5 loss against FP32 a variant may have (absolute, default 0.02)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the latency column")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per variant")
    parser.add_argument("--verbose", action="store_true",
                        help="also print tools.evaluate's pycocotools summary for every variant")
    args = parser.parse_args(argv)

    problem = input_error(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.weights:
        from tools.train.options import TrainError

        try:
            export_weights(args)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in TRAIN_PACKAGES:
                raise
            print(f"error: --weights needs the training tools ({exc.name} is not installed in {sys.prefix}): run "
                  "this with .venv-train/bin/python, or pip install -e '.[train]' first. --onnx needs neither.",
                  file=sys.stderr)
            return 2
        except TrainError as exc:
            print(f"error: --weights {args.weights}: {exc}", file=sys.stderr)
            return 2
    elif args.onnx.resolve() != args.out.resolve():
        shutil.copyfile(args.onnx, args.out)
    print(f"{args.out}: float32, {args.out.stat().st_size / 1e6:.2f} MB")

    variants = [("fp32", args.out)]
    kept: dict[str, list[str]] = {}  # variant -> nodes it keeps in float
    stem = _stem(args.out)
    if args.prune is not None:
        from tools.export.prune import compressed_mb, onnx_sparsity

        path = args.out.with_name(stem + ".pruned.onnx")
        variants.append(("fp32-pruned", path))
        print(f"{path}: {onnx_sparsity(str(path)):.1%} of weights zero, {compressed_mb(str(path)):.2f} MB compressed "
              f"(fp32: {compressed_mb(str(args.out)):.2f} MB)")
    if args.fp16:
        from tools.export.variants import convert_fp16

        path = convert_fp16(args.out, args.out.with_name(stem + ".fp16.onnx"))
        variants.append(("fp16", path))
        print(f"{path}: float16, {path.stat().st_size / 1e6:.2f} MB")
    if args.int8_dynamic:
        from tools.export.variants import quantize_dynamic_int8

        path = quantize_dynamic_int8(args.out, args.out.with_name(stem + ".int8dyn.onnx"))
        variants.append(("int8-dynamic", path))
        print(f"{path}: int8 dynamic, {path.stat().st_size / 1e6:.2f} MB")
    if args.int8:
        from streamd.infer.model import load_model

        loaded = load_model(str(args.out), labels=args.labels)  # the daemon's own view: input size, pre-processing
        path = args.out.with_name(stem + ".int8.onnx")
        try:
            _, kept["int8-qdq"] = quantize_int8(args.out, path, args.calibration, loaded.input_hw,
                                                loaded.adapter.preprocess, count=args.calibration_count,
                                                head_prefixes=tuple(args.keep_float) if args.keep_float else None,
                                                method=args.calibration_method)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        variants.append(("int8-qdq", path))
        print(f"{path}: int8 QDQ, {len(kept['int8-qdq'])} nodes kept in float, {path.stat().st_size / 1e6:.2f} MB")

    if len(variants) == 1 and args.val_data is None:
        return 0
    from tools.export.variants import (MIN_FP32_MAP50, gate, kept_float_line, measure, refusal, table,
                                        unjudgeable)

    if args.val_data is None:
        print("WARNING: no --val-data given: the variants' accuracy was NOT checked against FP32. Evaluate them "
              "(python -m tools.evaluate) before deploying.", file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory() as work:
            reports = [measure(name, path, args.val_data, args.val_split, args.labels, args.threads, args.runs,
                               Path(work), args.verbose) for name, path in variants]
    except (DatasetError, ModelError, RuntimeError, ValueError) as exc:
        print(f"error: a variant cannot be measured, so none is shipped: {exc}", file=sys.stderr)
        return 1
    for r in reports:
        r.kept_float = kept.get(r.name, [])
    rejected = gate(reports, args.max_map50_drop)
    text = table(reports, args.threads)
    text += "".join(f"\n{line}\n" for r in reports if (line := kept_float_line(r)))
    val = f"{args.val_data}{' split ' + args.val_split if args.val_split else ''}"
    warning = ""
    if unjudgeable(reports):
        warning = (f"WARNING: the FP32 model itself scores mAP@0.5 {reports[0].map50:.4f} (< {MIN_FP32_MAP50}) on "
                   f"--val-data {val}, so the gate CANNOT judge the variants: they are marked unchecked, not "
                   "shipped. Likely causes: the wrong --val-data/--val-split (not this model's classes or images), "
                   "an untrained or broken model, or class names that do not match the dataset's (see the notes "
                   "above; give --labels). Evaluate the FP32 model with python -m tools.evaluate and fix that first.")
    report_md = args.out.with_name(stem + ".report.md")
    report_md.write_text(f"# Variants of `{args.out.name}`\n\nAccuracy on `{val}`; tolerance: mAP@0.5 may drop "
                         f"{args.max_map50_drop} at most.\n\n{text}" + (f"\n**{warning}**\n" if warning else ""))
    args.out.with_name(stem + ".report.json").write_text(json.dumps(
        [{**r.__dict__, "path": str(r.path)} for r in reports], indent=2))
    print(text)
    if warning:
        print(warning, file=sys.stderr)
        return 4
    if rejected:
        for r in rejected:
            print(refusal(r, args.max_map50_drop), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
