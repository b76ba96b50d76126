"""FP16 and dynamic INT8 variants of a float32 ONNX model, and the accuracy gate every variant passes.

The gate: each variant is evaluated with tools.evaluate on the same labelled folder as the FP32
model and timed with tools.bench_models' runner (both through the daemon's inference code). A
variant whose mAP@0.5 falls more than the tolerance below FP32's is renamed *.rejected.onnx, so no
pipeline can load it by its intended name, and the export exits non-zero. When FP32 itself scores
about zero (below ``MIN_FP32_MAP50``) there is nothing to compare against: every variant would pass,
so they are all marked "unchecked" instead (wrong validation set, untrained model or class names that
do not match the dataset's are the usual causes).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from tools.export.metadata import read_metadata, set_metadata, stamp

#: FP32 mAP@0.5 below which the gate cannot judge a variant (any variant "keeps" an accuracy of ~0)
MIN_FP32_MAP50 = 0.01


def convert_fp16(fp32: Path, out: Path) -> Path:
    """Weights and activations in float16; inputs and outputs stay float32 so the daemon feeds it as before."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32))
    half = convert_float_to_float16(model, keep_io_types=True)
    set_metadata(half, {**read_metadata(fp32), "streamd_precision": "fp16"})
    onnx.save(half, str(out))
    return out


