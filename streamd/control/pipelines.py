"""A pipeline checked against its model: class names known, post-processing resolved, model key computed."""

from __future__ import annotations

import os
from dataclasses import dataclass

from streamd.config.models import LineConfig, PipelineConfig, StreamConfig, ZoneConfig
from streamd.errors import ModelError
from streamd.infer.classnames import class_index
from streamd.infer.model import load_model
from streamd.infer.postprocess import PostprocessParams
from streamd.ipc.sockets import model_key
from streamd.redact import redact


@dataclass(frozen=True)
class ResolvedPipeline:
    config: PipelineConfig
    class_names: list[str]
    postprocess: PostprocessParams
    model_key: str


def pipeline_model_key(pipeline: PipelineConfig) -> str:
    """Pipelines with the same model file, adapter, input size and pre-processing share one inference stage."""
    return model_key(f"{pipeline.model}|{pipeline.adapter}|{pipeline.input_size}|"
                     f"{pipeline.preprocess.model_dump_json(exclude_none=True)}")


def resolve_pipeline(name: str, pipeline: PipelineConfig) -> ResolvedPipeline:
    """Open the model once to learn its classes and check the pipeline's class names against them."""
    try:
        model = load_model(pipeline.model, pipeline.adapter, pipeline.input_size, pipeline.labels,
                           preprocess=pipeline.preprocess.model_dump(exclude_none=True) or None)
    except ModelError as exc:
        message = str(exc)
        raise ModelError(message if message.startswith(f"pipeline {name}") else f"pipeline {name}: {message}") from exc
    names = model.names
    index = class_index(names)
    areas: list[LineConfig | ZoneConfig] = [*pipeline.lines, *pipeline.zones]
    wanted = list(pipeline.classes or []) + [c for area in areas for c in (area.classes or [])]
    unknown = sorted({c for c in wanted if c not in index})
    if unknown:
        raise ModelError(
            f"pipeline {name}: class names {unknown} are not predicted by {pipeline.model}; "
            f"known: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
        )
    params = PostprocessParams(
        confidence=pipeline.confidence, iou=pipeline.iou, class_agnostic=pipeline.class_agnostic_nms,
        max_detections=pipeline.max_detections,
        class_ids=frozenset(index[c] for c in pipeline.classes) if pipeline.classes else None,
    )
    return ResolvedPipeline(config=pipeline, class_names=names, postprocess=params,
                            model_key=pipeline_model_key(pipeline))


def source_key(stream: StreamConfig) -> str:
    """Identity of what a stream reads: a checkpoint only applies to the same, unchanged file."""
    if stream.kind == "file":
        try:
            st = os.stat(stream.url)
            return f"{stream.url}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            return stream.url
    return redact(stream.url)
