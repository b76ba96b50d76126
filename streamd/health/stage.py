"""Health stage: one process for every stream, beside the pipeline (never on its hot path).

About ``sample_fps`` times a second per stream it reads the newest frame of the stream's ring (only when the
decoder wrote a new one: a stream that stopped is the decoder's business), downscales it to a small grey copy
and runs the checks (streamd/health/checks.py). Each state change is a ``CameraHealth`` event PUSHed to the
sinks, a ``camera_health`` log line and an unhealthy interval in the count store's file; the heartbeat carries
every check's state per stream. It takes ``Reconfigure`` (streams added, removed, restarted on a new ring) and
``HealthReset`` (learn the reference again) on its own endpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import zmq

from streamd.errors import RingError
from streamd.health.checks import CameraHealth as Checks
from streamd.health.checks import Change, sample_of
from streamd.health.store import HealthStore
from streamd.ipc import sockets
from streamd.ipc.messages import (CameraHealth, DetectionTally, HealthReset, Reconfigure, StreamCounters, encoder,
                                  pipeline_decoder)
from streamd.ipc.ring import FrameRing
from streamd.runtime.params import HealthParams, HealthStream, expect, params_from_json
from streamd.runtime.stage import EXIT_OK, Stage

TOUCH_EVERY_S = 10.0  # how often open unhealthy intervals are marked alive in the store
RING_RETRY_S = 1.0


@dataclass
class Watched:
    """One stream as the health stage follows it."""

    config: HealthStream
    checks: Checks
    ring: FrameRing | None = None
    last_seq: int = 0
    next_at: float = 0.0  # monotonic time of the next sample
    samples: int = 0


class HealthStage(Stage):
    """params: HealthParams (streamd/runtime/params.py)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.health_params = expect(self.spec.params, HealthParams)
        self.inbox = sockets.pull(self.ctx, self.spec.endpoints.health, hwm=100)
        self.out = sockets.push(self.ctx, self.spec.endpoints.sinks, hwm=1000)
        self.store = HealthStore(self.health_params.store)
        closed = self.store.recover()
        if closed:
            self.log.info("health_intervals_recovered", closed=closed)
        self.watched: dict[str, Watched] = {}
        self._apply(self.health_params)
        self._touched = time.monotonic()

    # --- parameters ------------------------------------------------------------------------------------

    def _apply(self, params: HealthParams) -> None:
        now = time.time()
        for name in list(self.watched):
            if name not in params.streams:
                self._forget(name, now)
        for name, stream in params.streams.items():
            current = self.watched.get(name)
            if current is not None and current.config.health == stream.health:
                if current.config.ring != stream.ring:  # restarted on a new ring: same camera, same references
                    self._detach(current)
                    current.config = stream
                continue
            if current is not None:
                self._forget(name, now)
            self.watched[name] = Watched(config=stream, checks=Checks(stream.health))
        self.params = self.health_params = params

    def _forget(self, name: str, now: float) -> None:
        watched = self.watched.pop(name)
        self._detach(watched)
        for check in watched.checks.unhealthy():
            self.store.close_interval(name, check, now)

    @staticmethod
    def _detach(watched: Watched) -> None:
        if watched.ring is not None:
            watched.ring.close()
        watched.ring, watched.last_seq = None, 0

    def _handle(self, raw: bytes) -> None:
        msg = pipeline_decoder.decode(raw)
        if isinstance(msg, Reconfigure):
            params = params_from_json(HealthParams, msg.params)
            if params != self.health_params:
                self._apply(params)
                self.log.info("reconfigured", streams=sorted(params.streams))
                self.beat(force=True)  # the supervisor starts the reload's new streams once it sees the new hash
        elif isinstance(msg, DetectionTally):
            watched = self.watched.get(msg.stream)
            if watched is not None:
                changes = watched.checks.update_detections(msg.detections, msg.t_decoded_ns / 1e9)
                if changes:
                    self._publish(msg.stream, watched, changes, time.time())
        elif isinstance(msg, HealthReset):
            watched = self.watched.get(msg.stream)
            if watched is None:
                return
            self.log.info("camera_health_reset", stream=msg.stream, reason="reference learned again on request")
            self._publish(msg.stream, watched, watched.checks.reset(), time.time())

    # --- sampling --------------------------------------------------------------------------------------

    def _sample(self, name: str, watched: Watched, now: float) -> None:
        watched.next_at = now + 1.0 / watched.config.health.sample_fps
        if watched.ring is None:
            try:
                watched.ring = FrameRing.attach(watched.config.ring)
            except RingError:
                watched.next_at = now + RING_RETRY_S  # not created yet, or the stream is being restarted
                return
        ring = watched.ring
        seq = ring.write_seq
        if seq <= 0 or seq == watched.last_seq:
            return  # no new frame: frozen means the same picture while frames keep arriving
        got = ring.read(seq)
        if got is None:
            return
        meta, pixels = got
        sample = sample_of(pixels)
        if not ring.still_valid(seq):
            return  # overwritten while we read it: try the next one
        watched.last_seq = seq
        watched.samples += 1
        changes = watched.checks.update(sample, meta.t_decoded_ns / 1e9)
        if changes:
            self._publish(name, watched, changes, meta.wall_ts or time.time())

    def _publish(self, stream: str, watched: Watched, changes: list[Change], wall_ts: float) -> None:
        states = watched.checks.states()
        for change in changes:
            detail = {k: float(v) for k, v in change.reading.detail.items()}
            if change.reading.value is not None:
                detail.setdefault("value", float(change.reading.value))
            event = CameraHealth(id=f"{stream}/health/{change.check}/{int(wall_ts * 1000)}", stream=stream,
                                 check=change.check, state=change.state, previous=change.previous,
                                 ts=round(wall_ts, 3), checks=states, detail=detail)
            try:
                self.out.send(encoder.encode(event), zmq.NOBLOCK)
            except zmq.Again:
                self.log.warning("camera_health_event_dropped", stream=stream, reason="sinks not receiving")
            log = self.log.info if change.state == "ok" else self.log.warning
            log("camera_health", stream=stream, check=change.check, state=change.state, previous=change.previous,
                **detail)
            if change.state == "ok":
                self.store.close_interval(stream, change.check, wall_ts)
            else:
                self.store.open(stream, change.check, change.state, wall_ts)

    # --- loop ------------------------------------------------------------------------------------------

    def counters(self) -> dict[str, StreamCounters]:
        return {name: StreamCounters(health=w.checks.states()) for name, w in self.watched.items()}

    def run(self) -> int:
        while not self.stop.is_set():
            now = time.monotonic()
            for name, watched in list(self.watched.items()):
                if now >= watched.next_at:
                    self._sample(name, watched, now)
            due = min((w.next_at for w in self.watched.values()), default=now + 0.5)
            timeout_ms = int(max(0.0, min(due - time.monotonic(), 0.5)) * 1000)
            if self.inbox.poll(timeout_ms, zmq.POLLIN):
                while True:
                    try:
                        raw = self.inbox.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(raw)
            if now - self._touched >= TOUCH_EVERY_S:
                self._touched = now
                self.store.touch()
            self.beat()
        return EXIT_OK

    def close(self) -> None:
        now = time.time()
        for watched in self.watched.values():
            self._detach(watched)
        self.store.touch(now)
        self.store.close()
        self.inbox.close(linger=0)
