"""What every system is measured with: per-frame records, a process-tree CPU/memory sampler, machine facts.

A record is ``(stream index, t_decoded_ns, t_done_ns, pts_us, tracks)``; times are CLOCK_MONOTONIC
nanoseconds, which is one clock for every process on the host, so a frame decoded in one process and
published by another is timed without any clock correction. "Decoded" is when the system's decoder
handed the frame over; "done" is when its tracked result was published (streamd: received by a
ZeroMQ subscriber of its `zmq` sink; the other systems: serialised in-process, as their users would
send it on). ``pts_us`` is the frame's presentation time in the stream (-1 when unknown); ``tracks``
the number of tracked objects published for the frame (same work for every system, checked).

Latency from "decoded" misses the time a frame waits *before* decoding: a loop that reads its
sources one after another leaves frames queued in the socket, not in its own queues. ``lag`` closes
that gap for live sources: the camera sends frame k at ``t0 + pts_k``; ``t0`` is estimated per
stream as the smallest ``t_decoded - pts`` in the measured window (the frame that waited least), and
lag is ``t_done - (t0 + pts)``. It is a lower bound (a system never on time gets no credit for it).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

Record = tuple[int, int, int, int, int]  # stream, t_decoded_ns, t_done_ns, pts_us (-1: unknown), tracks


@dataclass
class RunRecords:
    """What one run of one system produced; written as JSON by the runner subprocesses."""

    system: str
    streams: int
    records: list[Record] = field(default_factory=list)
    decoded: list[int] = field(default_factory=list)  # frames each stream's decoder produced
    started_ns: int = 0  # first frame seen (measurement windows start from here)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"system": self.system, "streams": self.streams, "records": self.records,
                                    "decoded": self.decoded, "started_ns": self.started_ns, "error": self.error,
                                    "extra": self.extra}))

    @classmethod
    def load(cls, path: Path) -> RunRecords:
        d = json.loads(path.read_text())
        return cls(d["system"], d["streams"], [tuple(r) for r in d["records"]], d["decoded"],  # type: ignore[misc]
                   d["started_ns"], d.get("error"), d.get("extra", {}))

    def array(self) -> np.ndarray:
        """Records as an int64 array [n, 5]."""
        return np.asarray(self.records, dtype=np.int64).reshape(-1, 5)


def latency_stats(latencies_ms: np.ndarray) -> dict[str, float | None]:
    if latencies_ms.size == 0:
        return {"latency_p50_ms": None, "latency_p99_ms": None, "latency_max_ms": None}
    return {"latency_p50_ms": round(float(np.percentile(latencies_ms, 50)), 2),
            "latency_p99_ms": round(float(np.percentile(latencies_ms, 99)), 2),
            "latency_max_ms": round(float(latencies_ms.max()), 2)}


def lag_stats(rec: np.ndarray, reference: np.ndarray | None = None) -> dict[str, float | None]:
    """Camera-to-published lag of window records [n, 5] (see the module docstring). ``t0`` of each stream comes
    from ``reference`` (default: the window itself), e.g. all of a stream's records, a tighter lower bound."""
    lags = []
    reference = rec if reference is None else reference
    for stream in np.unique(rec[:, 0]):
        r = rec[(rec[:, 0] == stream) & (rec[:, 3] >= 0)]
        ref = reference[(reference[:, 0] == stream) & (reference[:, 3] >= 0)]
        if r.shape[0]:
            sent = r[:, 3] * 1000
            t0 = int((ref[:, 1] - ref[:, 3] * 1000).min()) if ref.shape[0] else int((r[:, 1] - sent).min())
            lags.append((r[:, 2] - (t0 + sent)) / 1e6)
    if not lags:
        return {"lag_p50_ms": None, "lag_p99_ms": None}
    lag = np.concatenate(lags)
    return {"lag_p50_ms": round(float(np.percentile(lag, 50)), 2), "lag_p99_ms": round(float(np.percentile(lag, 99)), 2)}


