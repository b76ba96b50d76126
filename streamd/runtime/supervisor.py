"""Starts stage processes in order, watches exits and heartbeats, restarts with backoff, stops in reverse."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog
import zmq

from streamd.config.models import SupervisorConfig
from streamd.ipc import sockets
from streamd.ipc.messages import Heartbeat, heartbeat_decoder
from streamd.runtime.backoff import Backoff
from streamd.runtime.stage import EXIT_FAILED, StageSpec, run_stage

log = structlog.get_logger()


@dataclass
class StageHandle:
    spec: StageSpec
    critical: bool  # the daemon cannot work without it (inference, analytics, sinks)
    startup_timeout_s: float
    backoff: Backoff
    process: Any = None  # multiprocessing.Process
    state: str = "new"  # new | running | backing_off | stopping | stopped | finished | failed
    started_at: float = 0.0
    last_beat: float = 0.0
    restart_at: float = 0.0
    restarts: int = 0
    recent_crashes: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    heartbeat: Heartbeat | None = None


class Supervisor:
    def __init__(self, config: SupervisorConfig, ctx: zmq.Context, endpoints: sockets.Endpoints):
        self.config = config
        self.endpoints = endpoints
        self._control = sockets.pull(ctx, endpoints.control, hwm=10_000)
        self._mp = mp.get_context("spawn")
        self.stages: dict[str, StageHandle] = {}

    # --- lifecycle ---------------------------------------------------------------------------------

    def add(self, spec: StageSpec, critical: bool, startup_timeout_s: float = 120.0) -> None:
        if spec.name in self.stages:
            raise ValueError(f"stage {spec.name} already exists")
        self.stages[spec.name] = StageHandle(spec=spec, critical=critical, startup_timeout_s=startup_timeout_s,
                                             backoff=Backoff(self.config.restart))
        self._spawn(self.stages[spec.name])

    def _spawn(self, handle: StageHandle) -> None:
        process = self._mp.Process(target=run_stage, args=(handle.spec,), name=handle.spec.name, daemon=False)
        process.start()
        now = time.monotonic()
        handle.process, handle.state, handle.started_at, handle.last_beat = process, "running", now, 0.0
        handle.heartbeat = None
        log.info("stage_started", stage=handle.spec.name, pid=process.pid, restarts=handle.restarts)

    def wait_ready(self, names: list[str], timeout_s: float) -> list[str]:
        """Wait until each named stage sent its first heartbeat (it beats once set up); returns the laggards."""
        deadline = time.monotonic() + timeout_s
        waiting = list(names)
        while waiting and time.monotonic() < deadline:
            self.poll(0.1)
            waiting = [n for n in waiting if self.stages[n].heartbeat is None and self.stages[n].state != "failed"]
        return waiting

    def stop_stage(self, name: str, remove: bool = False) -> None:
        handle = self.stages.get(name)
        if handle is None:
            return
        if handle.process is not None and handle.process.is_alive():
            handle.state = "stopping"
            handle.process.terminate()
            handle.process.join(self.config.stop_timeout_s)
            if handle.process.is_alive():
                log.error("stage_kill", stage=name, reason=f"did not stop within {self.config.stop_timeout_s}s")
                handle.process.kill()
                handle.process.join(5)
        if handle.state not in ("failed", "finished"):
            handle.state = "stopped"
        if remove:
            del self.stages[name]

    def stop_all(self) -> None:
        """Stop in reverse start order: sources first, so each stage drains what upstream already sent."""
        for name in reversed(list(self.stages)):
            self.stop_stage(name)
        self._receive(0)

    # --- watching ------------------------------------------------------------------------------------

    def poll(self, timeout_s: float) -> None:
        self._receive(timeout_s)
        now = time.monotonic()
        for handle in self.stages.values():
            if handle.state == "running":
                self._check(handle, now)
            elif handle.state == "backing_off" and now >= handle.restart_at:
                handle.restarts += 1
                self._spawn(handle)

    def _receive(self, timeout_s: float) -> None:
        if not self._control.poll(int(timeout_s * 1000), zmq.POLLIN):
            return
        while True:
            try:
                beat = heartbeat_decoder.decode(self._control.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            handle = self.stages.get(beat.stage)
            if handle is not None and handle.process is not None and beat.pid == handle.process.pid:
                handle.last_beat = time.monotonic()
                handle.heartbeat = beat

    def _check(self, handle: StageHandle, now: float) -> None:
        code = handle.process.exitcode
        name = handle.spec.name
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
        if code == 0:
            handle.state = "finished"
            log.info("stage_finished", stage=name)
            return
        if code == EXIT_FAILED:
            handle.state = "failed"
            log.error("stage_failed", stage=name, reason="gave up (see its last error); not restarting")
            return
        handle.recent_crashes.append(now)
        window_start = now - self.config.crash_loop_window_s
        crashes = sum(1 for t in handle.recent_crashes if t >= window_start)
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if crashes >= self.config.crash_loop_restarts:
            handle.state = "failed"
            log.error("stage_crash_loop", stage=name, crashes=crashes, window_s=self.config.crash_loop_window_s,
                      last=how, action="not restarting; fix the cause (see the errors above) and restart streamd")
            return
        delay = handle.backoff.next_delay()
        handle.state, handle.restart_at = "backing_off", now + delay
        log.warning("stage_exited", stage=name, how=how, restart_in_s=round(delay, 2), crashes_in_window=crashes)

    # --- reporting -----------------------------------------------------------------------------------

    @property
    def critical_failure(self) -> str | None:
        for name, handle in self.stages.items():
            if handle.critical and handle.state == "failed":
                return name
        return None

    def stream_counters(self) -> dict[str, dict[str, Any]]:
        """Latest per-stream numbers, merged over every stage that reports the stream."""
        merged: dict[str, dict[str, Any]] = {}
        for handle in self.stages.values():
            if handle.heartbeat is None:
                continue
            for stream, counters in handle.heartbeat.streams.items():
                target = merged.setdefault(stream, {})
                for key in counters.__struct_fields__:
                    value = getattr(counters, key)
                    if value is not None:
                        target[key] = value
        return merged
