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
from dataclasses import dataclass
from typing import Any, Literal

import structlog
import zmq

from streamd.ipc import sockets
from streamd.ipc.messages import Heartbeat, StreamCounters, encoder
from streamd.errors import ModelError
from streamd.ipc.sockets import Endpoints
from streamd.redact import redact
from streamd.runtime.logging import configure_logging
from streamd.runtime.params import StageParams, params_hash

EXIT_OK = 0
EXIT_FAILED = 3  # the stage gave up for a reason a restart cannot fix (e.g. a source that keeps failing)
HEARTBEAT_INTERVAL_S = 1.0

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1


StageKind = Literal["decoder", "inference", "analytics", "sinks", "health"]
_ENTRIES: dict[str, str] = {
    "decoder": "streamd.decode.stage:DecoderStage",
    "inference": "streamd.infer.stage:InferenceStage",
    "analytics": "streamd.analytics.stage:AnalyticsStage",
    "sinks": "streamd.sinks.stage:SinksStage",
    "health": "streamd.health.stage:HealthStage",
}
_PREFIXES: dict[str, str] = {"decoder": "decode", "inference": "infer"}


@dataclass(frozen=True)
class StageSpec:
    """Everything a stage process needs, passed once at spawn (pickled by multiprocessing, never on a socket).

    Built afresh from the current config for every (re)spawn; see streamd/runtime/params.py.
    """

    kind: StageKind
    key: str  # decoder: stream name; inference: model key; analytics, sinks: ""
    endpoints: Endpoints
    params: StageParams
    log_level: str = "info"

    @property
    def name(self) -> str:
        """Unique: "decode-highway", "infer-1a2b3c4d5e", "analytics", "sinks"."""
        return stage_name(self.kind, self.key)

    @property
    def entry(self) -> str:
        """"module:Class" of the Stage subclass."""
        return _ENTRIES[self.kind]

    @property
    def config_hash(self) -> str:
        return params_hash(self.params)


def stage_name(kind: StageKind, key: str = "") -> str:
    return f"{_PREFIXES.get(kind, kind)}-{key}" if key else kind


class Stage(ABC):
    """One process of the pipeline. Subclasses implement :meth:`run` around a plain, testable class."""

    def __init__(self, spec: StageSpec, ctx: zmq.Context, stop: threading.Event):
        self.spec = spec
        self.ctx = ctx
        self.stop = stop
        self.log = structlog.get_logger()
        self._control = sockets.push(ctx, spec.endpoints.control, hwm=100)
        self._last_beat = 0.0
        self.params: StageParams = spec.params  # what the stage runs now (analytics, inference: replaced live)
        self._hashed: tuple[StageParams, str] | None = None

    def config_hash(self) -> str:
        if self._hashed is None or self._hashed[0] is not self.params:
            self._hashed = (self.params, params_hash(self.params))
        return self._hashed[1]

    @abstractmethod
    def run(self) -> int:
        """Main loop; returns the process exit code. Must call :meth:`beat` at least every second."""

    def counters(self) -> dict[str, StreamCounters]:
        return {}

    def close(self) -> None:
        """Release what the stage holds (files, databases); called after its last heartbeat."""

    def heartbeat_extra(self) -> dict[str, Any]:
        return {}

    def beat(self, force: bool = False, fatal_error: str | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < HEARTBEAT_INTERVAL_S:
            return
        self._last_beat = now
        msg = Heartbeat(stage=self.spec.name, pid=os.getpid(), streams=self.counters(), config_hash=self.config_hash(),
                        fatal_error=fatal_error, **self.heartbeat_extra())
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


def _report_fatal(spec: StageSpec, ctx: zmq.Context, error: str) -> None:
    """Last heartbeat of a dying stage: the supervisor shows the error beside the streams it affects."""
    sock = sockets.push(ctx, spec.endpoints.control, hwm=10)
    try:
        sock.send(encoder.encode(Heartbeat(stage=spec.name, pid=os.getpid(), streams={}, fatal_error=error[:2000])),
                  zmq.NOBLOCK)
    except zmq.ZMQError:
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
    except ModelError as exc:
        # A model that cannot load does not load on a restart either: give up, say why (the supervisor fails
        # the streams of that model only).
        error = redact(str(exc))
        log.error("stage_gave_up", error=error)
        _report_fatal(spec, ctx, error)
        code = EXIT_FAILED
    except Exception as exc:
        log.exception("stage_crashed")
        _report_fatal(spec, ctx, redact(f"{type(exc).__name__}: {exc}"))
        code = 1
    finally:
        ctx.destroy(linger=sockets.LINGER_MS)
    sys.exit(code)
