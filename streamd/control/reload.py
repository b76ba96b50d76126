"""Applies a changed config beside the watch loop, all or nothing.

A reload goes through phases; only the first runs in a thread, the rest are short steps the watch loop takes
on each tick, so heartbeats, the systemd watchdog, /healthz and the untouched streams never wait for it:

1. prepare (worker thread): read and validate the file, diff it against the running config, load every new or
   changed pipeline's model (seconds to minutes). Any error rejects the reload; nothing has changed yet.
2. models: start an inference stage for each new model and wait until it is ready. A stage that fails or does
   not become ready rejects the reload: the new stages are stopped, the running config stays.
3. commit: the new config becomes the running state; removed and changed streams stop; analytics and inference
   are reconfigured (the supervisor resends until their heartbeats report the new config hash).
4. streams: once the shared stages run the new config, the added and changed streams start.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from streamd.analytics.store import CountStore
from streamd.config.diff import ConfigDiff, diff_configs
from streamd.config.loader import load_config
from streamd.config.models import DaemonConfig
from streamd.control.fleet import fleet_streams, owned_view, standby_pipelines
from streamd.control.pipelines import ResolvedPipeline, resolve_pipeline, source_key
from streamd.control.specs import RunningState
from streamd.control.stages import MODEL_READY_TIMEOUT_S  # a new model's inference stage is ready within this
from streamd.errors import ConfigError, ModelError
from streamd.redact import redact

log = structlog.get_logger()

SYNC_TIMEOUT_S = 30.0
PREPARE_TIMEOUT_S = 600.0  # reading the file and loading new models: beyond this the reload is rejected
REGAINED_RESTART_S = 1.0  # a regained stream starts again this long after it stopped: its last frames are through
FLEET_RETRY_S = 5.0  # a rejected lease change is tried again after this  # start the new streams anyway if a shared stage has not confirmed its new config by then


@dataclass(frozen=True)
class ReloadPlan:
    config: DaemonConfig  # the new config, with the sections a reload cannot change kept at their running values
    change: ConfigDiff
    resolved: dict[str, ResolvedPipeline]  # new, changed or retried pipelines whose model loaded
    still_failing: dict[str, str]  # unchanged pipelines that failed before and fail again: their streams wait
    stop: list[str]  # streams to stop (removed, changed, or failed and retried)
    start: list[str]  # streams to start once the shared stages run the new config
    start_frames: dict[str, int] = field(default_factory=dict)  # retried files resume after their checkpoint
    files: tuple[Path, ...] = ()  # the files this config was read from
    owned: dict[str, int] | None = None  # fleet: the leases this plan was made for
    fleet_streams: tuple[str, ...] = ()  # fleet: every enabled stream of the file (shared by the nodes)
    import_failed: dict[str, str] = field(default_factory=dict)  # streams whose hand-over failed: not started
    handed_over: tuple[str, ...] = ()  # fleet: streams stopped because another node now holds them
    regained: tuple[str, ...] = ()  # fleet: held again after another node held them: stopped now, started next
    standby: tuple[str, ...] = ()  # fleet: pipelines kept loaded for streams other nodes run (fleet.standby_models)

    @property
    def empty(self) -> bool:
        return self.change.empty and not self.start and not self.stop and not self.resolved


class ReloadRejected(Exception):
    pass


def prepare(path: Path, running: DaemonConfig, usable: set[str], streams_running: set[str],
            streams_finished: set[str], owned: dict[str, int] | None = None,
            import_stream: Callable[[str], None] | None = None,
            running_owned: dict[str, int] | None = None) -> ReloadPlan:
    """Phase 1 (any thread; reads nothing the watch loop changes). Raises ConfigError or ModelError.
    ``owned``: in a fleet, the streams this node holds (the others are disabled here)."""
    loaded = load_config(path)
    # held here before and again now, but another node held it in between (an epoch skipped: every acquisition
    # takes the next one): what runs here is behind the fleet. This reload stops it, the next one (asked for at
    # once) starts it again from the fleet's checkpoint and state, as for any stream taken over.
    regained = tuple(sorted(n for n, epoch in (owned or {}).items()
                            if n in (running_owned or {}) and epoch > (running_owned or {})[n] + 1))
    if regained and owned is not None:
        owned = {n: e for n, e in owned.items() if n not in regained}
    effective = owned_view(loaded.config, owned)
    change = diff_configs(running, effective)
    new = effective.model_copy(update={k: getattr(running, k) for k in change.needs_restart})
    active = {s.name: s for s in new.active_streams}
    changed = set(change.added) | set(change.restarted)
    # streams that should run but do not (their model failed, their ring could not be made, their source
    # failed): retried on every reload
    retried = sorted(n for n in active if n not in changed and n not in streams_running and n not in streams_finished)
    wanted = {active[n].pipeline for n in [*changed, *retried]}
    resolved: dict[str, ResolvedPipeline] = {}
    still_failing: dict[str, str] = {}
    for name in sorted(set(change.pipelines_changed) | {p for p in wanted if p not in usable}):
        try:
            resolved[name] = resolve_pipeline(name, new.pipelines[name])
        except ModelError as exc:
            if name in change.pipelines_changed:
                raise
            still_failing[name] = str(exc)
    standby = standby_pipelines(loaded.config, owned, new.fleet) - {s.pipeline for s in active.values()}
    for name in sorted(standby):
        if name in usable and running.pipelines.get(name) == new.pipelines[name]:
            continue  # loaded already, unchanged
        try:
            resolved[name] = resolve_pipeline(name, new.pipelines[name])
        except ModelError as exc:  # no stream runs it here: the node that takes such a stream reports it
            standby.discard(name)
            log.warning("standby_model_unusable", pipeline=name, error=str(exc),
                        action="a stream of this pipeline moved here loads it then (and fails there if it still fails)")
    start = sorted(n for n in [*changed, *retried] if active[n].pipeline not in still_failing)
    stop = sorted(set(change.removed) | set(change.restarted) | set(retried))
    taken_over = []
    import_failed: dict[str, str] = {}
    if import_stream is not None:
        for name in start:
            if name not in streams_running and (owned is None or name not in (running_owned or {})):
                try:
                    import_stream(name)  # a stream this node took over: its checkpoint and state from the fleet
                except Exception as exc:  # the fleet's store unreachable: do not count it again from frame 0
                    import_failed[name] = f"stream {name}: taking it over failed: {redact(str(exc))}"
                    continue
                taken_over.append(name)
        start = [n for n in start if n not in import_failed]
    start_frames = {}
    # a retried file, or one another node was counting, resumes after its checkpoint; an edit runs it anew
    resumed_files = [n for n in {*retried, *taken_over} if active[n].is_finite and n in start]
    if resumed_files:
        store = CountStore(new.counts.path)
        try:
            start_frames = {n: store.resume_frame(n, source_key(active[n])) for n in resumed_files}
        finally:
            store.close()
    shared = fleet_streams(loaded.config)
    # still in the file, no longer held here: the node that holds it now continues from its state
    handed_over = tuple(n for n in change.removed if owned is not None and n in shared and n not in owned)
    return ReloadPlan(config=new, change=change, resolved=resolved, still_failing=still_failing, stop=stop,
                      start=start, import_failed=import_failed, start_frames=start_frames, files=loaded.files, owned=owned,
                      fleet_streams=tuple(shared), handed_over=handed_over, regained=regained,
                      standby=tuple(sorted(standby)))


class StageControl(Protocol):
    """What the reload controller needs from the daemon (kept narrow so the controller can be tested alone)."""

    def add_inference(self, model_key: str) -> str: ...
    def inference_stages(self) -> dict[str, str]: ...  # model key -> stage name
    def stage_state(self, name: str) -> tuple[str, bool, str | None]: ...  # (state, ready, last error)
    def retire(self, name: str) -> None: ...
    def stop_stream(self, name: str, handed_over: bool = False) -> None: ...
    def start_stream(self, name: str, start_frame: int) -> None: ...  # creates the ring (the decoder comes later)
    def spawn_decoder(self, name: str) -> None: ...
    def refresh_shared(self) -> list[str]: ...  # reconfigure analytics + inference; returns their stage names
    def is_current(self, name: str) -> bool: ...
    def stop_unused_inference(self) -> None: ...


class ReloadController:
    def __init__(self, path: Path, state: RunningState, stages: StageControl,
                 notify: Callable[[str], None] | None = None,
                 owned: Callable[[], dict[str, int] | None] | None = None,
                 import_stream: Callable[[str], None] | None = None,
                 on_streams: Callable[[list[str]], None] | None = None):
        self.path = path
        self.state = state
        self.stages = stages
        self._notify = notify or (lambda _phase: None)
        self._owned = owned or (lambda: None)
        self._import_stream = import_stream
        self._on_streams = on_streams  # fleet: the file's stream list changed
        self._requests: deque[str] = deque(maxlen=100)  # appended from signal handlers, the API and the fleet thread
        self._retry_at: float | None = None  # a rejected lease change is tried again (nothing else would ask)
        self._worker: threading.Thread | None = None
        self._prepared: ReloadPlan | BaseException | None = None
        self._reason = ""
        self._phase = "idle"  # idle | preparing | models | syncing
        self._plan: ReloadPlan | None = None
        self._waiting: list[str] = []  # stage names the current phase waits for
        self._new_stages: dict[str, str] = {}  # model key -> inference stage this reload started
        self._deadline = 0.0
        self._started_at = 0.0
        self._committed = False
        self.status: dict[str, Any] = {"ok": True, "reloads": 0, "failures": 0, "in_progress": False}

    @property
    def busy(self) -> bool:
        return self._phase != "idle"

    def request(self, reason: str) -> None:
        """Thread- and signal-safe; a request during a reload runs once that one is done."""
        self._requests.append(reason)

    def tick(self, now: float) -> None:
        try:
            if self._phase == "idle" and self._retry_at is not None and now >= self._retry_at:
                self._retry_at = None
                self._requests.append("fleet")
            if self._phase == "idle" and self._requests:
                self._begin(now)
            elif self._phase == "preparing" and now > self._deadline:
                self._worker = None  # abandoned (a daemon thread): a hung model load must not block reloads
                self._reject(f"reading the config and loading its models took more than {PREPARE_TIMEOUT_S:.0f} s")
            elif self._phase == "preparing" and self._worker is not None and not self._worker.is_alive():
                self._after_prepare(now)
            elif self._phase == "models":
                self._check_models(now)
            elif self._phase == "syncing":
                self._check_sync(now)
        except Exception as exc:  # a bug here must not end the daemon: report it like a rejected reload
            log.exception("reload_crashed", phase=self._phase)
            self._abort(f"reload failed in phase {self._phase}: {type(exc).__name__}: {exc}")

    # --- phases --------------------------------------------------------------------------------------

    def _begin(self, now: float) -> None:
        reasons = []
        while self._requests:
            reasons.append(self._requests.popleft())
        self._reason = "fleet" if "fleet" in reasons else (reasons[-1] if reasons else "signal")
        self._phase, self._started_at, self._prepared = "preparing", now, None
        self._deadline = now + PREPARE_TIMEOUT_S
        self.status["in_progress"] = True
        state = self.state
        args = (self.path, state.config, set(state.pipelines), {e.config.name for e in state.streams.running()},
                {e.config.name for e in state.streams if e.finished}, self._owned(), self._import_stream, state.owned)

        def work() -> None:
            try:
                self._prepared = prepare(*args)
            except BaseException as exc:  # reported as a rejected reload, whatever it is
                self._prepared = exc

        self._worker = threading.Thread(target=work, name="reload-prepare", daemon=True)
        self._worker.start()

    def _after_prepare(self, now: float) -> None:
        result, self._worker = self._prepared, None
        if isinstance(result, BaseException):
            if isinstance(result, (ConfigError, ModelError)):
                self._reject(str(result))
            else:
                log.exception("reload_crashed", exc_info=result)
                self._reject(f"reload failed: {type(result).__name__}: {redact(str(result))}")
            return
        assert result is not None
        plan = self._plan = result
        if plan.empty:
            self._adopt_files(plan)
            if plan.owned != self.state.owned:  # the same streams, leases taken anew: new epochs to record with
                self.state.owned = plan.owned
                self.stages.refresh_shared()
            self._finish_status(ok=True, changes={})
            log.info("reload_no_change", reason=self._reason)
            return
        self.state.staged = dict(plan.resolved)
        existing = self.stages.inference_stages()
        new_keys = sorted({p.model_key for p in plan.resolved.values()} - set(existing))
        self._new_stages = {}
        for key in new_keys:  # one by one: an abort retires those already started
            self._new_stages[key] = self.stages.add_inference(key)
        self._waiting = list(self._new_stages.values())
        self._phase, self._deadline = "models", now + MODEL_READY_TIMEOUT_S
        self._check_models(now)

    def _check_models(self, now: float) -> None:
        pending = []
        for name in self._waiting:
            state, ready, error = self.stages.stage_state(name)
            if state in ("failed", "backing_off", "finished", "missing"):
                key = next(k for k, n in self._new_stages.items() if n == name)
                pipelines = sorted(n for n, p in self.state.staged.items() if p.model_key == key)
                self._abort(f"pipeline {', '.join(pipelines)}: the inference stage for its model did not start "
                            f"({state}): {error or 'see the stage_crashed log line'}")
                return
            if not ready:
                pending.append(name)
        self._waiting = pending
        if pending and now > self._deadline:
            self._abort(f"the inference stages {pending} were not ready within {MODEL_READY_TIMEOUT_S:.0f} s "
                        "(model loading and warm-up); the running config stays")
            return
        if not pending:
            self._commit(now)

    def _adopt_files(self, plan: ReloadPlan) -> None:
        self.state.files = plan.files
        if self._on_streams is not None:
            self._on_streams(list(plan.fleet_streams))

    def _commit(self, now: float) -> None:
        plan, state = self._plan, self.state
        assert plan is not None
        self._adopt_files(plan)
        self._committed = True  # from here on the reload rolls forward: nothing is taken back
        self._new_stages = {}  # the committed pipelines need them
        self._notify("reloading")
        for name in plan.stop:
            self.stages.stop_stream(name, handed_over=name in plan.handed_over)
        state.config = plan.config
        state.owned = plan.owned
        state.pipelines.update(state.staged)
        state.staged = {}
        for name in plan.resolved:
            state.pipeline_errors.pop(name, None)
        state.pipeline_errors.update(plan.still_failing)
        for name, error in plan.still_failing.items():
            for stream in plan.config.active_streams:
                if stream.pipeline == name:
                    state.streams.not_started[stream.name] = error
        used = {s.pipeline for s in plan.config.active_streams} | set(plan.standby)
        for name in [n for n in state.pipelines if n not in used]:
            del state.pipelines[name]
        for name, error in plan.import_failed.items():
            state.streams.not_started[name] = error
        if plan.import_failed:
            self._retry_at = time.monotonic() + REGAINED_RESTART_S + FLEET_RETRY_S
        if plan.regained:
            log.info("streams_regained", streams=list(plan.regained),
                     action="restarting them from the fleet's checkpoint: another node ran them meanwhile")
            self._retry_at = time.monotonic() + REGAINED_RESTART_S
        for name in plan.start:
            self.stages.start_stream(name, plan.start_frames.get(name, 0))
        self._waiting = self.stages.refresh_shared()
        self._phase, self._deadline = "syncing", now + SYNC_TIMEOUT_S
        self._check_sync(now)

    def _check_sync(self, now: float) -> None:
        self._waiting = [n for n in self._waiting if not self.stages.is_current(n)]
        if self._waiting and now < self._deadline:
            return
        if self._waiting:
            log.warning("reload_config_unconfirmed", stages=self._waiting,
                        action="starting the new streams anyway; the supervisor keeps resending")
        plan = self._plan
        assert plan is not None
        for name in plan.start:
            entry = self.state.streams.get(name)
            if entry is None:
                continue  # its ring could not be made: not started, retried on the next reload
            if entry.failed is not None or entry.config.pipeline not in self.state.pipelines:
                # its model failed meanwhile: not started, retried on the next reload
                self.state.streams.stop(name)
                self.state.streams.not_started[name] = entry.failed or f"pipeline {entry.config.pipeline} failed"
                continue
            self.stages.spawn_decoder(name)
        self.stages.stop_unused_inference()
        self._notify("ready")
        summary = plan.change.summary()
        if plan.start:
            summary = {**summary, "started": plan.start}
        self._finish_status(ok=True, changes=summary, reloads=self.status["reloads"] + 1)
        log.info("reload_applied", reason=self._reason, seconds=round(now - self._started_at, 2), **summary)
        if plan.change.needs_restart:
            log.warning("reload_needs_restart", sections=plan.change.needs_restart,
                        action="these settings keep their running values until streamd restarts")

    def _abort(self, error: str) -> None:
        for name in self._new_stages.values():
            self.stages.retire(name)
        self.state.staged = {}
        if self._committed:
            self._notify("ready")  # systemd was told RELOADING: never leave it there
        self._reject(error)

    def _reject(self, error: str) -> None:
        error = redact(error)
        if self._reason == "fleet":
            self._retry_at = time.monotonic() + REGAINED_RESTART_S + FLEET_RETRY_S
        self._finish_status(ok=False, error=error, failures=self.status["failures"] + 1)
        log.error("reload_rejected", reason=self._reason, error=error, action="still running the previous config")

    def _finish_status(self, ok: bool, **fields: Any) -> None:
        self.status = {**self.status, "error": None, **fields, "ok": ok, "reason": self._reason, "at": time.time(),
                       "in_progress": False}
        self._phase, self._plan, self._waiting, self._new_stages = "idle", None, [], {}
        self._committed = False
