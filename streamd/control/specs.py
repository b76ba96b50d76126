"""Stage specs derived from what the daemon runs now: the factories the supervisor (re)spawns stages through."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streamd.config.models import DaemonConfig
from streamd.control.pipelines import ResolvedPipeline
from streamd.control.streams import StreamRegistry
from streamd.ipc.sockets import Endpoints
from streamd.evidence.paths import evidence_dir
from streamd.infer.preprocess import roi_pixels
from streamd.runtime.params import AnalyticsParams, DecoderParams, InferenceParams, SinksParams, StreamEvidence
from streamd.runtime.params import HealthParams, HealthStream
from streamd.runtime.stage import StageSpec


@dataclass
class RunningState:
    """The one source of truth of what each stage runs. Changed only by the watch loop's thread."""

    config: DaemonConfig
    streams: StreamRegistry
    pipelines: dict[str, ResolvedPipeline] = field(default_factory=dict)  # usable pipelines
    pipeline_errors: dict[str, str] = field(default_factory=dict)  # pipelines whose model failed: why
    staged: dict[str, ResolvedPipeline] = field(default_factory=dict)  # a reload's pipelines while models load
    files: tuple[Path, ...] = ()  # the config file and the pipeline files it uses: what the daemon watches
    owned: dict[str, int] | None = None  # fleet: the streams this node holds a lease on, with its epoch

    def pipeline(self, name: str) -> ResolvedPipeline | None:
        return self.staged.get(name) or self.pipelines.get(name)

    def model_keys(self) -> dict[str, list[str]]:
        """model key -> the pipelines of running streams that use it."""
        keys: dict[str, list[str]] = {}
        for entry in self.streams.running():
            pipeline = self.pipelines.get(entry.config.pipeline)
            if pipeline is not None and entry.config.pipeline not in keys.get(pipeline.model_key, []):
                keys.setdefault(pipeline.model_key, []).append(entry.config.pipeline)
        return keys


class StageSpecs:
    def __init__(self, state: RunningState, endpoints: Endpoints, run_id: str, state_dir: str):
        self.state = state
        self.endpoints = endpoints
        self.run_id = run_id
        self.state_dir = state_dir

    def _spec(self, kind: str, key: str, params: object) -> StageSpec:
        return StageSpec(kind=kind, key=key, endpoints=self.endpoints, params=params,  # type: ignore[arg-type]
                         log_level=self.state.config.log_level)

    def sinks(self) -> StageSpec:
        config = self.state.config
        evidence = {s.name: StreamEvidence(pipeline=config.pipelines[s.pipeline], clips=s.clips)
                    for s in config.active_streams if s.pipeline in config.pipelines
                    and (config.pipelines[s.pipeline].evidence.snapshots or s.clips is not None)}
        return self._spec("sinks", "", SinksParams(sinks=list(config.sinks), state_dir=self.state_dir,
                                                   evidence_dir=str(evidence_dir(self.state_dir)), evidence=evidence))

    def analytics(self) -> StageSpec:
        state = self.state
        pipelines = dict(sorted({**state.pipelines, **state.staged}.items()))
        return self._spec("analytics", "", AnalyticsParams(
            pipelines={n: p.config for n, p in pipelines.items()},
            class_names={n: p.class_names for n, p in pipelines.items()},
            store=state.config.counts.path,
            sources={e.config.name: e.source for e in sorted(state.streams, key=lambda e: e.config.name)},
            run_id=self.run_id, change_feed=state.config.counts.url is not None,
            epochs={e.config.name: state.owned[e.config.name] for e in sorted(state.streams, key=lambda e: e.config.name)
                    if state.owned is not None and e.config.name in state.owned}))

    def inference(self, key: str) -> StageSpec:
        pipelines = {n: p for n, p in sorted({**self.state.pipelines, **self.state.staged}.items())
                     if p.model_key == key}
        if not pipelines:
            raise KeyError(f"no pipeline uses model {key}")
        cfg = next(iter(pipelines.values())).config
        return self._spec("inference", key, InferenceParams(
            model_key=key, model=cfg.model, adapter=cfg.adapter, input_size=cfg.input_size, labels=cfg.labels,
            preprocess=cfg.preprocess.model_dump(exclude_none=True) or None, inference=self.state.config.inference,
            postprocess={n: p.postprocess for n, p in pipelines.items()},
            rois={n: roi_pixels(p.config.roi) for n, p in pipelines.items() if p.config.roi is not None}))

    def decoder(self, stream: str) -> StageSpec:
        entry = self.state.streams.get(stream)
        if entry is None:
            raise KeyError(f"stream {stream} is not running")
        pipeline = self.state.pipelines[entry.config.pipeline]
        return self._spec("decoder", stream, DecoderParams(
            stream=entry.config, ring=entry.ring, inference_endpoint=self.endpoints.inference(pipeline.model_key),
            start_frame=entry.start_frame,
            evidence_dir=str(evidence_dir(self.state_dir)) if entry.config.clips is not None else ""))

    def health(self) -> StageSpec:
        streams = {e.config.name: HealthStream(ring=e.ring, health=e.config.health)
                   for e in sorted(self.state.streams.running(), key=lambda e: e.config.name) if e.config.health.enabled}
        return self._spec("health", "", HealthParams(streams=streams, store=self.state.config.counts.path))