def quantize_dynamic_int8(fp32: Path, out: Path) -> Path:
    """INT8 weights, activations quantised at run time (no calibration images; usually slower than
    static QDQ for convolution networks on CPU, but a quick first size reduction).

    The input stem and the detection head stay float as for static INT8, and also the convolutions that
    one per-tensor weight scale cannot represent (quantize.dynamic_float_nodes): on YOLOX-Nano mAP@0.5
    goes from 0.508 to 0.017 with everything quantized, 0.443 with head and stem float, 0.496 with these.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tools.export.quantize import dynamic_float_nodes

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prep.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        keep = dynamic_float_nodes(onnx.load(str(prepared)))
        # unsigned weights: QInt8 ones run ORT's CPU ConvInteger 3x slower on YOLOX-Nano (and lose 0.02 more mAP@0.5)
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QUInt8, nodes_to_exclude=keep)
    stamp(out, {**read_metadata(fp32), "streamd_precision": "int8-dynamic"})
    return out


@dataclass
class VariantReport:
    name: str
    path: Path
    size_mb: float
    median_ms: float
    p90_ms: float
    compressed_mb: float = 0.0
    map50: float | None = None
    map: float | None = None
    map50_drop: float | None = None
    accepted: bool = True
    #: shipped (within tolerance, or not evaluated), refused (renamed *.rejected.onnx), or unchecked (FP32 ~0)
    status: str = "shipped"
    #: int8-qdq: the nodes left in float (the detection head and what else quantize_int8 chose)
    kept_float: list[str] = field(default_factory=list)


def measure(name: str, path: Path, data: Path | None, split: str | None, labels: str | None, threads: int,
            runs: int, work: Path, verbose: bool = False) -> VariantReport:
    """Size, latency and (with ``data``) mAP of one variant; tools.evaluate's pycocotools summary only if ``verbose``."""
    from tools.bench_models.__main__ import bench_one

    images = None
    image_dir = None
    if data is not None:
        from tools.dataset.yolo import open_dataset

        image_dir = open_dataset(data, split=split).images_root
    timing = bench_one(path, labels, "CPUExecutionProvider", threads, 1, images, image_dir, runs, max(3, runs // 10))
    from tools.export.prune import compressed_mb

    report = VariantReport(name, path, round(path.stat().st_size / 1e6, 3), timing["median_ms"], timing["p90_ms"],
                           round(compressed_mb(str(path)), 3))
    if data is not None:
        from tools.evaluate.__main__ import main as evaluate

        out = work / name
        args = ["--model", str(path), "--data", str(data), "--out", str(out), "--no-plots", "--threads", str(threads)]
        if split:
            args += ["--split", split]
        if labels:
            args += ["--labels", labels]
        quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            status = evaluate(args)
        if status != 0:
            raise RuntimeError(f"evaluating {path} failed (see above)")
        summary = json.loads((out / "summary.json").read_text())
        report.map50, report.map = summary["mAP50"], summary["mAP50-95"]
    return report


def unjudgeable(reports: list[VariantReport]) -> bool:
    """True when FP32 was evaluated and scores about zero, so a variant's drop against it means nothing."""
    return reports[0].map50 is not None and reports[0].map50 < MIN_FP32_MAP50


def gate(reports: list[VariantReport], tolerance: float) -> list[VariantReport]:
    """Mark variants whose mAP@0.5 is more than ``tolerance`` below the first (FP32) report's; rename them.

    With FP32 at about zero every report is marked unchecked (not accepted, not renamed) and none is refused.
    """
    base = reports[0]
    rejected = []
    for r in reports[1:]:
        if base.map50 is None or r.map50 is None:
            continue
        r.map50_drop = base.map50 - r.map50
        if unjudgeable(reports):
            continue
        if r.map50_drop > tolerance:
            r.accepted = False
            r.status = "refused"
            target = r.path.with_name(r.path.name.removesuffix(".onnx") + ".rejected.onnx")
            shutil.move(r.path, target)
            r.path = target
            rejected.append(r)
    if unjudgeable(reports):
        for r in reports:
            r.accepted, r.status = False, "unchecked"
    return rejected


ADVICE = {
    "int8-dynamic": "dynamic INT8 takes no calibration and scales weights and activations per tensor: use --int8 "
                    "(static QDQ, calibrated, per-channel weights) or --fp16 instead",
    "int8-qdq": "try more or more representative --calibration images (training images), keep more layers in "
                "float (--keep-float PREFIX), or use --fp16",
    "fp16": "the model overflows or underflows in float16: deploy FP32, or try --int8",
    "fp32-pruned": "prune less (a smaller --prune fraction) or fine-tune after pruning",
}


def refusal(r: VariantReport, tolerance: float) -> str:
    """The line that says a variant was refused, where it went, and what to try instead (advice per variant)."""
    return (f"REFUSED: {r.name} variant loses {r.map50_drop:.4f} mAP@0.5 against FP32 (tolerance {tolerance}); "
            f"moved to {r.path}. Do not deploy it: {ADVICE.get(r.name, 'use another variant')}.")


def kept_float_line(r: VariantReport, shown: int = 6) -> str:
    """'int8-qdq keeps N nodes in float: a, b, ... (+M more)', or '' when the variant keeps none."""
    if not r.kept_float:
        return ""
    more = f" (+{len(r.kept_float) - shown} more, all in the report's JSON)" if len(r.kept_float) > shown else ""
    return f"{r.name} keeps {len(r.kept_float)} nodes in float: {', '.join(r.kept_float[:shown])}{more}"


def table(reports: list[VariantReport], threads: int) -> str:
    base = reports[0]
    lines = [f"| variant | file | size | vs fp32 | compressed | latency median (p90), batch 1, {threads} thread(s) | mAP@0.5 | "
             "mAP@0.5:0.95 | mAP@0.5 change | mAP@0.5:0.95 change | shipped |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        if r.map50 is None or r.map is None or base.map is None:
            acc = "not measured | - | - | -"
        elif r is base:
            acc = f"{r.map50:.4f} | {r.map:.4f} | - | -"
        else:
            acc = f"{r.map50:.4f} | {r.map:.4f} | {-(r.map50_drop or 0):+.4f} | {r.map - base.map:+.4f}"
        shipped = {"shipped": "yes", "refused": "**REFUSED**", "unchecked": "**unchecked**"}[r.status]
        lines.append(f"| {r.name} | `{r.path.name}` | {r.size_mb:.2f} MB | {r.size_mb / base.size_mb:.2f}x | {r.compressed_mb:.2f} MB | "
                     f"{r.median_ms:.2f} ms ({r.p90_ms:.2f}) | {acc} | {shipped} |")
    return "\n".join(lines) + "\n"
