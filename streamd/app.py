"""Composition root: builds every stage from the config, runs the supervisor, stops in reverse order."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from streamd.config.loader import LoadedConfig
from streamd.config.models import DaemonConfig, PipelineConfig, StreamConfig
from streamd.analytics.store import CountStore
from streamd.errors import ModelError
from streamd.infer.classnames import class_index
from streamd.infer.model import load_model
from streamd.infer.postprocess import PostprocessParams
from streamd.ipc.ring import FrameRing, remove_orphaned_rings, ring_name, unlink_ring
from streamd.ipc.sockets import Endpoints, model_key
from streamd.redact import redact
from streamd.runtime.stage import StageSpec
from streamd.runtime.supervisor import Supervisor

log = structlog.get_logger()


@dataclass(frozen=True)
class ResolvedPipeline:
    config: PipelineConfig
    class_names: list[str]
    postprocess: PostprocessParams
    model_key: str


def resolve_pipeline(name: str, pipeline: PipelineConfig) -> ResolvedPipeline:
    """Open the model once to learn its classes and check the pipeline's class names against them."""
    model = load_model(pipeline.model, pipeline.adapter, pipeline.input_size, pipeline.labels)
    names = model.names
    index = class_index(names)
    wanted = list(pipeline.classes or []) + [c for area in [*pipeline.lines, *pipeline.zones] for c in (area.classes or [])]
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
    key = model_key(f"{pipeline.model}|{pipeline.adapter}|{pipeline.input_size}")
    return ResolvedPipeline(config=pipeline, class_names=names, postprocess=params, model_key=key)


def source_key(stream: StreamConfig) -> str:
    """Identity of what a stream reads: a checkpoint only applies to the same, unchanged file."""
    if stream.kind == "file":
        try:
            st = os.stat(stream.url)
            return f"{stream.url}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            return stream.url
    return redact(stream.url)


