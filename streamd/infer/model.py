"""Loading an ONNX model: ONNX Runtime session with provider fallback, adapter selection, class names.

The adapter comes from (in order) the pipeline's ``adapter:``, the project's own ``streamd_adapter``
metadata, ultralytics' export metadata (head, end2end, task), and last the output names and shapes.
"""

from __future__ import annotations

import ast
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog

from streamd.errors import ModelError
from streamd.infer.adapters import ADAPTERS, Adapter, ModelInfo
from streamd.infer.preprocess import PreprocessSpec

log = structlog.get_logger()
DEFAULT_INPUT = (640, 640)
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
INPUT_DTYPES: dict[str, type[np.floating[Any]]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def create_session(path: str, providers: list[str], intra_op_threads: int = 0,
                   inter_op_threads: int = 1, spin: bool = False) -> ort.InferenceSession:
    if not Path(path).is_file():
        what = "is a directory, not an ONNX file" if Path(path).is_dir() else "does not exist"
        raise ModelError(f"model file {path} {what}; check the path (a pipeline's `model:`)")
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
        session = ort.InferenceSession(path, sess_options=options, providers=chosen)
    except Exception as exc:  # ORT raises its own exception types per failure kind
        if "INVALID_PROTOBUF" in str(exc) or not Path(path).stat().st_size:
            raise ModelError(f"model {path} is truncated or not an ONNX file ({Path(path).stat().st_size} bytes); "
                             f"copy or export it again") from exc
        if chosen == ["CPUExecutionProvider"]:
            raise ModelError(f"model {path} cannot be loaded by ONNX Runtime: {exc}") from exc
        # An accelerator that is installed but cannot start (driver, library, memory): run on the CPU.
        log.warning("providers_failed", model=path, tried=chosen, error=str(exc).splitlines()[0][:300],
                    using=["CPUExecutionProvider"])
        try:
            session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as cpu_exc:
            raise ModelError(f"model {path} cannot be loaded by ONNX Runtime: {cpu_exc}") from cpu_exc
    active = session.get_providers()
    dropped = [p for p in chosen if p not in active]
    if dropped:  # ORT falls back silently when a provider cannot take the graph
        log.warning("providers_fell_back", model=path, dropped=dropped, using=active)
    return session


def check_input_shape(path: str, name: str, shape: list[Any]) -> None:
    """streamd feeds NCHW images with 3 colour channels: [batch, 3, height, width], or [3, height, width] for
    models that take one image per run. A dynamic axis (a name instead of a number) accepts anything."""
    expected = "[batch, 3, height, width] (NCHW, 3 colour channels; or [3, height, width])"
    shown = "[" + ", ".join(str(d) if isinstance(d, int) else repr(d) if d else "?" for d in shape) + "]"
    if len(shape) not in (3, 4):
        raise ModelError(f"model {path}: image input {name} has shape {shown} (rank {len(shape)}); streamd "
                         f"expects {expected}; export the model with an image input of that layout")
    channels = shape[1] if len(shape) == 4 else shape[0]
    if not isinstance(channels, int) or channels == 3:
        return
    last = shape[-1]
    hint = (f"it looks channels-last (NHWC, {last} channels on the last axis): export it with NCHW input"
            if last == 3 else "streamd feeds colour (BGR/RGB) images: use a model trained on 3-channel input")
    raise ModelError(f"model {path}: image input {name} has shape {shown}, {channels} channels; streamd "
                     f"expects {expected}; {hint}")


def model_info(session: ort.InferenceSession, path: str) -> ModelInfo:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"model {path} has {len(inputs)} inputs; streamd expects one image input")
    if inputs[0].type not in INPUT_DTYPES:
        raise ModelError(f"model {path}: image input {inputs[0].name} is {inputs[0].type}; streamd feeds "
                         f"float32 or float16 tensors")
    check_input_shape(path, inputs[0].name, list(inputs[0].shape))
    outputs = session.get_outputs()
    return ModelInfo(
        path=path,
        input_name=inputs[0].name,
        input_shape=tuple(d if isinstance(d, int) else None for d in inputs[0].shape),
        output_shapes=[tuple(d if isinstance(d, int) else None for d in o.shape) for o in outputs],
        metadata=dict(session.get_modelmeta().custom_metadata_map),
        output_names=[o.name for o in outputs],
        input_type=inputs[0].type,
    )