def live_stats(run: RunRecords, fps: float, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """Live sources: frames decoded in [start + warmup, start + warmup + duration] of every stream.

    ``drop_pct`` compares the frames processed in the window with the frames the cameras sent in it
    (fps x duration x streams): a frame dropped by any part (decoder too slow, newest-frame policy,
    a stream stalled) counts, whatever the system calls it.
    """
    t0 = run.started_ns + int(warmup_s * 1e9)
    t1 = t0 + int(duration_s * 1e9)
    rec = run.array()
    rec = rec[(rec[:, 1] >= t0) & (rec[:, 1] < t1)]
    expected = fps * duration_s * run.streams
    processed = int(rec.shape[0])
    per_stream = [int((rec[:, 0] == i).sum()) for i in range(run.streams)]
    return {
        "frames_processed": processed, "frames_expected": int(round(expected)),
        "fps_processed": round(processed / duration_s, 2),
        "drop_pct": round(max(0.0, 100.0 * (1 - processed / expected)), 2) if expected else None,
        "min_stream_fps": round(min(per_stream) / duration_s, 2) if per_stream else 0.0,
        **latency_stats((rec[:, 2] - rec[:, 1]) / 1e6), **lag_stats(rec),
        "tracks_per_frame": round(float(rec[:, 4].mean()), 2) if processed else None,
        "window_ns": [t0, t1],
    }


def throughput_stats(run: RunRecords, frames_in_files: int) -> dict[str, Any]:
    """Files, every frame, as fast as possible: frames per second from the first decode to the last result."""
    rec = run.array()
    if rec.shape[0] == 0:
        return {"frames_processed": 0, "frames_in_files": frames_in_files, "seconds": None, "fps_processed": None,
                "missing_frames": frames_in_files, "tracks_per_frame": None, **latency_stats(np.empty(0)),
                "window_ns": [0, 0]}
    start, end = int(rec[:, 1].min()), int(rec[:, 2].max())
    seconds = (end - start) / 1e9
    return {"frames_processed": int(rec.shape[0]), "frames_in_files": frames_in_files, "seconds": round(seconds, 3),
            "fps_processed": round(rec.shape[0] / seconds, 2) if seconds > 0 else None,
            "missing_frames": max(0, frames_in_files - int(rec.shape[0])),
            "tracks_per_frame": round(float(rec[:, 4].mean()), 2),
            **latency_stats((rec[:, 2] - rec[:, 1]) / 1e6), "window_ns": [start, end]}


def _covered(t: np.ndarray, t0_ns: int, t1_ns: int) -> tuple[float, float]:
    """[t0, t1] clipped to the sampled span; a window the samples miss (a run shorter than the sampling
    interval, or one that ended after the last sample the exiting tree allowed) falls back to the whole span."""
    t0, t1 = max(float(t0_ns), t[0]), min(float(t1_ns), t[-1])
    return (t0, t1) if t1 > t0 else (float(t[0]), float(t[-1]))


class TreeMonitor:
    """Samples CPU seconds and RSS of a process and all its descendants, in a thread, twice a second.

    CPU is summed from each process's own user+system time (its last sample stays counted after it
    exits), so ``cpu_pct(t0, t1)`` is the tree's CPU use in a window, in % of one core.
    """

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples: list[tuple[int, float, int]] = []  # t_ns, cpu seconds so far, rss bytes now
        self.by_pid: list[tuple[int, dict[int, float]]] = []  # t_ns, pid -> its cpu seconds so far
        self._cpu: dict[int, float] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-monitor", daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for p in procs:
            proc = self._procs.setdefault(p.pid, p)  # keep one Process object per pid (cheaper, stable)
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    self._cpu[p.pid] = t.user + t.system
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
        now = time.monotonic_ns()
        self.samples.append((now, sum(self._cpu.values()), rss))
        self.by_pid.append((now, dict(self._cpu)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)
        self._sample()

    def cpu_pct(self, t0_ns: int, t1_ns: int) -> float | None:
        """CPU use in [t0, t1] (% of one core); the tree's CPU seconds are interpolated between samples."""
        if len(self.samples) < 2 or t1_ns <= t0_ns:
            return None
        t = np.asarray([s[0] for s in self.samples], dtype=np.float64)
        cpu = np.asarray([s[1] for s in self.samples])
        t0, t1 = _covered(t, t0_ns, t1_ns)
        used = float(np.interp(t1, t, cpu) - np.interp(t0, t, cpu))
        return round(100.0 * used / ((t1 - t0) / 1e9), 1)

    def cpu_pct_by_pid(self, t0_ns: int, t1_ns: int) -> dict[int, float]:
        """Each process's CPU use in [t0, t1] (% of one core), interpolated between samples like cpu_pct."""
        if len(self.by_pid) < 2:
            return {}
        t = np.asarray([s[0] for s in self.by_pid], dtype=np.float64)
        t0, t1 = _covered(t, t0_ns, t1_ns)
        pids = {pid for _, cpu in self.by_pid for pid in cpu}
        out = {}
        for pid in pids:
            series = np.asarray([cpu.get(pid, 0.0) for _, cpu in self.by_pid])
            used = float(np.interp(t1, t, series) - np.interp(t0, t, series))
            out[pid] = round(100.0 * used / ((t1 - t0) / 1e9), 1)
        return out

    def peak_rss_mb(self) -> float | None:
        return round(max(s[2] for s in self.samples) / 2**20, 1) if self.samples else None


def machine_info() -> dict[str, Any]:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "onnxruntime": onnxruntime.__version__}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def counting_stats(run: RunRecords, warmup_s: float, scene_s: float) -> dict[str, Any]:
    """S4: lag (lag_stats) of the frames decoded from ``warmup_s`` after the last stream's first published frame
    to the end (every stream running: a start-up backlog still draining then counts), each stream's ``t0``
    from all its frames (a stream that never caught up gets no credit for it); and the frames each stream
    analysed over its whole scene."""
    rec = run.array()
    per_stream = [rec[rec[:, 0] == i] for i in range(run.streams)]
    analysed = [int(r.shape[0]) for r in per_stream]
    out: dict[str, Any] = {
        "frames_processed": int(rec.shape[0]), "frames_analysed_per_stream": analysed,
        "analysed_fps_min": round(min(analysed) / scene_s, 2) if analysed and scene_s else None,
        "tracks_per_frame": round(float(rec[:, 4].mean()), 2) if rec.shape[0] else None,
    }
    if any(a == 0 for a in analysed) or not analysed:
        return {**out, **latency_stats(np.empty(0)), "lag_p50_ms": None, "lag_p99_ms": None, "window_ns": [0, 0],
                "lag_frames": 0}
    t0 = max(int(r[:, 2].min()) for r in per_stream) + int(warmup_s * 1e9)
    t1 = int(rec[:, 2].max())
    window = rec[rec[:, 1] >= t0]
    out.update(latency_stats((window[:, 2] - window[:, 1]) / 1e6) if window.shape[0] else latency_stats(np.empty(0)))
    out.update(lag_stats(window, rec) if window.shape[0] else {"lag_p50_ms": None, "lag_p99_ms": None})
    out["lag_frames"] = int(window.shape[0])
    out["window_ns"] = [t0, max(t1, t0 + 1)]
    return out