class Daemon:
    def __init__(self, loaded: LoadedConfig, runtime_root: Path | None = None,
                 on_tick: Callable[[dict[str, dict[str, Any]]], None] | None = None):
        self.loaded = loaded
        self.config: DaemonConfig = loaded.config
        self.runtime_dir = (runtime_root or Path(tempfile.gettempdir())) / f"streamd-{os.getpid()}"
        self.endpoints = Endpoints(self.runtime_dir)
        self.rings: dict[str, str] = {}  # stream -> ring name
        self.failed_streams: dict[str, str] = {}  # stream -> reason
        self._stop_requested = False
        self._ctx: zmq.Context | None = None
        self.supervisor: Supervisor | None = None
        self.on_tick = on_tick  # called with the merged per-stream counters a few times a second
        self.final_counters: dict[str, dict[str, Any]] = {}
        self.resume: dict[str, int] = {}  # finite stream -> first frame to process (after a crash)

    def request_stop(self, *_: Any) -> None:
        self._stop_requested = True

    # --- start ---------------------------------------------------------------------------------------

    def _resolve_pipelines(self) -> dict[str, ResolvedPipeline]:
        resolved = {}
        used = {s.pipeline for s in self.config.active_streams}
        for name in sorted(used):
            try:
                resolved[name] = resolve_pipeline(name, self.config.pipelines[name])
            except ModelError as exc:
                for stream in self.config.active_streams:
                    if stream.pipeline == name:
                        self.failed_streams[stream.name] = str(exc)
                log.error("pipeline_unusable", pipeline=name, error=str(exc),
                          streams=[s.name for s in self.config.active_streams if s.pipeline == name])
        return resolved

    def _start(self) -> None:
        orphans = remove_orphaned_rings()
        if orphans:
            log.warning("orphaned_rings_removed", rings=orphans)
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        pipelines = self._resolve_pipelines()
        self._ctx = zmq.Context()
        sup = self.supervisor = Supervisor(self.config.supervisor, self._ctx, self.endpoints)
        level = self.config.log_level
        sup.add(StageSpec("sinks", "streamd.sinks.stage:SinksStage", self.endpoints, level,
                          {"sinks": list(self.config.sinks)}), critical=True)
        sources = {s.name: source_key(s) for s in self.config.active_streams}
        store = CountStore(self.config.counts.path)
        self.resume = {s.name: store.resume_frame(s.name, sources[s.name]) for s in self.config.active_streams
                       if s.is_finite}
        store.close()
        resumed = {name: frame for name, frame in self.resume.items() if frame}
        if resumed:
            log.warning("resuming_files", frames=resumed, store=self.config.counts.path,
                        reason="an earlier run stopped part-way; counts so far are in the store")
        sup.add(StageSpec("analytics", "streamd.analytics.stage:AnalyticsStage", self.endpoints, level,
                          {"pipelines": {n: p.config for n, p in pipelines.items()},
                           "class_names": {n: p.class_names for n, p in pipelines.items()},
                           "store": self.config.counts.path, "sources": sources,
                           "run_id": f"{int(time.time() * 1000):x}"}), critical=True)
        by_model: dict[str, list[str]] = {}
        for name, pipe in pipelines.items():
            by_model.setdefault(pipe.model_key, []).append(name)
        for key, names in by_model.items():
            cfg = pipelines[names[0]].config
            sup.add(StageSpec(f"infer-{key}", "streamd.infer.stage:InferenceStage", self.endpoints, level, {
                "model": cfg.model, "adapter": cfg.adapter, "input_size": cfg.input_size, "labels": cfg.labels,
                "inference": self.config.inference, "model_key": key,
                "postprocess": {n: pipelines[n].postprocess for n in names},
            }), critical=True)
        core = list(sup.stages)
        slow = sup.wait_ready(core, timeout_s=120.0)
        if slow:
            log.warning("stages_not_ready", stages=slow, action="starting streams anyway")
        for stream in self.config.active_streams:
            if stream.name in self.failed_streams:
                continue
            self._start_stream(stream, pipelines[stream.pipeline])

    def _start_stream(self, stream: StreamConfig, pipeline: ResolvedPipeline) -> None:
        assert self.supervisor is not None
        name = ring_name(os.getpid(), stream.name)
        unlink_ring(name)
        FrameRing.create(name, stream.ring_slots, stream.max_width, stream.max_height).close()
        self.rings[stream.name] = name
        self.supervisor.add(
            StageSpec(f"decode-{stream.name}", "streamd.decode.stage:DecoderStage", self.endpoints,
                      self.config.log_level, {"stream": stream, "ring": name,
                                              "inference_endpoint": self.endpoints.inference(pipeline.model_key),
                                              "start_frame": self.resume.get(stream.name, 0)}),
            critical=False, startup_timeout_s=60.0,
        )
        log.info("stream_added", stream=stream.name, url=redact(stream.url), pipeline=stream.pipeline,
                 kind=stream.kind, realtime=stream.is_realtime)

    # --- run -----------------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        code = 1
        try:
            self._start()
            code = self._watch()
        finally:
            if self.supervisor is not None:
                self.supervisor.stop_all()  # ordered drain; stages send a last heartbeat as they exit
                self.final_counters = self.supervisor.stream_counters()
                self._log_summary(self.final_counters)
            self._cleanup()
        if self.failed_streams and code == 0:
            code = 1
        return code

    def _watch(self) -> int:
        assert self.supervisor is not None
        sup = self.supervisor
        if not self.rings:
            log.error("no_streams_running", failed=self.failed_streams)
            return 1
        finite = {s.name for s in self.config.active_streams if s.is_finite and s.name in self.rings}
        live = {s.name for s in self.config.active_streams if not s.is_finite and s.name in self.rings}
        done: set[str] = set()
        stats_interval = self.config.supervisor.stats_interval_s
        next_stats = time.monotonic() + stats_interval
        previous: dict[str, int] = {}
        previous_t = time.monotonic()
        while not self._stop_requested:
            sup.poll(0.2)
            failed_stage = sup.critical_failure
            if failed_stage:
                log.error("daemon_failed", stage=failed_stage, reason="a stage every stream needs is in a crash loop")
                return 1
            counters = sup.stream_counters()
            if self.on_tick is not None:
                self.on_tick(counters)
            for stream in list(finite - done):
                handle = sup.stages.get(f"decode-{stream}")
                c = counters.get(stream, {})
                if handle is not None and handle.state == "failed":
                    self.failed_streams[stream] = c.get("last_error") or "decoder failed"
                    done.add(stream)
                elif c.get("state") == "finished" and c.get("drained"):
                    sup.stop_stage(f"decode-{stream}")
                    done.add(stream)
            now = time.monotonic()
            if now >= next_stats:
                previous, previous_t = self._log_stats(counters, previous, previous_t, now), now
                next_stats = now + stats_interval
            if finite and not live and done >= finite:
                log.info("all_streams_finished", streams=sorted(finite))
                break
            if not finite and live and all(
                sup.stages[f"decode-{s}"].state == "failed" for s in live
            ):
                log.error("all_streams_failed", failed=self.failed_streams)
                return 1
        return 0

    def _log_stats(self, counters: dict[str, dict[str, Any]], previous: dict[str, int], previous_t: float,
                   now: float) -> dict[str, int]:
        assert self.supervisor is not None
        seen = {}
        for stream, c in sorted(counters.items()):
            frames = int(c.get("frames_analysed", 0))
            seen[stream] = frames
            fps = (frames - previous.get(stream, 0)) / max(now - previous_t, 1e-6)
            log.info("stream_stats", stream=stream, state=c.get("state"), fps=round(fps, 1), frames=frames,
                     dropped=int(c.get("dropped_stale", 0)) + int(c.get("dropped_overwritten", 0)),
                     reconnects=c.get("reconnects", 0), latency_p50_ms=c.get("latency_p50_ms"),
                     latency_p99_ms=c.get("latency_p99_ms"), stage_p99_ms=c.get("stage_p99_ms"),
                     crossings=c.get("crossings", 0), last_error=c.get("last_error"))
        for name, handle in self.supervisor.stages.items():
            if name.startswith("infer-") and handle.heartbeat is not None:
                hb = handle.heartbeat
                log.info("inference_stats", stage=name, batches=hb.batches,
                         mean_batch_size=round(hb.mean_batch_size, 2), infer_ms_p50=round(hb.infer_ms_p50, 2))
        return seen

    def _log_summary(self, counters: dict[str, dict[str, Any]]) -> None:
        for stream in sorted({s.name for s in self.config.active_streams}):
            c = counters.get(stream, {})
            log.info("run_summary", stream=stream, state=c.get("state", "failed" if stream in self.failed_streams else None),
                     frames_decoded=c.get("frames_decoded", 0), frames_analysed=c.get("frames_analysed", 0),
                     dropped_stale=c.get("dropped_stale", 0), dropped_overwritten=c.get("dropped_overwritten", 0),
                     crossings=c.get("crossings", 0), events_written=c.get("events_written", 0),
                     latency_p50_ms=c.get("latency_p50_ms"), latency_p99_ms=c.get("latency_p99_ms"),
                     stage_p99_ms=c.get("stage_p99_ms"), error=self.failed_streams.get(stream))

    # --- stop ----------------------------------------------------------------------------------------

    def _cleanup(self) -> None:
        for name in self.rings.values():
            unlink_ring(name)
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        log.info("daemon_stopped")
