"""Typed parameters of each stage kind: what a stage process runs, derived from the current config.

The supervisor builds these from the running config every time it (re)spawns a stage, so a stage restarted
after any number of reloads runs exactly what a fresh start would. Analytics and inference can also take new
parameters while running (a ``Reconfigure`` message with the JSON below); each stage reports the hash of what
it runs in its heartbeat and the supervisor resends until the hashes agree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from pydantic import TypeAdapter

from streamd.config.models import ClipConfig, HealthConfig, InferenceConfig, PipelineConfig, SinkConfig, StreamConfig
from streamd.infer.postprocess import PostprocessParams


@dataclass(frozen=True)
class DecoderParams:
    stream: StreamConfig
    ring: str  # shared-memory ring the decoder writes into
    inference_endpoint: str  # where FrameReady messages go
    start_frame: int = 0  # finite sources: first frame to process (resume after a crash of the whole daemon)
    evidence_dir: str = ""  # clips: where the decoder keeps its rolling segments (streamd/evidence/)


@dataclass(frozen=True)
class InferenceParams:
    model_key: str
    model: str
    adapter: str
    input_size: tuple[int, int] | None
    labels: str | None
    preprocess: dict[str, Any] | None  # PreprocessOverrides that are set
    inference: InferenceConfig
    postprocess: dict[str, PostprocessParams] = field(default_factory=dict)  # pipeline name -> thresholds, classes
    rois: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # pipeline name -> x1, y1, x2, y2


@dataclass(frozen=True)
class AnalyticsParams:
    pipelines: dict[str, PipelineConfig]
    class_names: dict[str, list[str]]  # pipeline name -> the model's class names
    store: str  # count store path
    sources: dict[str, str]  # stream -> source key (a checkpoint applies to the same, unchanged source only)
    run_id: str  # fixed for one daemon run: event ids of replayed frames stay the same across restarts
    epochs: dict[str, int] = field(default_factory=dict)  # fleet: stream -> lease epoch its records carry
    change_feed: bool = False  # counts.url set: the store keeps a change feed the replicator ships to PostgreSQL


@dataclass(frozen=True)
class StreamEvidence:
    """What the evidence writer needs of one stream: its pipeline (evidence settings, lines, zones) and clips."""

    pipeline: PipelineConfig
    clips: ClipConfig | None = None


@dataclass(frozen=True)
class SinksParams:
    sinks: list[SinkConfig]
    state_dir: str  # outboxes live here unless a sink names its own file
    evidence_dir: str = ""  # snapshots, clips and their index (streamd/evidence/)
    evidence: dict[str, StreamEvidence] = field(default_factory=dict)  # stream -> its evidence settings


@dataclass(frozen=True)
class HealthStream:
    ring: str  # the stream's shared-memory ring (the health stage reads its newest frame)
    health: HealthConfig


@dataclass(frozen=True)
class HealthParams:
    streams: dict[str, HealthStream]  # stream -> its ring and health config (streams with health enabled)
    store: str  # count store path: unhealthy intervals are recorded beside the counts


StageParams = Union[DecoderParams, InferenceParams, AnalyticsParams, SinksParams, HealthParams]
LiveParams = Union[InferenceParams, AnalyticsParams, HealthParams]  # the kinds that take a Reconfigure while running
P = TypeVar("P", DecoderParams, InferenceParams, AnalyticsParams, SinksParams, HealthParams)

_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(kind: type) -> TypeAdapter[Any]:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = TypeAdapter(kind)
    return _ADAPTERS[kind]


def params_hash(params: StageParams) -> str:
    """Short digest of what a stage runs; equal on both sides of a JSON round trip (secrets stay masked)."""
    data = _adapter(type(params)).dump_python(params, mode="json")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def params_to_json(params: LiveParams) -> bytes:
    return _adapter(type(params)).dump_json(params)


def params_from_json(kind: type[P], raw: bytes) -> P:
    value: P = _adapter(kind).validate_json(raw)
    return value


def expect(params: object, kind: type[P]) -> P:
    """The stage's parameters as the type its class needs (a wrong kind is a programming error)."""
    if not isinstance(params, kind):
        raise TypeError(f"stage expects {kind.__name__}, got {type(params).__name__}")
    return params
