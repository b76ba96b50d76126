"""Loading an ONNX model: ONNX Runtime session with provider fallback, adapter selection, class names."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

from streamd.errors import ModelError
from streamd.infer.adapters import ADAPTERS, Adapter, ModelInfo

log = structlog.get_logger()
DEFAULT_INPUT = (640, 640)


def create_session(path: str, providers: list[str], intra_op_threads: int = 0,
                   inter_op_threads: int = 1, spin: bool = False) -> ort.InferenceSession:
    if not Path(path).is_file():
        raise ModelError(f"model file {path} does not exist; check the pipeline's `model:` path")
    available = ort.get_available_providers()
    chosen = [p for p in providers if p in available]
    skipped = [p for p in providers if p not in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    if skipped:
        log.warning("providers_unavailable", model=path, skipped=skipped, using=chosen, available=available)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(path, sess_options=options, providers=chosen)
    except Exception as exc:  # ORT raises its own exception types per failure kind
        raise ModelError(f"model {path} cannot be loaded by ONNX Runtime: {exc}") from exc


def model_info(session: ort.InferenceSession, path: str) -> ModelInfo:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"model {path} has {len(inputs)} inputs; streamd expects one image input")
    return ModelInfo(
        path=path,
        input_name=inputs[0].name,
        input_shape=tuple(d if isinstance(d, int) else None for d in inputs[0].shape),
        output_shapes=[tuple(d if isinstance(d, int) else None for d in o.shape) for o in session.get_outputs()],
        metadata=dict(session.get_modelmeta().custom_metadata_map),
    )


def input_hw(info: ModelInfo, configured: tuple[int, int] | None) -> tuple[int, int]:
    """Model input [height, width]: static axes of the file, else config, else metadata imgsz, else 640."""
    shape = info.input_shape
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
        if configured and tuple(configured) != (shape[2], shape[3]):
            raise ModelError(
                f"model {info.path} has a fixed input of {shape[2]}x{shape[3]}; "
                f"remove input_size {list(configured)} from the pipeline"
            )
        return shape[2], shape[3]
    if configured:
        return configured[0], configured[1]
    imgsz = info.metadata.get("imgsz")
    if imgsz:
        parsed = ast.literal_eval(imgsz)
        return (parsed, parsed) if isinstance(parsed, int) else (int(parsed[0]), int(parsed[1]))
    return DEFAULT_INPUT


def select_adapter(info: ModelInfo, requested: str, hw: tuple[int, int]) -> type[Adapter]:
    if requested != "auto":
        return ADAPTERS[requested]
    declared = info.metadata.get("streamd_adapter")
    if declared in ADAPTERS:
        return ADAPTERS[declared]
    found = [a for a in ADAPTERS.values() if a.matches(info, hw)]
    if len(found) == 1:
        return found[0]
    shapes = ", ".join(str(list(s)) for s in info.output_shapes)
    if not found:
        raise ModelError(
            f"model {info.path}: no adapter reads outputs {shapes} at input {hw[0]}x{hw[1]}; "
            f"set `adapter:` in the pipeline to one of {', '.join(ADAPTERS)} (or check input_size)"
        )
    raise ModelError(
        f"model {info.path}: outputs {shapes} fit several adapters ({', '.join(a.name for a in found)}); "
        f"set `adapter:` in the pipeline"
    )


def class_names(info: ModelInfo, labels_path: str | None, num_classes: int) -> list[str]:
    """From the labels file when given, else the model's metadata, else class_<id>."""
    if labels_path:
        try:
            names = [ln.strip() for ln in Path(labels_path).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as exc:
            raise ModelError(f"labels file {labels_path} cannot be read: {exc.strerror or exc}") from exc
        if len(names) < num_classes:
            raise ModelError(f"labels file {labels_path} has {len(names)} names but model {info.path} "
                             f"predicts {num_classes} classes")
        return names
    raw = info.metadata.get("names")
    if raw:
        try:
            parsed = json.loads(raw) if raw.lstrip().startswith("[") else ast.literal_eval(raw)
        except (ValueError, SyntaxError) as exc:
            raise ModelError(f"model {info.path}: metadata `names` is unreadable ({exc}); give a labels file") from exc
        if isinstance(parsed, dict):
            return [str(parsed[k]) for k in sorted(parsed)]
        return [str(n) for n in parsed]
    return [f"class_{i}" for i in range(num_classes)]


def num_classes(info: ModelInfo, adapter: type[Adapter]) -> int:
    shape = info.output_shapes[0]
    if adapter.name == "ultralytics" and isinstance(shape[1], int):
        return shape[1] - 4
    if adapter.name == "yolox" and isinstance(shape[2], int):
        return shape[2] - 5
    raise ModelError(f"model {info.path}: cannot tell the number of classes from outputs {info.output_shapes}")


@dataclass
class LoadedModel:
    session: ort.InferenceSession
    info: ModelInfo
    adapter: Adapter
    names: list[str]
    input_hw: tuple[int, int]

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run a float32 NCHW batch of any size, whatever batch axis the model declares."""
        static = self.info.static_batch
        n = batch.shape[0]
        if static is None or static == n:
            return list(self.session.run(None, {self.info.input_name: batch}))
        if static == 1:
            parts = [self.session.run(None, {self.info.input_name: batch[i : i + 1]}) for i in range(n)]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        if n < static:  # pad a static batch, drop the padding's outputs
            padded = np.zeros((static, *batch.shape[1:]), batch.dtype)
            padded[:n] = batch
            return [o[:n] for o in self.session.run(None, {self.info.input_name: padded})]
        chunks = [self.run(batch[i : i + static]) for i in range(0, n, static)]
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]

    def warm_up(self) -> None:
        h, w = self.input_hw
        self.run(np.zeros((1, 3, h, w), np.float32))


def load_model(path: str, adapter: str = "auto", input_size: tuple[int, int] | None = None,
               labels: str | None = None, providers: list[str] | None = None, intra_op_threads: int = 0,
               inter_op_threads: int = 1, spin: bool = False) -> LoadedModel:
    session = create_session(path, providers or ["CPUExecutionProvider"], intra_op_threads, inter_op_threads, spin)
    info = model_info(session, path)
    hw = input_hw(info, input_size)
    adapter_class = select_adapter(info, adapter, hw)
    nc = num_classes(info, adapter_class)
    return LoadedModel(session=session, info=info, adapter=adapter_class(hw, nc),
                       names=class_names(info, labels, nc), input_hw=hw)
