"""What the daemon reports: the API snapshot, periodic stats lines and the run summary, built from the
supervisor's stage views, the stream registry and the reload status."""

from __future__ import annotations

import time
from typing import Any

import structlog

from streamd.api import snapshot as snapshots
from streamd.control.specs import RunningState
from streamd.errors import RingError
from streamd.ipc.ring import FrameRing
from streamd.runtime.supervisor import Supervisor

log = structlog.get_logger()


class StatusBuilder:
    def __init__(self, state: RunningState, supervisor: Supervisor):
        self.state = state
        self.supervisor = supervisor
        self._fps = snapshots.FrameRate()
        self._ring_views: dict[str, FrameRing] = {}  # stream -> its ring attached read-only, for queue depth
        self._previous: dict[str, int] = {}
        self._previous_t = time.monotonic()

    def stream_counters(self) -> dict[str, dict[str, Any]]:
        """Merged per-stream counters of the streams in the running config (removed ones drop out)."""
        active = {s.name for s in self.state.config.active_streams}
        return {k: v for k, v in self.supervisor.stream_counters().items() if k in active}

    def snapshot(self, counters: dict[str, dict[str, Any]], reload_status: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        fps = {name: self._fps.update(name, int(c.get("frames_analysed", 0)), now) for name, c in counters.items()}
        self._fps.forget(set(counters))
        views = list(self.supervisor.views())
        stages = {v.name: {"kind": v.kind, "state": v.state, "pid": v.pid, "restarts": v.restarts,
                           "critical": v.critical, "config_hash": v.config_hash, "expected_config_hash": v.expected_hash,
                           "config_current": v.config_hash == v.expected_hash, "last_error": v.last_error}
                  for v in views}
        core_ready = all(v.ready for v in views if v.critical)
        heartbeats = {v.name: v.heartbeat for v in views if v.heartbeat is not None}
        return snapshots.build(self.state.config, counters, fps, self.state.streams.rings(), self._queue_depths(),
                               stages, heartbeats, self.state.streams.failures(), reload_status, core_ready)

    def _queue_depths(self) -> dict[str, int]:
        depths = {}
        rings = self.state.streams.rings()
        for stream in [s for s in self._ring_views if s not in rings]:
            self._ring_views.pop(stream).close()
        for stream, name in rings.items():
            view = self._ring_views.get(stream)
            if view is None or view.name != name:
                if view is not None:
                    view.close()
                    del self._ring_views[stream]
                try:
                    view = self._ring_views[stream] = FrameRing.attach(name)
                except (RingError, OSError):  # gone, or being replaced by a restart: no depth this tick
                    continue
            depths[stream] = max(0, view.write_seq - view.released_seq)
        return depths

    def log_stats(self, counters: dict[str, dict[str, Any]]) -> None:
        now = time.monotonic()
        seen = {}
        for stream, c in sorted(counters.items()):
            frames = int(c.get("frames_analysed", 0))
            seen[stream] = frames
            # a counter that went down belongs to a stream a reload restarted: rate from zero
            fps = max(0, frames - self._previous.get(stream, 0)) / max(now - self._previous_t, 1e-6)
            log.info("stream_stats", stream=stream, state=c.get("state"), fps=round(fps, 1), frames=frames,
                     dropped=int(c.get("dropped_stale", 0)) + int(c.get("dropped_overwritten", 0)),
                     reconnects=c.get("reconnects", 0), latency_p50_ms=c.get("latency_p50_ms"),
                     latency_p99_ms=c.get("latency_p99_ms"), stage_p99_ms=c.get("stage_p99_ms"),
                     crossings=c.get("crossings", 0), last_error=c.get("last_error"))
        for view in self.supervisor.views("inference"):
            hb = view.heartbeat
            if hb is not None:
                log.info("inference_stats", stage=view.name, batches=hb.batches,
                         mean_batch_size=round(hb.mean_batch_size, 2), infer_ms_p50=round(hb.infer_ms_p50, 2))
        self._previous, self._previous_t = seen, now

    def log_summary(self, counters: dict[str, dict[str, Any]]) -> None:
        failed = self.state.streams.failures()
        for stream in sorted({s.name for s in self.state.config.active_streams}):
            c = counters.get(stream, {})
            log.info("run_summary", stream=stream, state="failed" if stream in failed else c.get("state"),
                     frames_decoded=c.get("frames_decoded", 0), frames_analysed=c.get("frames_analysed", 0),
                     frames_skipped=c.get("frames_skipped", 0), dropped_stale=c.get("dropped_stale", 0), dropped_overwritten=c.get("dropped_overwritten", 0),
                     crossings=c.get("crossings", 0), events_written=c.get("events_written", 0),
                     latency_p50_ms=c.get("latency_p50_ms"), latency_p99_ms=c.get("latency_p99_ms"),
                     stage_p99_ms=c.get("stage_p99_ms"), error=failed.get(stream),
                     frames_expected=c.get("frames_expected"), truncated=bool(c.get("truncated")),
                     corrupt_packets=c.get("corrupt_packets", 0), corrupt_frames=c.get("corrupt_frames", 0),
                     warning=c.get("warning"))

    def close(self) -> None:
        for view in self._ring_views.values():
            view.close()
        self._ring_views.clear()