def input_hw(info: ModelInfo, configured: tuple[int, int] | None) -> tuple[int, int]:
    """Model input [height, width]: static axes of the file, else config, else metadata imgsz, else 640."""
    shape = info.input_shape[-2:]
    if len(shape) == 2 and isinstance(shape[0], int) and isinstance(shape[1], int):
        if configured and tuple(configured) != (shape[0], shape[1]):
            raise ModelError(
                f"model {info.path} has a fixed input of {shape[0]}x{shape[1]}; "
                f"remove input_size {list(configured)} from the pipeline"
            )
        return shape[0], shape[1]
    if configured:
        return configured[0], configured[1]
    for key in ("imgsz", "streamd_input_size"):
        raw = info.metadata.get(key)
        if raw:
            try:
                parsed = ast.literal_eval(raw)
            except (ValueError, SyntaxError) as exc:
                raise ModelError(f"model {info.path}: metadata `{key}` = {raw!r} is unreadable; "
                                 f"set input_size in the pipeline") from exc
            return (parsed, parsed) if isinstance(parsed, int) else (int(parsed[0]), int(parsed[1]))
    return DEFAULT_INPUT


def adapter_candidates(info: ModelInfo, hw: tuple[int, int]) -> list[type[Adapter]]:
    """Adapters whose ``matches`` accepts the model (the last step of auto-detection)."""
    return [a for a in ADAPTERS.values() if a.matches(info, hw)]


