"""Starts and stops the daemon's stages from the running state: the plumbing between the supervisor, the stage
specs and the stream registry (what the reload controller and the watch loop call)."""

from __future__ import annotations

import structlog
import zmq

from streamd.control.specs import RunningState, StageSpecs
from streamd.errors import RingError
from streamd.ipc import sockets
from streamd.ipc.messages import StreamRemoved, encoder
from streamd.redact import redact
from streamd.runtime.stage import stage_name
from streamd.runtime.supervisor import Supervisor

log = structlog.get_logger()
DECODER_STARTUP_TIMEOUT_S = 60.0
MODEL_READY_TIMEOUT_S = 180.0  # an inference stage beats once its model is loaded and warmed up


class Stages:
    def __init__(self, supervisor: Supervisor, specs: StageSpecs, state: RunningState, ctx: zmq.Context):
        self.supervisor = supervisor
        self.specs = specs
        self.state = state
        self._ctx = ctx
        self._control_out: dict[str, zmq.Socket] = {}  # inference endpoint -> PUSH, for StreamRemoved

    # --- shared stages -------------------------------------------------------------------------------

    def start_core(self) -> list[str]:
        """Sinks, analytics and one inference stage per model in use; returns their names (not yet ready)."""
        sup, specs = self.supervisor, self.specs
        names = [sup.add(specs.sinks, critical=True), sup.add(specs.analytics, critical=True)]
        keys = sorted({p.model_key for p in self.state.pipelines.values()})
        # camera health: beside the pipeline, not critical (counting goes on without it)
        names.append(sup.add(specs.health, critical=False))
        return names + [self.add_inference(key) for key in keys]

    def add_inference(self, model_key: str) -> str:
        # Not critical: a model that fails at run time fails the streams of its pipelines only.
        return self.supervisor.add(lambda: self.specs.inference(model_key), critical=False,
                                   startup_timeout_s=MODEL_READY_TIMEOUT_S)

    def inference_stages(self) -> dict[str, str]:
        return {view.key: view.name for view in self.supervisor.views("inference")}

    def stage_state(self, name: str) -> tuple[str, bool, str | None]:
        view = self.supervisor.view(name)
        if view is None:
            return "missing", False, None
        return view.state, view.ready, view.last_error

    def retire(self, name: str) -> None:
        self.supervisor.retire(name)

    def refresh_shared(self) -> list[str]:
        self.stop_unused_inference()
        names = [*self.supervisor.names("analytics"), *self.supervisor.names("inference"), *self.supervisor.names("health")]
        for name in names:
            self.supervisor.refresh(name)
        return names

    def is_current(self, name: str) -> bool:
        """Runs the current config, or cannot be waited for (gone, failed, backing off: it restarts from it)."""
        view = self.supervisor.view(name)
        return view is None or view.state != "running" or self.supervisor.is_current(name)

    def stop_unused_inference(self) -> None:
        used = {p.model_key for p in self.state.pipelines.values()} | {p.model_key for p in self.state.staged.values()}
        for key, name in self.inference_stages().items():
            if key not in used:
                self.supervisor.retire(name)
                log.info("inference_stage_removed", stage=name, reason="no stream uses its model any more")

    def fail_streams_of_failed_models(self) -> None:
        """An inference stage that gave up fails the streams of its pipelines, naming them; the rest runs on.
        The pipelines count as failed: a later reload loads their model again."""
        for view in list(self.supervisor.views("inference")):
            if view.state != "failed":
                continue
            pipelines = sorted(n for n, p in self.state.pipelines.items() if p.model_key == view.key)
            error = f"pipeline {', '.join(pipelines) or '?'}: inference failed: {view.last_error or 'crash loop'}"
            for name in pipelines:
                self.state.pipeline_errors[name] = error
                del self.state.pipelines[name]
            for entry in self.state.streams.running():
                if entry.config.pipeline in pipelines:
                    entry.failed = error
                    self.supervisor.retire(stage_name("decoder", entry.config.name))
                    log.error("stream_failed", stream=entry.config.name, error=error,
                              action="fix the model and save the config file (or reload) to retry")
            self.supervisor.retire(view.name)

    # --- streams -------------------------------------------------------------------------------------

    def start_stream(self, name: str, start_frame: int = 0) -> None:
        """Make the stream's ring; the decoder starts with :meth:`spawn_decoder` once the shared stages run
        its pipeline. A ring that cannot be made fails this stream only."""
        stream = next(s for s in self.state.config.active_streams if s.name == name)
        try:
            self.state.streams.start(stream, start_frame)
        except (RingError, OSError) as exc:
            error = f"stream {name}: {exc}"
            self.state.streams.not_started[name] = error
            log.error("stream_failed", stream=name, error=error)

    def spawn_decoder(self, name: str) -> None:
        entry = self.state.streams.get(name)
        if entry is None:
            return
        self.supervisor.add(lambda: self.specs.decoder(name), critical=False,
                            startup_timeout_s=DECODER_STARTUP_TIMEOUT_S)
        log.info("stream_added", stream=name, url=redact(entry.config.url), pipeline=entry.config.pipeline,
                 kind=entry.config.kind, realtime=entry.config.is_realtime)

    def stop_stream(self, name: str, handed_over: bool = False) -> None:
        """Stop one stream's decoder, tell the shared stages to forget its ring, free its shared memory.
        ``handed_over``: another fleet node takes the stream on; its stored analytics state stays for that node."""
        self.supervisor.retire(stage_name("decoder", name))
        entry = self.state.streams.get(name)
        if entry is not None:
            pipeline = self.state.pipelines.get(entry.config.pipeline)
            removed = encoder.encode(StreamRemoved(stream=name, ring=entry.ring, handed_over=handed_over))
            if pipeline is not None:
                self._send(self.specs.endpoints.inference(pipeline.model_key), removed)
            # and to analytics directly: the inference stage may be retired by this reload before it passes it on
            self._send(self.specs.endpoints.analytics, removed)
        self.state.streams.stop(name)
        log.info("stream_removed", stream=name, handed_over=handed_over)

    def _send(self, endpoint: str, payload: bytes) -> None:
        """Best effort: a lost StreamRemoved only keeps a mapping of an unlinked ring until the stage restarts."""
        sock = self._control_out.get(endpoint)
        if sock is None:
            sock = self._control_out[endpoint] = sockets.push(self._ctx, endpoint, hwm=1000)
        try:
            sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            log.warning("control_message_dropped", endpoint=endpoint, reason="stage not receiving")

    def close(self) -> None:
        for sock in self._control_out.values():
            sock.close(linger=0)
        self._control_out.clear()
