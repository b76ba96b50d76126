"""python -m tools.export: trained ultralytics weights -> ONNX the daemon configures itself from.

  python -m tools.export --weights runs/conveyor-pico/weights/best.pt --imgsz 320 \\
      --out streamd/models/conveyor.onnx --int8 --calibration datasets/conveyor/images/val

Writes OUT (float32, dynamic batch) with class names, input size, stride and adapter in the ONNX
metadata, and with --int8 also OUT with .int8.onnx: static INT8 QDQ calibrated on the given images,
the detection head left in float.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import onnx

from tools.export.quantize import quantize_int8, set_metadata
from tools.offline import prepare_offline_ultralytics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--int8", action="store_true", help="also write a static INT8 QDQ model")
    parser.add_argument("--calibration", type=Path, help="folder of calibration images (for --int8)")
    parser.add_argument("--calibration-count", type=int, default=200)
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        print(f"error: --weights {args.weights} does not exist", file=sys.stderr)
        return 1
    if args.int8 and (args.calibration is None or not args.calibration.is_dir()):
        print("error: --int8 needs --calibration FOLDER with images (e.g. datasets/NAME/images/val)", file=sys.stderr)
        return 1
    prepare_offline_ultralytics()
    from ultralytics import YOLO

    model = YOLO(str(args.weights))
    exported = Path(model.export(format="onnx", imgsz=args.imgsz, dynamic=True, simplify=True, opset=args.opset,
                                 device="cpu"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, args.out)
    proto = onnx.load(str(args.out))
    set_metadata(proto, {"streamd_adapter": "ultralytics", "streamd_precision": "fp32",
                         "streamd_input_size": f"{args.imgsz},{args.imgsz}"})
    onnx.save(proto, str(args.out))
    print(f"{args.out}: float32, {args.out.stat().st_size / 1e6:.2f} MB")
    if args.int8:
        from streamd.infer.adapters import UltralyticsAdapter

        int8 = args.out.with_name(args.out.stem + ".int8.onnx")
        quantize_int8(args.out, int8, args.calibration, (args.imgsz, args.imgsz), UltralyticsAdapter.preprocess,
                      count=args.calibration_count)
        print(f"{int8}: int8 QDQ (head in float), {int8.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
