"""Composition root: builds every part from the config, runs the watch loop, stops in reverse order.

The parts: the running state and its stream registry (streamd/control/specs.py, streams.py), the stage specs
the supervisor restarts through (specs.py), the stage plumbing (stages.py), the reload controller
(reload.py) and the status builder (status.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import zmq

from streamd.analytics.store import CountStore
from streamd.config.loader import LoadedConfig
from streamd.config.models import DaemonConfig, PipelineConfig
from streamd.control.fleet import FleetMembership, fleet_streams, owned_view, standby_pipelines
from streamd.control.pipelines import ResolvedPipeline, resolve_pipeline, source_key
from streamd.control.reload import ReloadController
from streamd.control.specs import RunningState, StageSpecs
from streamd.control.stages import Stages
from streamd.control.status import StatusBuilder
from streamd.control.streams import StreamRegistry
from streamd.errors import ModelError
from streamd.ipc.messages import HealthReset, encoder
from streamd.ipc.ring import remove_orphaned_rings
from streamd.ipc.sockets import Endpoints
from streamd.redact import redact
from streamd.runtime.sd_notify import SystemdNotifier
from streamd.runtime.stage import stage_name
from streamd.runtime.supervisor import Supervisor

__all__ = ["Daemon", "ResolvedPipeline", "resolve_pipeline", "source_key"]

log = structlog.get_logger()
CORE_READY_TIMEOUT_S = 120.0
FILE_CHECK_INTERVAL_S = 1.0


class Daemon:
    def __init__(self, loaded: LoadedConfig, runtime_root: Path | None = None,
                 on_tick: Callable[[dict[str, dict[str, Any]]], None] | None = None):
        self.loaded = loaded
        self.runtime_dir = (runtime_root or Path(tempfile.gettempdir())) / f"streamd-{os.getpid()}"
        self.endpoints = Endpoints(self.runtime_dir)
        self.state = RunningState(config=loaded.config, streams=StreamRegistry(), files=loaded.files)
        self.on_tick = on_tick  # called with the merged per-stream counters a few times a second
        self.final_counters: dict[str, dict[str, Any]] = {}
        self.snapshot: dict[str, Any] = {"t": time.time(), "ready": False, "streams": {}}
        self.systemd = SystemdNotifier()
        self.api: Any = None  # ApiServer once started
        self.supervisor: Supervisor | None = None
        self.stages: Stages | None = None
        self.status: StatusBuilder | None = None
        self.reloads: ReloadController | None = None
        self.fleet: FleetMembership | None = None
        self.replicator: Any = None  # streamd.fleet.replicator.Replicator when counts.url is set
        self._ctx: zmq.Context | None = None
        self._stop_requested = False
        self._reload_requested: str | None = None  # before the reload controller exists
        self._health_resets: deque[str] = deque(maxlen=100)  # streams whose health reference to learn again
        self._config_stamp = self._stamp()

    @property
    def config(self) -> DaemonConfig:
        return self.state.config

    def request_stop(self, *_: Any) -> None:
        self._stop_requested = True

    def request_reload(self, reason: str = "signal") -> None:
        """Thread- and signal-safe: the watch loop starts the reload on its next tick."""
        if self.reloads is not None:
            self.reloads.request(reason)
        else:
            self._reload_requested = reason

    def request_health_reset(self, stream: str) -> bool:
        """Thread-safe: the watch loop tells the health stage to learn the stream's reference view again.
        False when the stream is not running."""
        if self.state.streams.get(stream) is None:
            return False
        self._health_resets.append(stream)
        return True

    def _forward_health_resets(self) -> None:
        assert self.supervisor is not None
        while self._health_resets:
            stream = self._health_resets.popleft()
            if not self.supervisor.send_to(self.endpoints.health, encoder.encode(HealthReset(stream=stream))):
                log.warning("camera_health_reset_dropped", stream=stream, reason="health stage not receiving")

    # --- start ---------------------------------------------------------------------------------------

    def _resolve_pipelines(self) -> None:
        used = {s.pipeline for s in self.config.active_streams}
        standby = standby_pipelines(self.loaded.config, self.state.owned) - used
        for name in sorted(used | standby):
            try:
                self.state.pipelines[name] = resolve_pipeline(name, self.config.pipelines[name])
            except ModelError as exc:
                if name in standby:  # no stream runs it here yet
                    log.warning("standby_model_unusable", pipeline=name, error=str(exc),
                                action="a stream of this pipeline moved here loads it then")
                    continue
                self.state.pipeline_errors[name] = str(exc)
                streams = [s.name for s in self.config.active_streams if s.pipeline == name]
                for stream in streams:
                    self.state.streams.not_started[stream] = str(exc)
                log.error("pipeline_unusable", pipeline=name, error=str(exc), streams=streams,
                          action="fix the model or pipeline and save the config file: it is retried on reload")

    def _resume_frames(self) -> dict[str, int]:
        store = CountStore(self.config.counts.path)
        try:
            resume = {s.name: store.resume_frame(s.name, source_key(s)) for s in self.config.active_streams
                      if s.is_finite}
        finally:
            store.close()
        resumed = {name: frame for name, frame in resume.items() if frame}
        if resumed:
            log.warning("resuming_files", frames=resumed, store=self.config.counts.path,
                        reason="an earlier run stopped part-way; counts so far are in the store")
        return resume

    def _start_replication(self) -> None:
        """counts.url: analytics records locally, a thread ships the rows to PostgreSQL (outages only delay it)."""
        counts = self.config.counts
        if counts.url is None:
            return
        from streamd.fleet.replicator import Replicator

        self.replicator = Replicator(counts.path, counts.url, self.config.fleet.node_id)
        self.replicator.start()
        if not self.replicator.flush(timeout=10.0):  # what an earlier run recorded goes first
            log.warning("fleet_replication_behind", status=self.replicator.status().as_dict(),
                        action="starting anyway; the backlog is delivered when the database answers")

    def _import_stream(self, stream: str) -> None:
        """A stream this node takes over: its checkpoint and analytics state from the fleet's store."""
        from streamd.fleet.replicator import import_stream

        counts = self.config.counts
        owned = self.fleet.owned() if self.fleet is not None else {}
        if counts.url is not None:
            handover = import_stream(counts.path, counts.url, stream, epoch=owned.get(stream))
            log.info("stream_handed_over", stream=stream, checkpoint_frame=handover.checkpoint_frame,
                     state=handover.state, open_visits=handover.open_visits, dropped=handover.dropped)

    def _stream_stopped(self, stream: str) -> bool:
        """(fleet thread) The stream no longer runs here and the reload that stopped it is through: analytics has
        taken the change, so everything it recorded for the stream is in the local store."""
        reloads = self.reloads
        return reloads is not None and not reloads.busy and stream not in self.state.streams

    def _join_fleet(self) -> None:
        """In a fleet, run only the streams this node holds a lease on; a change of leases is a reload."""
        config = self.loaded.config
        if not config.fleet.enabled or config.counts.url is None:
            return
        fleet = self.fleet = FleetMembership(config.fleet, config.counts.url, fleet_streams(config),
                                             on_change=lambda: self.request_reload("fleet"),
                                             stopped=self._stream_stopped,
                                             deliver=self.replicator.flush if self.replicator is not None else None)
        fleet.start(wait_s=2 * config.fleet.heartbeat_s)
        self.state.owned = fleet.owned()
        self.state.config = owned_view(config, self.state.owned)
        for stream in sorted(self.state.owned):
            try:
                self._import_stream(stream)
            except Exception as exc:  # the fleet's store unreachable: start from what this node has
                log.warning("stream_handover_failed", stream=stream, error=redact(str(exc)))

    def _start(self) -> None:
        orphans = remove_orphaned_rings()
        if orphans:
            log.warning("orphaned_rings_removed", rings=orphans)
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._start_replication()
        self._join_fleet()
        self._resolve_pipelines()
        resume = self._resume_frames()
        self._ctx = zmq.Context()
        sup = self.supervisor = Supervisor(self.config.supervisor, self._ctx, self.endpoints)
        # outboxes live beside the count store unless a sink names its own file
        state_dir = os.environ.get("STATE_DIRECTORY") or str(Path(self.config.counts.path).parent)
        specs = StageSpecs(self.state, self.endpoints, run_id=f"{int(time.time() * 1000):x}", state_dir=state_dir)
        stages = self.stages = Stages(sup, specs, self.state, self._ctx)
        self.status = StatusBuilder(self.state, sup)
        fleet = self.fleet
        self.reloads = ReloadController(
            self.loaded.path, self.state, stages, notify=self._notify_reload,
            owned=fleet.owned if fleet is not None else None,
            import_stream=self._import_stream if fleet is not None else None,
            on_streams=fleet.set_streams if fleet is not None else None)
        if self._reload_requested:
            self.reloads.request(self._reload_requested)
        # rings first: the analytics spec carries every stream's source identity
        for stream in self.config.active_streams:
            if stream.pipeline in self.state.pipelines:
                stages.start_stream(stream.name, resume.get(stream.name, 0))
        core = stages.start_core()
        slow = sup.wait_ready(core, timeout_s=CORE_READY_TIMEOUT_S)
        if slow:
            log.warning("stages_not_ready", stages=slow, action="starting streams anyway")
        stages.fail_streams_of_failed_models()
        for entry in self.state.streams.running():
            stages.spawn_decoder(entry.config.name)
        self._publish_snapshot({})
        self._start_api()

    def _notify_reload(self, phase: str) -> None:
        if phase == "reloading":
            self.systemd.reloading()
        else:
            self.systemd.ready(status=f"{len(self.state.streams.running())} streams running")

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
        entry = self.state.streams.get(stream)
        pipeline = self.state.pipelines.get(entry.config.pipeline) if entry is not None else None
        return pipeline.config if pipeline is not None else None

    # --- run -----------------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload("signal"))
        code = 1
        try:
            self._start()
            self.systemd.ready(status=f"{len(self.state.streams.running())} streams running")
            code = self._watch()
        finally:
            self.systemd.stopping()
            if self.api is not None:
                self.api.stop()
            if self.status is not None:
                self.status.close()
            if self.supervisor is not None:
                self.supervisor.stop_all()  # ordered drain; stages send a last heartbeat as they exit
                assert self.status is not None
                self.final_counters = self.status.stream_counters()
                self.status.log_summary(self.final_counters)
            if self.replicator is not None:
                self.replicator.stop(timeout=10.0)  # deliver what the drain recorded before the leases go
            if self.fleet is not None:
                self.fleet.stop()  # after the drain: hand the streams over once their last counts are recorded
            self._cleanup()
        if self.state.streams.failures() and code == 0:
            code = 1
        return code

    def _stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        """mtime, size and inode of the config file and of each pipeline file it uses."""
        stamps: list[tuple[int, int, int] | None] = []
        for path in self.state.files:
            try:
                st = os.stat(path)  # follows symlinks: a Kubernetes ConfigMap update swaps one
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _config_file_changed(self) -> bool:
        stamp = self._stamp()
        if stamp[0] is None or stamp == self._config_stamp:
            return False
        self._config_stamp = stamp
        return True

    def _watch(self) -> int:
        assert self.supervisor is not None and self.reloads is not None and self.stages is not None
        assert self.status is not None
        sup, reloads = self.supervisor, self.reloads
        if not self.state.streams.running() and self.fleet is None:  # a fleet node may hold no stream yet
            log.error("no_streams_running", failed=self.state.streams.failures())
            return 1
        stats_interval = self.config.supervisor.stats_interval_s
        now = time.monotonic()
        next_stats, next_file_check, next_watchdog = now + stats_interval, now + FILE_CHECK_INTERVAL_S, now
        watchdog_every = self.systemd.watchdog_interval()
        while not self._stop_requested:
            sup.poll(0.2)
            failed_stage = sup.critical_failure
            if failed_stage:
                log.error("daemon_failed", stage=failed_stage, reason="a stage every stream needs is in a crash loop")
                return 1
            now = time.monotonic()
            if self.config.watch_config and now >= next_file_check:
                next_file_check = now + FILE_CHECK_INTERVAL_S
                if self._config_file_changed():
                    reloads.request("file")
            reloads.tick(now)
            self._forward_health_resets()
            self.stages.fail_streams_of_failed_models()
            counters = self.status.stream_counters()
            if self.on_tick is not None:
                self.on_tick(counters)
            self._publish_snapshot(counters)
            if watchdog_every is not None and now >= next_watchdog:
                self.systemd.watchdog()
                next_watchdog = now + watchdog_every
            self._note_finished_streams(counters)
            if now >= next_stats:
                self.status.log_stats(counters)
                next_stats = now + stats_interval
            if reloads.busy:
                continue
            outcome = self._all_done()
            if outcome is not None:
                return outcome
        return 0

    def _note_finished_streams(self, counters: dict[str, dict[str, Any]]) -> None:
        assert self.supervisor is not None
        for entry in self.state.streams.running():
            name = entry.config.name
            view = self.supervisor.view(stage_name("decoder", name))
            if view is None:
                continue
            c = counters.get(name, {})
            if view.state == "failed":
                entry.failed = c.get("last_error") or view.last_error or "decoder failed"
            elif entry.config.is_finite and c.get("state") == "finished" and c.get("drained"):
                self.supervisor.retire(view.name, keep=True)
                entry.finished = True

    def _all_done(self) -> int | None:
        """0 when every stream was a finite file and all are done; 1 when every live stream failed."""
        entries = list(self.state.streams)
        if not entries or self.fleet is not None:  # a fleet node runs on: streams may move to it
            return None
        if not all(e.finished or e.failed for e in entries):
            return None
        if all(e.failed for e in entries) and not any(e.config.is_finite for e in entries):
            log.error("all_streams_failed", failed=self.state.streams.failures())
            return 1
        # every file done and every live stream failed: nothing will run again (run() exits 1 if any failed)
        log.info("all_streams_finished", streams=sorted(e.config.name for e in entries if e.finished),
                 failed=sorted(e.config.name for e in entries if e.failed))
        return 0

    def _publish_snapshot(self, counters: dict[str, dict[str, Any]]) -> None:
        assert self.status is not None and self.reloads is not None
        snapshot = self.status.snapshot(counters, self.reloads.status)
        if self.fleet is not None or self.replicator is not None:
            snapshot["fleet"] = {**(self.fleet.status() if self.fleet is not None else {}),
                                 "replication": self.replicator.status().as_dict() if self.replicator else None}
        self.snapshot = snapshot

    # --- stop ----------------------------------------------------------------------------------------

    def _cleanup(self) -> None:
        self.state.streams.cleanup()
        if self.stages is not None:
            self.stages.close()
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        log.info("daemon_stopped")
