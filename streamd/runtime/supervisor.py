"""Starts stage processes, watches exits and heartbeats, restarts with backoff, stops in reverse.

Every (re)spawn asks the stage's factory for a fresh spec, so a restarted stage runs what the current config
says, not what it ran when the daemon started. Stages that take parameters live (analytics, inference) are
reconciled: the supervisor resends a ``Reconfigure`` until the stage's heartbeat reports the expected hash.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
import zmq

from streamd.config.models import SupervisorConfig
from streamd.ipc import sockets
from streamd.ipc.messages import Heartbeat, Reconfigure, StreamCounters, encoder, heartbeat_decoder
from streamd.runtime.backoff import Backoff
from streamd.runtime.params import AnalyticsParams, HealthParams, InferenceParams, params_to_json
from streamd.runtime.stage import EXIT_FAILED, StageKind, StageSpec, run_stage

log = structlog.get_logger()

SpecFactory = Callable[[], StageSpec]
RECONFIGURE_EVERY_S = 1.0  # resend a Reconfigure this often until the stage reports the expected hash
# StreamCounters fields that only grow while a stage lives: kept cumulative across its restarts
_CUMULATIVE = ("frames_decoded", "frames_skipped", "reconnects", "frames_inferred", "dropped_stale", "dropped_overwritten",
               "frames_analysed", "crossings", "events_written")
_CUMULATIVE_HISTOGRAMS = ("latency_hist",)


@dataclass
class StageHandle:
    factory: SpecFactory
    spec: StageSpec  # what the running process was started with
    critical: bool  # the daemon cannot work without it (analytics, sinks)
    startup_timeout_s: float
    backoff: Backoff
    desired: StageSpec | None = None  # what it should run now, when that differs from ``spec`` (live reconfigure)
    process: Any = None  # multiprocessing.Process
    state: str = "new"  # new | running | backing_off | stopping | stopped | finished | failed
    started_at: float = 0.0
    last_beat: float = 0.0
    restart_at: float = 0.0
    restarts: int = 0
    recent_crashes: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    heartbeat: Heartbeat | None = None
    last_error: str | None = None  # the stage's last words (fatal_error of its final heartbeat)
    carried: dict[str, dict[str, Any]] = field(default_factory=dict)  # counters of earlier processes, per stream
    reconfigured_at: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def ready(self) -> bool:
        """Set up and beating (a stage beats once after its set-up, e.g. a model loaded and warmed)."""
        return self.state == "running" and self.heartbeat is not None

    @property
    def expected_hash(self) -> str:
        return (self.desired or self.spec).config_hash

    @property
    def current(self) -> bool:
        """Runs what it should (by the hash its heartbeat reports)."""
        return self.heartbeat is not None and self.heartbeat.config_hash == self.expected_hash


@dataclass(frozen=True)
class StageView:
    """What the daemon and the API may read of one stage (a copy; the handle stays the supervisor's)."""

    name: str
    kind: StageKind
    key: str
    state: str
    pid: int | None
    restarts: int
    critical: bool
    ready: bool
    config_hash: str | None  # reported by the running process
    expected_hash: str
    last_error: str | None
    heartbeat: Heartbeat | None


class Supervisor:
    def __init__(self, config: SupervisorConfig, ctx: zmq.Context, endpoints: sockets.Endpoints):
        self.config = config
        self.endpoints = endpoints
        self._ctx = ctx
        self._control = sockets.pull(ctx, endpoints.control, hwm=10_000)
        self._to_stage: dict[str, zmq.Socket] = {}  # inbox endpoint -> PUSH, for Reconfigure messages
        self._mp = mp.get_context("spawn")
        self._stages: dict[str, StageHandle] = {}
        self._retiring: list[tuple[StageHandle, float]] = []  # stopped without waiting: (handle, kill deadline)

    # --- lifecycle ---------------------------------------------------------------------------------

    def add(self, factory: SpecFactory, critical: bool, startup_timeout_s: float = 120.0) -> str:
        """Start a stage; every restart asks ``factory`` again for what it should run. Returns its name."""
        spec = factory()
        if spec.name in self._stages:
            raise ValueError(f"stage {spec.name} already exists")
        handle = StageHandle(factory=factory, spec=spec, critical=critical, startup_timeout_s=startup_timeout_s,
                             backoff=Backoff(self.config.restart))
        self._stages[spec.name] = handle
        self._spawn(handle, spec)
        return spec.name

    def _spawn(self, handle: StageHandle, spec: StageSpec | None = None) -> None:
        try:
            handle.spec = spec or handle.factory()
        except Exception as exc:  # what it ran is gone from the config (a bug elsewhere): do not retry
            handle.state, handle.last_error = "failed", f"cannot build its spec: {type(exc).__name__}: {exc}"
            log.error("stage_failed", stage=handle.name, error=handle.last_error)
            return
        handle.desired = None
        if handle.heartbeat is not None:
            self._carry(handle, handle.heartbeat)
        process = self._mp.Process(target=run_stage, args=(handle.spec,), name=handle.spec.name, daemon=False)
        try:
            process.start()
        except OSError as exc:  # out of processes, memory or file descriptors: try again later, never end the loop
            delay = handle.backoff.next_delay()
            handle.state, handle.restart_at = "backing_off", time.monotonic() + delay
            handle.last_error = f"cannot start the process: {exc}"
            log.error("stage_start_failed", stage=handle.name, error=str(exc), retry_in_s=round(delay, 2))
            return
        now = time.monotonic()
        handle.process, handle.state, handle.started_at, handle.last_beat = process, "running", now, 0.0
        handle.heartbeat = None
        log.info("stage_started", stage=handle.name, pid=process.pid, restarts=handle.restarts,
                 config_hash=handle.spec.config_hash)

    def refresh(self, name: str) -> None:
        """The config changed: bring a running stage to what its factory says now, without a restart."""
        handle = self._stages.get(name)
        if handle is None:
            return
        try:
            desired = handle.factory()
        except Exception as exc:
            log.error("stage_refresh_failed", stage=name, error=f"{type(exc).__name__}: {exc}")
            return
        handle.desired = desired if desired.config_hash != handle.spec.config_hash else None
        handle.reconfigured_at = 0.0
        self._reconcile(handle, time.monotonic())

    def _reconcile(self, handle: StageHandle, now: float) -> None:
        if handle.state != "running" or handle.current or now - handle.reconfigured_at < RECONFIGURE_EVERY_S:
            return
        target = handle.desired or handle.spec
        params = target.params
        if isinstance(params, AnalyticsParams):
            endpoint = self.endpoints.analytics
        elif isinstance(params, InferenceParams):
            endpoint = self.endpoints.inference(params.model_key)
        elif isinstance(params, HealthParams):
            endpoint = self.endpoints.health
        else:
            return  # decoders and sinks take their parameters at spawn only
        handle.reconfigured_at = now
        sock = self._to_stage.get(endpoint)
        if sock is None:
            sock = self._to_stage[endpoint] = sockets.push(self._ctx, endpoint, hwm=100)
        message = Reconfigure(stage=handle.name, params=params_to_json(params), config_hash=target.config_hash)
        try:
            sock.send(encoder.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the stage is not reading (restarting, busy): the next tick sends again

    def send_to(self, endpoint: str, payload: bytes) -> bool:
        """Best effort: one control message to a stage's inbox (e.g. a HealthReset); False when not taken."""
        sock = self._to_stage.get(endpoint)
        if sock is None:
            sock = self._to_stage[endpoint] = sockets.push(self._ctx, endpoint, hwm=100)
        try:
            sock.send(payload, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def wait_ready(self, names: list[str], timeout_s: float) -> list[str]:
        """Wait until each named stage sent its first heartbeat (it beats once set up); returns the laggards."""
        deadline = time.monotonic() + timeout_s
        waiting = list(names)
        while waiting and time.monotonic() < deadline:
            self.poll(0.1)
            waiting = [n for n in waiting if n in self._stages and not self._stages[n].ready
                       and self._stages[n].state != "failed"]
        return waiting

    def retire(self, name: str, keep: bool = False) -> None:
        """Stop a stage without waiting: SIGTERM now, SIGKILL after stop_timeout_s. ``keep``: its last numbers
        stay in the reports (a finished file's decoder); else the stage is forgotten."""
        handle = self._stages.get(name) if keep else self._stages.pop(name, None)
        if handle is None:
            return
        if handle.process is not None and handle.process.is_alive():
            handle.process.terminate()
            self._retiring.append((handle, time.monotonic() + self.config.stop_timeout_s))
        handle.state = "stopping"

    def stop_stage(self, name: str, remove: bool = False) -> None:
        handle = self._stages.get(name)
        if handle is None:
            return
        self._stop_process(handle)
        if handle.state not in ("failed", "finished"):
            handle.state = "stopped"
        if remove:
            del self._stages[name]

    def _stop_together(self, handles: list[StageHandle]) -> None:
        alive = [h for h in handles if h.process is not None and h.process.is_alive()]
        for handle in alive:
            handle.state = "stopping"
            handle.process.terminate()
        deadline = time.monotonic() + self.config.stop_timeout_s
        for handle in alive:
            handle.process.join(max(0.0, deadline - time.monotonic()))
            if handle.process.is_alive():
                log.error("stage_kill", stage=handle.name, reason=f"did not stop within {self.config.stop_timeout_s}s")
                handle.process.kill()
                handle.process.join(5)
        for handle in handles:
            if handle.state not in ("failed", "finished"):
                handle.state = "stopped"

    def _stop_process(self, handle: StageHandle) -> None:
        if handle.process is not None and handle.process.is_alive():
            handle.state = "stopping"
            handle.process.terminate()
            handle.process.join(self.config.stop_timeout_s)
            if handle.process.is_alive():
                log.error("stage_kill", stage=handle.name, reason=f"did not stop within {self.config.stop_timeout_s}s")
                handle.process.kill()
                handle.process.join(5)

    def stop_all(self) -> None:
        """Stop sources first, then each stage downstream, so each drains what upstream already sent."""
        order = {"decoder": 0, "health": 1, "inference": 1, "analytics": 2, "sinks": 3}
        tiers: dict[int, list[StageHandle]] = {}
        for handle in self._stages.values():
            tiers.setdefault(order[handle.spec.kind], []).append(handle)
        tiers.setdefault(0, []).extend(handle for handle, _ in self._retiring)
        self._retiring.clear()
        for tier in sorted(tiers):  # a tier at a time, its stages together: one stop_timeout_s per tier
            self._stop_together(tiers[tier])
        self._receive(0)
        for sock in self._to_stage.values():
            sock.close(linger=0)
        self._to_stage.clear()

    # --- watching ------------------------------------------------------------------------------------

    def poll(self, timeout_s: float) -> None:
        self._receive(timeout_s)
        now = time.monotonic()
        for handle in self._stages.values():
            if handle.state == "running":
                self._check(handle, now)
                self._reconcile(handle, now)
            elif handle.state == "backing_off" and now >= handle.restart_at:
                handle.restarts += 1
                self._spawn(handle)
        self._reap(now)

    def _reap(self, now: float) -> None:
        keep = []
        for handle, deadline in self._retiring:
            if handle.process.is_alive():
                if now < deadline:
                    keep.append((handle, deadline))
                    continue
                log.error("stage_kill", stage=handle.name, reason=f"did not stop within {self.config.stop_timeout_s}s")
                handle.process.kill()
            handle.process.join(1)
            if handle.process.is_alive():
                keep.append((handle, now + 5))
            elif handle.state == "stopping":
                handle.state = "stopped"
        self._retiring = keep

    def _receive(self, timeout_s: float) -> None:
        if not self._control.poll(int(timeout_s * 1000), zmq.POLLIN):
            return
        while True:
            try:
                beat = heartbeat_decoder.decode(self._control.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:  # e.g. a stage of another version
                log.warning("heartbeat_unreadable", error=str(exc))
                continue
            handle = self._stages.get(beat.stage)
            if handle is None or handle.process is None or beat.pid != handle.process.pid:
                continue
            if beat.fatal_error is not None:
                handle.last_error = beat.fatal_error
                continue  # last words carry no counters: keep the numbers of the last real beat
            handle.last_beat = time.monotonic()
            handle.heartbeat = beat

    def _check(self, handle: StageHandle, now: float) -> None:
        code = handle.process.exitcode
        name = handle.name
        if code is None:
            deadline = (handle.last_beat + self.config.heartbeat_timeout_s if handle.last_beat
                        else handle.started_at + handle.startup_timeout_s)
            if now > deadline:
                log.error("stage_stalled", stage=name, pid=handle.process.pid,
                          silent_s=round(now - (handle.last_beat or handle.started_at), 1), action="kill and restart")
                os.kill(handle.process.pid, signal.SIGKILL)
                handle.process.join(5)
                code = handle.process.exitcode
            else:
                if now - handle.started_at > self.config.crash_loop_window_s:
                    handle.backoff.reset()  # healthy for a whole window: forget old trouble
                return
        if code is None:
            return  # not reaped yet; the next tick looks again
        if code == 0:
            # Stages exit 0 only when told to stop; the supervisor marks those it stops, so this one was stopped
            # from outside (a plain `kill`): it is restarted like a crash, or its work would silently end.
            log.warning("stage_stopped_from_outside", stage=name)
        if code == EXIT_FAILED:
            handle.state = "failed"
            log.error("stage_failed", stage=name, error=handle.last_error,
                      reason="gave up (see its last error); not restarting")
            return
        handle.recent_crashes.append(now)
        window_start = now - self.config.crash_loop_window_s
        crashes = sum(1 for t in handle.recent_crashes if t >= window_start)
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if crashes >= self.config.crash_loop_restarts:
            handle.state = "failed"
            log.error("stage_crash_loop", stage=name, crashes=crashes, window_s=self.config.crash_loop_window_s,
                      last=how, error=handle.last_error,
                      action="not restarting; fix the cause (see the errors above) and restart streamd")
            return
        delay = handle.backoff.next_delay()
        handle.state, handle.restart_at = "backing_off", now + delay
        log.warning("stage_exited", stage=name, how=how, restart_in_s=round(delay, 2), crashes_in_window=crashes)

    def _carry(self, handle: StageHandle, beat: Heartbeat) -> None:
        """Fold a dying process's counters into the handle, so the numbers a stage reports only grow."""
        for stream, counters in beat.streams.items():
            carried = handle.carried.setdefault(stream, {})
            for key in _CUMULATIVE:
                value = getattr(counters, key)
                if value is not None:
                    carried[key] = carried.get(key, 0) + value
            for key in _CUMULATIVE_HISTOGRAMS:
                carried[key] = _add_histograms(carried.get(key), getattr(counters, key))
            stage_hist = counters.stage_hist or {}
            previous = carried.setdefault("stage_hist", {})
            for step, hist in stage_hist.items():
                previous[step] = _add_histograms(previous.get(step), hist)

    # --- queries -------------------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self._stages

    def names(self, kind: StageKind | None = None) -> list[str]:
        return [n for n, h in self._stages.items() if kind is None or h.spec.kind == kind]

    def view(self, name: str) -> StageView | None:
        handle = self._stages.get(name)
        if handle is None:
            return None
        spec = handle.spec
        return StageView(name=name, kind=spec.kind, key=spec.key, state=handle.state, pid=handle.pid,
                         restarts=handle.restarts, critical=handle.critical, ready=handle.ready,
                         config_hash=handle.heartbeat.config_hash if handle.heartbeat else None,
                         expected_hash=handle.expected_hash, last_error=handle.last_error,
                         heartbeat=handle.heartbeat)

    def views(self, kind: StageKind | None = None) -> Iterator[StageView]:
        for name in self.names(kind):
            view = self.view(name)
            if view is not None:
                yield view

    def is_current(self, name: str) -> bool:
        handle = self._stages.get(name)
        return handle is not None and handle.current

    @property
    def critical_failure(self) -> str | None:
        for name, handle in self._stages.items():
            if handle.critical and handle.state == "failed":
                return name
        return None

    def stream_counters(self) -> dict[str, dict[str, Any]]:
        """Latest per-stream numbers, merged over every stage that reports the stream; counters and histograms
        include the stage's earlier processes (cumulative across restarts, as Prometheus expects)."""
        merged: dict[str, dict[str, Any]] = {}
        for handle in self._stages.values():
            streams: dict[str, StreamCounters] = handle.heartbeat.streams if handle.heartbeat is not None else {}
            for stream in streams.keys() | handle.carried.keys():
                target = merged.setdefault(stream, {})
                counters = streams.get(stream)
                carried = handle.carried.get(stream, {})
                if counters is not None:
                    for key in counters.__struct_fields__:
                        value = getattr(counters, key)
                        if value is not None:
                            target[key] = value
                for key in _CUMULATIVE:
                    if key in carried:
                        target[key] = carried[key] + (target.get(key) or 0)
                for key in _CUMULATIVE_HISTOGRAMS:
                    if carried.get(key) is not None:
                        target[key] = _add_histograms(carried[key], target.get(key))
                if carried.get("stage_hist"):
                    hists = dict(target.get("stage_hist") or {})
                    for step, hist in carried["stage_hist"].items():
                        hists[step] = _add_histograms(hist, hists.get(step))
                    target["stage_hist"] = hists
        return merged


def _add_histograms(a: Any, b: Any) -> tuple[list[int], float] | None:
    """Sum of two histogram snapshots ((bucket counts, sum) pairs, as runtime/histogram.py makes them)."""
    if a is None or b is None:
        other = a if b is None else b
        return (list(other[0]), float(other[1])) if other is not None else None
    if len(a[0]) != len(b[0]):
        return list(b[0]), float(b[1])  # other buckets: cannot add, keep the newer
    return [x + y for x, y in zip(a[0], b[0])], round(a[1] + b[1], 3)
