"""`streamd model inspect MODEL.onnx`: what streamd reads from a model file, and how fast it runs here.

Everything is found the way the inference stage finds it (load_model), so what this prints is what the
daemon will do: adapter and why, input size, class names, batch axis, precision, providers, and a
latency estimate measured after warm-up runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from streamd.infer.model import LoadedModel, adapter_candidates, load_model

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
             "DynamicQuantizeLinear"}


@dataclass
class ModelReport:
    path: str
    adapter: str
    adapter_source: str  # pipeline | streamd metadata | ultralytics metadata | output shapes
    adapter_candidates: list[str]
    input_name: str
    input_shape: list[int | str]
    input_hw: tuple[int, int]
    batch_axis: str  # "dynamic", "static N" or "none (one image per run)"
    precision: str  # fp32 | fp16 | fp16 (fp32 inputs) | int8 (QDQ) | int8 (integer ops)
    outputs: list[str]
    num_classes: int
    classes: list[str]
    preprocess: dict[str, Any]
    providers: list[str]
    metadata: dict[str, str] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # batch 1: p50, p90, min, after warm-up

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_text(self) -> str:
        names = ", ".join(self.classes[:12]) + (f", ... ({self.num_classes} in all)" if self.num_classes > 12 else "")
        lines = [
            f"model:      {self.path}",
            f"adapter:    {self.adapter} (from {self.adapter_source}"
            + (f"; shapes also fit {', '.join(c for c in self.adapter_candidates if c != self.adapter)}"
               if len(self.adapter_candidates) > 1 else "") + ")",
            f"input:      {self.input_name} {self.input_shape} -> {self.input_hw[0]}x{self.input_hw[1]} (h x w)",
            f"batch axis: {self.batch_axis}",
            f"precision:  {self.precision}",
            f"outputs:    {'; '.join(self.outputs)}",
            f"classes:    {self.num_classes}: {names}" if self.num_classes else
            "classes:    unknown: the file names none and its outputs do not say how many; the daemon needs a "
            "class-names file (--labels FILE here, `labels:` in the pipeline)",
            "preprocess: " + ", ".join(f"{k}={v}" for k, v in self.preprocess.items()),
            f"providers:  {', '.join(self.providers)}",
        ]
        if self.latency_ms:
            lat = self.latency_ms
            lines.append(f"latency:    {lat['p50']:.2f} ms p50, {lat['p90']:.2f} ms p90, {lat['min']:.2f} ms min "
                         f"(batch 1, {int(lat['runs'])} runs after {int(lat['warmup'])} warm-up, this machine)")
        return "\n".join(lines)


def precision(path: str, input_type: str) -> str:
    """fp32 / fp16 / int8 from the graph: quantisation operators, else the type of the weights."""
    proto = onnx.load(path, load_external_data=False)
    ops = {n.op_type for n in proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "int8 (QDQ)"
    if ops & QUANT_OPS:
        return "int8 (integer ops)"
    weights = [i.data_type for i in proto.graph.initializer if len(i.dims) > 1]
    half = sum(1 for t in weights if t == onnx.TensorProto.FLOAT16)
    if input_type == "tensor(float16)":
        return "fp16"
    if weights and half > len(weights) / 2:
        return "fp16 (fp32 inputs)"
    return "fp32"


def adapter_source(model: LoadedModel, requested: str) -> str:
    meta = model.info.metadata
    if requested != "auto":
        return "the command line"
    if meta.get("streamd_adapter"):
        return "streamd metadata (streamd_adapter)"
    if model.info.ultralytics:
        return "ultralytics metadata (head, end2end, task)"
    return "output names and shapes"


def measure_latency(model: LoadedModel, warmup: int = 3, runs: int = 20, budget_s: float = 10.0) -> dict[str, float]:
    """Milliseconds per batch-1 run on zeros after ``warmup`` runs; stops early after ``budget_s``."""
    h, w = model.input_hw
    tensor = np.zeros((1, 3, h, w), np.float32)
    for _ in range(warmup):
        model.run(tensor)
    times: list[float] = []
    deadline = time.monotonic() + budget_s
    while len(times) < runs and (not times or time.monotonic() < deadline):
        start = time.perf_counter()
        model.run(tensor)
        times.append((time.perf_counter() - start) * 1000)
    arr = np.asarray(times)
    return {"p50": float(np.median(arr)), "p90": float(np.percentile(arr, 90)), "min": float(arr.min()),
            "runs": float(len(arr)), "warmup": float(warmup)}


def inspect_model(path: str | Path, adapter: str = "auto", labels: str | None = None,
                  input_size: tuple[int, int] | None = None, providers: list[str] | None = None,
                  threads: int = 0, runs: int = 20, warmup: int = 3) -> ModelReport:
    """Load ``path`` as the daemon would and describe it; ``runs=0`` skips the latency estimate."""
    model = load_model(str(path), adapter, input_size, labels, providers, intra_op_threads=threads,
                       require_classes=False)
    info = model.info
    if info.unbatched:
        batch = "none (one image per run)"
    elif info.static_batch is None:
        batch = "dynamic"
    else:
        batch = f"static {info.static_batch}"
    input_shape = [d if d is not None else "?" for d in info.input_shape]
    return ModelReport(
        path=str(path),
        adapter=model.adapter.name,
        adapter_source=adapter_source(model, adapter),
        adapter_candidates=[a.name for a in adapter_candidates(info, model.input_hw)],
        input_name=info.input_name,
        input_shape=input_shape,
        input_hw=model.input_hw,
        batch_axis=batch,
        precision=precision(str(path), info.input_type),
        outputs=[f"{n} {[d if d is not None else '?' for d in s]}" for n, s in zip(info.output_names, info.output_shapes)],
        num_classes=model.adapter.num_classes,
        classes=model.names,
        preprocess=asdict(model.adapter.preprocess),
        providers=model.providers,
        metadata={k: v for k, v in info.metadata.items() if k in ("author", "version", "task", "head", "end2end",
                                                                  "imgsz", "stride", "streamd_adapter",
                                                                  "streamd_precision", "description")},
        latency_ms=measure_latency(model, warmup=warmup, runs=runs) if runs > 0 else {},
    )


def run_cli(args: Any) -> int:
    """`streamd model inspect` (arguments from streamd.cli): prints the report, exit 1 on a model error."""
    import sys

    from streamd.errors import ModelError

    try:
        report = inspect_model(args.model, adapter=args.adapter, labels=args.labels,
                               input_size=tuple(args.input_size) if args.input_size else None,
                               providers=args.providers, threads=args.threads, runs=args.runs)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.to_json() if args.json else report.to_text())
    return 0