def select_adapter(info: ModelInfo, requested: str, hw: tuple[int, int]) -> type[Adapter]:
    if requested != "auto":
        if requested not in ADAPTERS:
            raise ModelError(f"adapter {requested!r} is unknown; use one of {', '.join(ADAPTERS)} or auto")
        return ADAPTERS[requested]
    declared = info.metadata.get("streamd_adapter")
    if declared:
        if declared not in ADAPTERS:
            raise ModelError(f"model {info.path}: metadata streamd_adapter={declared!r} names no adapter of this "
                             f"streamd ({', '.join(ADAPTERS)}); set `adapter:` in the pipeline")
        return ADAPTERS[declared]
    if info.ultralytics:
        task = info.metadata.get("task", "detect")
        if task != "detect":
            raise ModelError(f"model {info.path} is an ultralytics {task!r} model; streamd reads detection "
                             f"models (task 'detect') only")
        if info.metadata.get("head") == "RTDETRDecoder":
            return ADAPTERS["rtdetr"]
        if info.metadata.get("end2end") == "True":
            return ADAPTERS["ultralytics_e2e"]
        return ADAPTERS["ultralytics"]
    found = adapter_candidates(info, hw)
    if len(found) == 1:
        return found[0]
    shapes = ", ".join(f"{n} {list(s)}" if n else str(list(s))
                       for n, s in zip(info.output_names or [""] * len(info.output_shapes), info.output_shapes))
    if not found:
        raise ModelError(
            f"model {info.path}: no adapter reads outputs {shapes} at input {hw[0]}x{hw[1]}; "
            f"set `adapter:` in the pipeline (--adapter on the command line) to one of {', '.join(ADAPTERS)} "
            f"(or check input_size)"
        )
    listed = "; ".join(f"{a.name} ({a.description})" for a in found)
    raise ModelError(
        f"model {info.path}: outputs {shapes} fit several adapters: {listed}; "
        f"set `adapter:` in the pipeline (--adapter on the command line) to the one that exported it"
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


def num_classes(info: ModelInfo, adapter: type[Adapter], labels_path: str | None = None,
                required: bool = True) -> int:
    """From the output layout where it tells, else from the metadata names, else from the labels file; else an
    error, or 0 when not ``required`` (inspection of a file that names no classes)."""
    counted = adapter.classes_in(info)
    if counted is not None:
        return counted
    named = info.metadata_names()
    if named:
        return named
    if labels_path:
        return len(class_names(info, labels_path, 0))
    if not required:
        return 0
    raise ModelError(f"model {info.path}: outputs {info.output_shapes} ({adapter.name}) do not say how many "
                     f"classes there are and the file has no `names` metadata; give a class-names file, one name "
                     f"per line (`labels:` in the pipeline, --labels on the command line)")


@dataclass
class LoadedModel:
    session: ort.InferenceSession
    info: ModelInfo
    adapter: Adapter
    names: list[str]
    input_hw: tuple[int, int]
    _binding: Any = field(default=None, repr=False)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def input_dtype(self) -> type[np.floating[Any]]:
        """float32, or float16 for FP16 models exported with half inputs."""
        return INPUT_DTYPES[self.info.input_type]

    @property
    def uses_io_binding(self) -> bool:
        """On a GPU provider outputs are bound to host memory once per run instead of copied per call."""
        return self.providers[0] in GPU_PROVIDERS

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run an NCHW batch of any size, whatever batch axis the model declares; every output gets a batch axis."""
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        if self.info.unbatched:  # [3, H, W] input: one image per run, variable-length outputs padded
            return _stack_padded([self._run_once(image) for image in batch])
        static = self.info.static_batch
        n = batch.shape[0]
        if static is None or static == n:
            return self._run_once(batch)
        if static == 1:
            parts = [self._run_once(batch[i : i + 1]) for i in range(n)]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        if n < static:  # pad a static batch, drop the padding's outputs
            padded = np.zeros((static, *batch.shape[1:]), batch.dtype)
            padded[:n] = batch
            return [o[:n] for o in self._run_once(padded)]
        chunks = [self.run(batch[i : i + static]) for i in range(0, n, static)]
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]

    def _run_once(self, tensor: np.ndarray) -> list[np.ndarray]:
        tensor = np.ascontiguousarray(tensor)
        if not self.uses_io_binding:
            return list(self.session.run(None, {self.info.input_name: tensor}))
        if self._binding is None:
            self._binding = self.session.io_binding()
        binding = self._binding
        binding.bind_cpu_input(self.info.input_name, tensor)  # copied to the device once, by ORT
        for out in self.session.get_outputs():
            binding.bind_output(out.name, "cpu")
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def warm_up(self, runs: int = 2, batch: int = 1) -> float:
        """Run zeros through the model so the first real frame does not pay for allocation and kernel
        selection; returns the last run's milliseconds."""
        h, w = self.input_hw
        shape = (3, h, w) if self.info.unbatched else (1, 3, h, w)
        zeros = np.zeros(shape, self.input_dtype)
        elapsed = 0.0
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            self.run(zeros if self.info.unbatched else np.repeat(zeros, batch, axis=0))
            elapsed = (time.perf_counter() - start) * 1000
        return elapsed


@dataclass(frozen=True)
class RunnerPlan:
    """How the inference stage drives ONNX Runtime: ``workers`` batches in flight at once (concurrent
    ``Session.run`` calls on one session), each with ``intra_op_threads`` threads."""

    intra_op_threads: int
    workers: int


def runner_plan(providers: list[str], intra_op_threads: int, cpu_count: int | None) -> RunnerPlan:
    """Thread settings per provider. On a GPU one batch runs at a time (the device queues work anyway; IO binding is
    per session). On the CPU with the default ``intra_op_threads: 0``: one thread per run and one run per core
    (at most 2 in flight): a model this small barely speeds up with more intra-op threads (measured: 2 threads
    0.9-1.0x of 1 on 2 cores) while parallel threads wait for each other whenever a decoder takes a core, so
    whole frames in parallel use the cores better and a busy core delays one frame, not every operator of
    every frame. An explicit ``intra_op_threads`` keeps the old single-run behaviour with that many threads."""
    if providers and providers[0] in GPU_PROVIDERS:
        return RunnerPlan(intra_op_threads, 1)
    if intra_op_threads > 0:
        return RunnerPlan(intra_op_threads, 1)
    cores = max(1, cpu_count or 1)
    workers = min(2, cores)
    return RunnerPlan(max(1, cores // workers), workers)


def image_ms(model: LoadedModel, batch: int, runs: int = 5) -> float:
    """Median milliseconds per image of ``model.run`` on zeros at this batch size (after one warm-up run)."""
    h, w = model.input_hw
    zeros = np.zeros((batch, 3, h, w), model.input_dtype)
    model.run(zeros)
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        model.run(zeros)
        times.append((time.perf_counter() - start) * 1000 / batch)
    return float(np.median(times))


def _stack_padded(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per-image outputs of different lengths -> one array per output with a batch axis; the padding is NaN
    (float) or -1 (integer) so no threshold keeps it."""
    stacked = []
    for k in range(len(parts[0])):
        arrays = [p[k] for p in parts]
        if arrays[0].ndim == 0:
            stacked.append(np.stack(arrays))
            continue
        length = max(a.shape[0] for a in arrays)
        fill = np.nan if np.issubdtype(arrays[0].dtype, np.floating) else -1
        out = np.full((len(arrays), length, *arrays[0].shape[1:]), fill, arrays[0].dtype)
        for i, a in enumerate(arrays):
            out[i, : a.shape[0]] = a
        stacked.append(out)
    return stacked


def load_model(path: str, adapter: str = "auto", input_size: tuple[int, int] | None = None,
               labels: str | None = None, providers: list[str] | None = None, intra_op_threads: int = 0,
               inter_op_threads: int = 1, spin: bool = False,
               preprocess: dict[str, Any] | None = None, require_classes: bool = True) -> LoadedModel:
    """Open ``path`` and configure everything the file tells; ``preprocess`` overrides single fields of the
    adapter's pre-processing defaults (letterbox, pad_position, pad_value, rgb, scale, mean, std).
    ``require_classes=False`` (inspection only) loads a model whose class count nothing tells, with no names."""
    session = create_session(path, providers or ["CPUExecutionProvider"], intra_op_threads, inter_op_threads, spin)
    info = model_info(session, path)
    hw = input_hw(info, input_size)
    adapter_class = select_adapter(info, adapter, hw)
    nc = num_classes(info, adapter_class, labels, required=require_classes)
    try:
        spec: PreprocessSpec = adapter_class.preprocess.with_overrides(preprocess)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {path}: preprocess overrides {preprocess}: {exc}") from exc
    return LoadedModel(session=session, info=info, adapter=adapter_class.for_model(info, hw, nc, spec),
                       names=class_names(info, labels, nc), input_hw=hw)
