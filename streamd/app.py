"""Composition root: builds every stage from the config, runs the supervisor, stops in reverse order."""

from __future__ import annotations

import dataclasses
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

from streamd.config.diff import ConfigDiff, diff_configs
from streamd.config.loader import LoadedConfig, load_config
from streamd.config.models import DaemonConfig, LineConfig, PipelineConfig, StreamConfig, ZoneConfig
from streamd.analytics.store import CountStore
from streamd.api import snapshot as snapshots
from streamd.errors import ConfigError, ModelError, RingError
from streamd.infer.classnames import class_index
from streamd.infer.model import load_model
from streamd.infer.postprocess import PostprocessParams
from streamd.ipc.ring import FrameRing, remove_orphaned_rings, ring_name, unlink_ring
from streamd.ipc import sockets
from streamd.ipc.messages import PipelineSet, StreamRemoved, encoder
from streamd.ipc.sockets import Endpoints, model_key
from streamd.redact import redact
from streamd.runtime.stage import StageSpec
from streamd.runtime.sd_notify import SystemdNotifier
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
    model = load_model(pipeline.model, pipeline.adapter, pipeline.input_size, pipeline.labels,
                       preprocess=pipeline.preprocess.model_dump(exclude_none=True) or None)
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
    key = model_key(f"{pipeline.model}|{pipeline.adapter}|{pipeline.input_size}|"
                    f"{pipeline.preprocess.model_dump_json(exclude_none=True)}")
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
        self.pipelines: dict[str, ResolvedPipeline] = {}
        self.generation: dict[str, int] = {}  # stream -> ring generation (a restart by reload takes the next)
        self.finished: set[str] = set()  # finite streams processed to their end (or failed) in this run
        self._reload_requested: str | None = None  # why: "file", "signal", "api"
        self.reload_status: dict[str, Any] = {"ok": True, "reloads": 0, "failures": 0}
        self._control_out: dict[str, zmq.Socket] = {}  # endpoint -> PUSH, for control messages to stages
        self._config_stamp = self._stamp()
        self.snapshot: dict[str, Any] = {"t": time.time(), "ready": False, "streams": {}}
        self._fps = snapshots.FrameRate()
        self._ring_views: dict[str, FrameRing] = {}  # stream -> its ring attached read-only, for queue depth
        self.api: Any = None  # ApiServer once started
        self.systemd = SystemdNotifier()

    def request_stop(self, *_: Any) -> None:
        self._stop_requested = True

    def request_reload(self, reason: str = "signal") -> None:
        """Thread- and signal-safe: the watch loop applies the reload on its next tick."""
        self._reload_requested = reason

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

    def _inference_spec(self, key: str, pipeline_names: list[str]) -> StageSpec:
        cfg = self.pipelines[pipeline_names[0]].config
        return StageSpec(f"infer-{key}", "streamd.infer.stage:InferenceStage", self.endpoints, self.config.log_level, {
            "model": cfg.model, "adapter": cfg.adapter, "input_size": cfg.input_size, "labels": cfg.labels,
            "preprocess": cfg.preprocess.model_dump(exclude_none=True) or None,
            "inference": self.config.inference, "model_key": key,
            "postprocess": {n: self.pipelines[n].postprocess for n in pipeline_names},
        })

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
                          {"sinks": list(self.config.sinks),
                           # outboxes live beside the count store unless a sink names its own file
                           "state_dir": os.environ.get("STATE_DIRECTORY") or str(Path(self.config.counts.path).parent)}),
                critical=True)
        sources = {s.name: source_key(s) for s in self.config.active_streams}
        store = CountStore(self.config.counts.path)
        self.resume = {s.name: store.resume_frame(s.name, sources[s.name]) for s in self.config.active_streams
                       if s.is_finite}
        store.close()
        resumed = {name: frame for name, frame in self.resume.items() if frame}
        if resumed:
            log.warning("resuming_files", frames=resumed, store=self.config.counts.path,
                        reason="an earlier run stopped part-way; counts so far are in the store")
        self.pipelines = pipelines
        sup.add(StageSpec("analytics", "streamd.analytics.stage:AnalyticsStage", self.endpoints, level,
                          {"pipelines": {n: p.config for n, p in pipelines.items()},
                           "class_names": {n: p.class_names for n, p in pipelines.items()},
                           "store": self.config.counts.path, "sources": sources,
                           "run_id": f"{int(time.time() * 1000):x}"}), critical=True)
        by_model: dict[str, list[str]] = {}
        for name, pipe in pipelines.items():
            by_model.setdefault(pipe.model_key, []).append(name)
        for key, names in by_model.items():
            sup.add(self._inference_spec(key, names), critical=True)
        core = list(sup.stages)
        slow = sup.wait_ready(core, timeout_s=120.0)
        if slow:
            log.warning("stages_not_ready", stages=slow, action="starting streams anyway")
        for stream in self.config.active_streams:
            if stream.name in self.failed_streams:
                continue
            self._start_stream(stream, pipelines[stream.pipeline])
        self._publish_snapshot({}, time.monotonic())
        self._start_api()

    def _start_api(self) -> None:
        api = self.config.api
        if not api.enabled:
            return
        from streamd.api.preview import PreviewHub  # the API's imports (starlette, uvicorn) only when it runs
        from streamd.api.server import ApiServer, build_app

        assert self._ctx is not None
        hub = PreviewHub(self._ctx, self.endpoints.preview, self._pipeline_of, lambda: self.snapshot)
        server = ApiServer(build_app(self, hub, api.token), api)
        if server.start():
            self.api = server
            log.info("api_listening", url=f"http://{api.host}:{server.port}/", preview=f"http://{api.host}:{server.port}/")
        else:
            log.error("api_unavailable", host=api.host, port=api.port,
                      reason="could not bind (port in use?); the pipeline runs on without the HTTP API")

    def _pipeline_of(self, stream: str) -> PipelineConfig | None:
        for s in self.config.active_streams:
            if s.name == stream and s.pipeline in self.pipelines:
                return self.pipelines[s.pipeline].config
        return None

    def _start_stream(self, stream: StreamConfig, pipeline: ResolvedPipeline) -> None:
        assert self.supervisor is not None
        generation = self.generation[stream.name] = self.generation.get(stream.name, -1) + 1
        name = ring_name(os.getpid(), stream.name, generation)
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

    def _stop_stream(self, stream: StreamConfig) -> None:
        """Stop one stream's decoder, tell the shared stages to forget its ring, and free its shared memory."""
        assert self.supervisor is not None
        self.supervisor.stop_stage(f"decode-{stream.name}", remove=True)
        ring = self.rings.pop(stream.name, None)
        view = self._ring_views.pop(stream.name, None)
        if view is not None:
            view.close()
        pipeline = self.pipelines.get(stream.pipeline)
        if ring is not None and pipeline is not None:
            self._control(self.endpoints.inference(pipeline.model_key),
                          encoder.encode(StreamRemoved(stream=stream.name, ring=ring)))
        if ring is not None:
            unlink_ring(ring)  # stages still mapping it keep their mapping until they close it
        self.failed_streams.pop(stream.name, None)
        self.finished.discard(stream.name)
        log.info("stream_removed", stream=stream.name)

    def _control(self, endpoint: str, payload: bytes) -> None:
        assert self._ctx is not None
        sock = self._control_out.get(endpoint)
        if sock is None:
            sock = self._control_out[endpoint] = sockets.push(self._ctx, endpoint, hwm=1000)
        try:
            sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            log.error("control_message_dropped", endpoint=endpoint, reason="stage not receiving")

    # --- reload --------------------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.loaded.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _config_file_changed(self) -> bool:
        stamp = self._stamp()
        if stamp is None or stamp == self._config_stamp:
            return False
        self._config_stamp = stamp
        return True

    def reload(self, reason: str) -> dict[str, Any]:
        """Validate the config file again and apply the difference; an invalid file leaves everything running."""
        assert self.supervisor is not None
        self._config_stamp = self._stamp()
        status: dict[str, Any] = {"reason": reason, "at": time.time()}
        try:
            loaded = load_config(self.loaded.path)
            change = diff_configs(self.config, loaded.config)
            resolved = {name: resolve_pipeline(name, loaded.config.pipelines[name])
                        for name in change.pipelines_changed}
        except (ConfigError, ModelError) as exc:
            self.reload_status.update(ok=False, error=str(exc), failures=self.reload_status["failures"] + 1, **status)
            log.error("reload_rejected", reason=reason, error=str(exc), action="still running the previous config")
            return self.reload_status
        if change.empty:
            self.reload_status.update(ok=True, error=None, changes={}, **status)
            log.info("reload_no_change", reason=reason)
            return self.reload_status
        self.systemd.reloading()
        self._apply(loaded, change, resolved)
        self.systemd.ready(status=f"reloaded: {change.summary()}")
        self.reload_status.update(ok=True, error=None, changes=change.summary(),
                                  reloads=self.reload_status["reloads"] + 1, **status)
        log.info("reload_applied", reason=reason, **change.summary())
        if change.needs_restart:
            log.warning("reload_needs_restart", sections=change.needs_restart,
                        action="these settings keep their running values until streamd restarts")
        return self.reload_status

    def _apply(self, loaded: LoadedConfig, change: ConfigDiff, resolved: dict[str, ResolvedPipeline]) -> None:
        assert self.supervisor is not None
        old_streams = {s.name: s for s in self.config.active_streams}
        # sections a reload cannot change keep their running values
        running = loaded.config.model_copy(update={k: getattr(self.config, k) for k in change.needs_restart})
        for name in change.removed + change.restarted:
            self._stop_stream(old_streams[name])
        self.loaded, self.config = LoadedConfig(running, loaded.path), running
        for name, pipeline in resolved.items():
            self.pipelines[name] = pipeline
            if f"infer-{pipeline.model_key}" not in self.supervisor.stages:
                users = [n for n, p in self.pipelines.items() if p.model_key == pipeline.model_key]
                self.supervisor.add(self._inference_spec(pipeline.model_key, users), critical=True)
                self.supervisor.wait_ready([f"infer-{pipeline.model_key}"], timeout_s=120.0)
            message = encoder.encode(PipelineSet(
                name=name, config=pipeline.config.model_dump_json().encode(), class_names=pipeline.class_names,
                postprocess=dataclasses.asdict(pipeline.postprocess)))
            self._control(self.endpoints.inference(pipeline.model_key), message)
            self._control(self.endpoints.analytics, message)
        self._stop_unused_inference()
        new_streams = {s.name: s for s in running.active_streams}
        for name in change.added + change.restarted:
            stream = new_streams[name]
            if stream.is_finite:
                self.resume[name] = 0  # a stream (re)started by a reload runs its file from the start
            self._start_stream(stream, self.pipelines[stream.pipeline])

    def _stop_unused_inference(self) -> None:
        assert self.supervisor is not None
        used = {self.pipelines[s.pipeline].model_key for s in self.config.active_streams if s.pipeline in self.pipelines}
        for name in [n for n in self.supervisor.stages if n.startswith("infer-") and n[len("infer-"):] not in used]:
            self.supervisor.stop_stage(name, remove=True)
            log.info("inference_stage_removed", stage=name, reason="no stream uses its model any more")

    # --- run -----------------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload("signal"))
        code = 1
        try:
            self._start()
            self.systemd.ready(status=f"{len(self.rings)} streams running")
            code = self._watch()
        finally:
            self.systemd.stopping()
            if self.api is not None:
                self.api.stop()
            for view in self._ring_views.values():
                view.close()
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
        stats_interval = self.config.supervisor.stats_interval_s
        next_stats = time.monotonic() + stats_interval
        next_file_check = time.monotonic() + 1.0
        watchdog_every = self.systemd.watchdog_interval()
        next_watchdog = time.monotonic()
        previous: dict[str, int] = {}
        previous_t = time.monotonic()
        while not self._stop_requested:
            sup.poll(0.2)
            failed_stage = sup.critical_failure
            if failed_stage:
                log.error("daemon_failed", stage=failed_stage, reason="a stage every stream needs is in a crash loop")
                return 1
            now = time.monotonic()
            if self.config.watch_config and now >= next_file_check:
                next_file_check = now + 1.0
                if self._config_file_changed():
                    self.request_reload("file")
            if self._reload_requested:
                reason, self._reload_requested = self._reload_requested, None
                self.reload(reason)
            counters = self.stream_counters()
            if self.on_tick is not None:
                self.on_tick(counters)
            self._publish_snapshot(counters, now)
            if watchdog_every is not None and now >= next_watchdog:
                self.systemd.watchdog()
                next_watchdog = now + watchdog_every
            running = [s for s in self.config.active_streams if s.name in self.rings]
            finite = {s.name for s in running if s.is_finite}
            live = {s.name for s in running if not s.is_finite}
            for stream in sorted(finite - self.finished):
                handle = sup.stages.get(f"decode-{stream}")
                c = counters.get(stream, {})
                if handle is not None and handle.state == "failed":
                    self.failed_streams[stream] = c.get("last_error") or "decoder failed"
                    self.finished.add(stream)
                elif c.get("state") == "finished" and c.get("drained"):
                    sup.stop_stage(f"decode-{stream}")
                    self.finished.add(stream)
            if now >= next_stats:
                previous, previous_t = self._log_stats(counters, previous, previous_t, now), now
                next_stats = now + stats_interval
            if finite and not live and self.finished >= finite:
                log.info("all_streams_finished", streams=sorted(finite))
                break
            if not finite and live and all(sup.stages[f"decode-{s}"].state == "failed" for s in live):
                log.error("all_streams_failed", failed=self.failed_streams)
                return 1
        return 0

    def _publish_snapshot(self, counters: dict[str, dict[str, Any]], now: float) -> None:
        assert self.supervisor is not None
        sup = self.supervisor
        fps = {name: self._fps.update(name, int(c.get("frames_analysed", 0)), now) for name, c in counters.items()}
        self._fps.forget(set(counters))
        stages = {name: {"state": h.state, "pid": h.process.pid if h.process is not None else None,
                         "restarts": h.restarts, "critical": h.critical} for name, h in sup.stages.items()}
        core_ready = all(h.heartbeat is not None and h.state == "running" for h in sup.stages.values() if h.critical)
        heartbeats = {name: h.heartbeat for name, h in sup.stages.items() if h.heartbeat is not None}
        self.snapshot = snapshots.build(self.config, counters, fps, dict(self.rings), self._queue_depths(), stages,
                                        heartbeats, dict(self.failed_streams), self.reload_status, core_ready)

    def _queue_depths(self) -> dict[str, int]:
        depths = {}
        for stream, name in self.rings.items():
            view = self._ring_views.get(stream)
            if view is None or view.name != name:
                if view is not None:
                    view.close()
                    del self._ring_views[stream]
                try:
                    view = self._ring_views[stream] = FrameRing.attach(name)
                except RingError:
                    continue
            depths[stream] = max(0, view.write_seq - view.released_seq)
        return depths

    def stream_counters(self) -> dict[str, dict[str, Any]]:
        """Merged per-stream counters of the streams in the running config (removed ones drop out)."""
        assert self.supervisor is not None
        active = {s.name for s in self.config.active_streams}
        return {k: v for k, v in self.supervisor.stream_counters().items() if k in active}

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
