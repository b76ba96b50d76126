"""Base of every stage process: per-process setup done once, heartbeats, and the spawn entry point."""

from __future__ import annotations

import ctypes
import faulthandler
import importlib
import os
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import structlog
import zmq

from streamd.ipc import sockets
from streamd.ipc.messages import Heartbeat, StreamCounters, encoder
from streamd.ipc.sockets import Endpoints
from streamd.runtime.logging import configure_logging

EXIT_OK = 0
EXIT_FAILED = 3  # the stage gave up for a reason a restart cannot fix (e.g. a source that keeps failing)
HEARTBEAT_INTERVAL_S = 1.0

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class StageSpec:
    """Everything a stage process needs, passed once at spawn (pickled by multiprocessing, never on a socket)."""

    name: str  # unique: "decode:highway", "infer:1a2b3c", "analytics", "sinks"
    entry: str  # "module:Class" of the Stage subclass
    endpoints: Endpoints
    log_level: str = "info"
    params: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """One process of the pipeline. Subclasses implement :meth:`run` around a plain, testable class."""

    def __init__(self, spec: StageSpec, ctx: zmq.Context, stop: threading.Event):
        self.spec = spec
        self.ctx = ctx
        self.stop = stop
        self.log = structlog.get_logger()
        self._control = sockets.push(ctx, spec.endpoints.control, hwm=100)
        self._last_beat = 0.0

    @abstractmethod
    def run(self) -> int:
        """Main loop; returns the process exit code. Must call :meth:`beat` at least every second."""

    def counters(self) -> dict[str, StreamCounters]:
        return {}

    def close(self) -> None:
        """Release what the stage holds (files, databases); called after its last heartbeat."""

    def heartbeat_extra(self) -> dict[str, Any]:
        return {}

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < HEARTBEAT_INTERVAL_S:
            return
        self._last_beat = now
        msg = Heartbeat(stage=self.spec.name, pid=os.getpid(), streams=self.counters(), **self.heartbeat_extra())
        try:
            self._control.send(encoder.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            pass  # supervisor busy or restarting; the next beat carries the same numbers

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds`` while heartbeating; returns early on stop."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.stop.wait(min(remaining, HEARTBEAT_INTERVAL_S / 2))
            self.beat()


def _prctl(option: int, value: int | bytes) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: best effort only
        pass


def run_stage(spec: StageSpec) -> None:
    """multiprocessing entry point of every stage process."""
    _prctl(_PR_SET_NAME, f"streamd-{spec.name}"[:15].encode())
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # never outlive the supervisor
    faulthandler.enable()
    configure_logging(spec.log_level, stage=spec.name, pid=os.getpid())
    stop = threading.Event()
    # Ctrl-C reaches the whole process group; only the supervisor reacts, then stops stages in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    module_name, class_name = spec.entry.split(":")
    stage_class = getattr(importlib.import_module(module_name), class_name)
    ctx = zmq.Context()
    log = structlog.get_logger()
    code = 1
    try:
        stage = stage_class(spec, ctx, stop)
        stage.beat(force=True)  # "ready": the supervisor starts upstream stages only after this
        code = stage.run()
        stage.beat(force=True)  # final numbers for the supervisor's summary
        stage.close()
    except Exception:
        log.exception("stage_crashed")
        code = 1
    finally:
        ctx.destroy(linger=sockets.LINGER_MS)
    sys.exit(code)
