"""The daemon's state as the API sees it: one immutable dict, rebuilt by the supervisor's watch loop a few
times a second and swapped in whole, so HTTP threads read it without locks."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from streamd.config.models import DaemonConfig
from streamd.ipc.messages import Heartbeat
from streamd.redact import redact

FPS_WINDOW_S = 5.0


class FrameRate:
    """Frames per second of each stream over the last few seconds, from its frame counter.

    The counter only grows, except when the stage that counts restarts and starts over: a decrease is taken as
    such a reset (the frames counted since are new frames, added to the running total), so the rate is never
    negative and does not spike when the counter is back. A clock that steps back starts the window over.
    """

    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._last: dict[str, int] = {}  # stream -> last raw counter value
        self._total: dict[str, int] = {}  # stream -> frames counted, resets folded in

    def update(self, stream: str, frames: int, now: float) -> float:
        samples = self._samples.setdefault(stream, deque(maxlen=64))
        last = self._last.get(stream)
        total = self._total.get(stream, 0)
        if last is None:
            total = frames
        elif frames >= last:
            total += frames - last
        else:
            total += max(frames, 0)  # the counter started over: what it counts now came after the reset
        self._last[stream], self._total[stream] = frames, total
        if samples and now < samples[-1][0]:
            samples.clear()
        samples.append((now, total))
        while len(samples) > 2 and samples[0][0] < now - FPS_WINDOW_S:
            samples.popleft()
        (t0, f0), (t1, f1) = samples[0], samples[-1]
        return round(max(0, f1 - f0) / (t1 - t0), 2) if t1 > t0 else 0.0

    def forget(self, keep: set[str]) -> None:
        for stream in list(self._samples):
            if stream not in keep:
                del self._samples[stream]
                self._last.pop(stream, None)
                self._total.pop(stream, None)


def build(config: DaemonConfig, counters: dict[str, dict[str, Any]], fps: dict[str, float],
          rings: dict[str, str], queue_depth: dict[str, int], stages: dict[str, dict[str, Any]],
          heartbeats: dict[str, Heartbeat], failed: dict[str, str], reload_status: dict[str, Any],
          ready: bool) -> dict[str, Any]:
    streams = {}
    for stream in config.active_streams:
        c = counters.get(stream.name, {})
        streams[stream.name] = {
            "url": redact(stream.url), "kind": stream.kind, "pipeline": stream.pipeline,
            "state": "failed" if stream.name in failed else c.get("state", "starting"),
            "fps": fps.get(stream.name, 0.0),
            "frames_decoded": c.get("frames_decoded", 0), "frames_analysed": c.get("frames_analysed", 0),
            "frames_skipped": c.get("frames_skipped", 0), "detect_fps": stream.detect_fps,
            "dropped": {"stale": c.get("dropped_stale", 0), "overwritten": c.get("dropped_overwritten", 0)},
            "reconnects": c.get("reconnects", 0),
            "last_error": _redacted(failed.get(stream.name) or c.get("last_error")),
            "latency_p50_ms": c.get("latency_p50_ms"), "latency_p99_ms": c.get("latency_p99_ms"),
            "stage_p99_ms": c.get("stage_p99_ms"),
            "line_counts": c.get("line_counts") or {}, "zone_occupancy": c.get("zone_occupancy") or {},
            "events": c.get("crossings", 0),
            "queue_depth": queue_depth.get(stream.name),
            "ring": rings.get(stream.name),
            "health": c.get("health") or {},  # camera health: check -> ok | warning | failed (health stage)
            # a file that ended before its container said it would, or packets the decoder refused
            "warning": _redacted(c.get("warning")),
            "source": {"frames_expected": c.get("frames_expected"), "truncated": bool(c.get("truncated")),
                       "corrupt_packets": c.get("corrupt_packets", 0), "corrupt_frames": c.get("corrupt_frames", 0)},
        }
    return {"t": time.time(), "ready": ready, "streams": streams, "stages": stages, "reload": dict(reload_status),
            "counters": counters, "heartbeats": heartbeats, "sinks": sink_health(heartbeats)}


def sink_health(heartbeats: dict[str, Heartbeat]) -> dict[str, dict[str, Any]]:
    """Sink display name -> {state: up|down, error, dropped, failures, since}, from the sinks stage's heartbeat."""
    out: dict[str, dict[str, Any]] = {}
    for beat in heartbeats.values():
        for name, health in (beat.sinks or {}).items():
            out[name] = {"state": health.state, "error": _redacted(health.error), "dropped": health.dropped,
                         "failures": health.failures, "since": health.since}
    return out


def _redacted(text: Any) -> Any:
    return redact(text) if isinstance(text, str) else text
