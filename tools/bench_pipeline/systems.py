"""Running each system under test on a set of sources and collecting its per-frame records.

Every system runs as its own process tree (what a user would start), watched by measure.TreeMonitor:
streamd as `streamd run CONFIG` (its zmq sink subscribed from here), ultralytics and the plain loop
as runner scripts (ultra_loop.py in the training interpreter, plain_loop.py in this one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml
import zmq

from tools.bench_pipeline.measure import RunRecords, TreeMonitor

REPO = Path(__file__).resolve().parents[2]
SYSTEMS = ("streamd", "ultralytics", "plain")
# OpenCV's FFmpeg backend: RTSP over TCP, as streamd reads it (same transport for every system)
OPENCV_ENV = {"OPENCV_FFMPEG_CAPTURE_OPTIONS": "rtsp_transport;tcp"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspServer:
    """tools/bench_pipeline/rtsp_file_server.py (system python with GStreamer) serving ``mounts`` cameras."""

    SCRIPT = Path(__file__).with_name("rtsp_file_server.py")

    def __init__(self, file: Path, mounts: int, python: str = "/usr/bin/python3"):
        self.port = free_port()
        self.proc = subprocess.Popen([python, str(self.SCRIPT), "--port", str(self.port), "--file", str(file),
                                      "--mounts", str(mounts)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "READY":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.kill()
            raise RuntimeError(f"RTSP server did not start ({python} {self.SCRIPT}): {line}{err[-1000:]}")
        self.urls = [f"rtsp://127.0.0.1:{self.port}/cam{i}" for i in range(mounts)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> RtspServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rtsp_available(python: str = "/usr/bin/python3") -> str | None:
    """None when the GStreamer RTSP server can run here, else why not."""
    if not Path(python).exists():
        return f"{python} not found"
    probe = subprocess.run([python, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True, text=True)
    if probe.returncode != 0:
        return (f"{python} cannot load GstRtspServer (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
                f"gstreamer1.0-plugins-good gstreamer1.0-plugins-bad): {probe.stderr.strip()[-300:]}")
    return None


def train_python() -> str | None:
    """The interpreter with ultralytics (STREAMD_TRAIN_PYTHON, else .venv-train), or None."""
    python = os.environ.get("STREAMD_TRAIN_PYTHON") or str(REPO / ".venv-train" / "bin" / "python")
    if not Path(python).exists():
        return None
    ok = subprocess.run([python, "-c", "import ultralytics, lap, onnxruntime"], capture_output=True).returncode == 0
    return python if ok else None


@dataclass
class Job:
    system: str
    sources: list[str]
    model: Path
    imgsz: int
    live: bool
    warmup_s: float
    duration_s: float
    workdir: Path
    timeout_s: float = 600.0
    max_batch: int = 4
    intra_op_threads: int = 0
    spin: bool = False
    train_python: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    run: RunRecords
    monitor: TreeMonitor
    wall_s: float
    log_tail: str = ""


def _terminate(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_runner(job: Job) -> Outcome:
    """plain or ultralytics: a runner script writes its records; we watch its CPU and memory."""
    out = job.workdir / f"{job.system}.json"
    python = job.train_python if job.system == "ultralytics" else sys.executable
    if python is None:
        raise RuntimeError("ultralytics needs the training interpreter: pip install -e '.[train]' into .venv-train "
                           "or set STREAMD_TRAIN_PYTHON")
    module = "tools.bench_pipeline.ultra_loop" if job.system == "ultralytics" else "tools.bench_pipeline.plain_loop"
    cmd = [python, "-m", module, "--model", str(job.model), "--imgsz", str(job.imgsz), "--out", str(out)]
    for s in job.sources:
        cmd += ["--source", s]
    if job.live:
        cmd += ["--live", "--warmup", str(job.warmup_s), "--duration", str(job.duration_s)]
    log = job.workdir / f"{job.system}.log"
    started = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **OPENCV_ENV})
        with TreeMonitor(proc.pid) as monitor:
            try:
                proc.wait(job.timeout_s)
            except subprocess.TimeoutExpired:
                pass
            finally:  # also on Ctrl-C: never leave a runner behind
                _terminate(proc)
    wall = time.monotonic() - started
    tail = log.read_text(errors="replace")[-3000:]
    if out.exists():
        run = RunRecords.load(out)
    else:
        run = RunRecords(job.system, len(job.sources), error=f"runner exited {proc.returncode} without results")
    if proc.returncode not in (0, None) and run.error is None:
        run.error = f"runner exited {proc.returncode}"
    return Outcome(run, monitor, wall, tail)


class _ZmqCollector:
    """Subscribes to streamd's zmq sink; one measure.Record per `tracks` message (received = published)."""

    def __init__(self, endpoint: str, names: list[str]):
        self.index = {n: i for i, n in enumerate(names)}
        self.records: list[tuple[int, int, int, int, int]] = []
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.RCVHWM, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"tracks.")
        self._sub.connect(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zmq-collector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = msgspec.json.Decoder()
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            while True:
                try:
                    _, payload = self._sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.monotonic_ns()
                msg = decoder.decode(payload)
                self.records.append((self.index.get(msg["stream"], -1), int(msg["t_decoded_ns"]), now,
                                     int(msg["pts_s"] * 1e6), len(msg["tracks"])))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sub.close(linger=0)
        self._ctx.term()


def streamd_config(job: Job, names: list[str], endpoint: str, width: int, height: int) -> dict[str, Any]:
    return {
        "streams": [{"name": n, "url": s, "pipeline": "bench", "realtime": False if not job.live else None}
                    for n, s in zip(names, job.sources)],
        "pipelines": {"bench": {
            "model": str(job.model.resolve()), "confidence": 0.25,
            "lines": [{"name": "exit", "points": [[width / 2, height], [width / 2, 0]], "anchor": "center"}],
        }},
        "sinks": [{"type": "zmq", "endpoint": endpoint, "include_tracks": True}],
        "inference": {"max_batch": job.max_batch, "max_wait_ms": 5, "intra_op_threads": job.intra_op_threads,
                      "spin": job.spin},
        "supervisor": {"stats_interval_s": 5},
        "counts": {"path": str(job.workdir / "counts.db")},
    }


def run_streamd(job: Job, width: int, height: int) -> Outcome:
    names = [f"cam{i}" for i in range(len(job.sources))]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = streamd_config(job, names, endpoint, width, height)
    for stream in config["streams"]:
        if stream["realtime"] is None:
            del stream["realtime"]
    path = (job.workdir / "streamd.yaml").resolve()
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = job.workdir / "streamd.log"
    collector = _ZmqCollector(endpoint, names)
    streamd = shutil.which("streamd", path=str(Path(sys.executable).parent)) or ""
    cmd = [streamd, "run", str(path)] if streamd else [sys.executable, "-m", "streamd", "run", str(path)]
    run = RunRecords("streamd", len(names))
    started = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=job.workdir)
        with TreeMonitor(proc.pid) as monitor:
            try:
                if job.live:
                    deadline = time.monotonic() + 120
                    while not collector.records and time.monotonic() < deadline and proc.poll() is None:
                        time.sleep(0.05)
                    if collector.records:
                        first = collector.records[0][1]
                        end_ns = first + int((job.warmup_s + job.duration_s + 0.5) * 1e9)
                        while time.monotonic_ns() < end_ns and proc.poll() is None:
                            time.sleep(0.1)
                    elif proc.poll() is not None:
                        run.error = f"streamd exited {proc.returncode} before publishing a frame"
                    else:
                        run.error = "no frame came out of streamd within 120 s"
                    _terminate(proc)
                else:
                    try:
                        proc.wait(job.timeout_s)
                    except subprocess.TimeoutExpired:
                        run.error = f"not finished within {job.timeout_s} s"
                        _terminate(proc)
            finally:
                if proc.poll() is None:
                    _terminate(proc)
    time.sleep(0.2)  # the last messages of the drain
    collector.close()
    wall = time.monotonic() - started
    run.records = sorted(collector.records, key=lambda r: r[1])
    run.started_ns = run.records[0][1] if run.records else 0
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    summaries = {e["stream"]: e for e in events if e.get("event") == "run_summary"}
    stage_pids = {int(e["pid"]): str(e["stage"]) for e in events if isinstance(e.get("pid"), int) and e.get("stage")}
    stage_pids.setdefault(proc.pid, "supervisor")
    run.decoded = [int(summaries.get(n, {}).get("frames_decoded") or 0) for n in names]
    run.extra = {
        "frames_analysed": sum(int(s.get("frames_analysed") or 0) for s in summaries.values()),
        "dropped_by_streamd": sum(int(s.get("dropped_stale") or 0) + int(s.get("dropped_overwritten") or 0)
                                  for s in summaries.values()),
        "sinks_latency_p99_ms": max((s.get("latency_p99_ms") or 0 for s in summaries.values()), default=None),
        "stage_p99_ms": [s.get("stage_p99_ms") for s in summaries.values()],
        "mean_batch_size": [e.get("mean_batch_size") for e in events if e.get("event") == "inference_stats"][-1:],
        "exit_code": proc.returncode,
        "stage_pids": stage_pids,  # for the per-stage CPU split, computed over the measured window by the caller
    }
    if proc.returncode not in (0, -signal.SIGTERM) and run.error is None:
        run.error = f"streamd exited {proc.returncode}"
    return Outcome(run, monitor, wall, log.read_text(errors="replace")[-3000:])


def run_job(job: Job, width: int, height: int) -> Outcome:
    job.workdir.mkdir(parents=True, exist_ok=True)
    if job.system == "streamd":
        return run_streamd(job, width, height)
    return run_runner(job)


def scratch_dir(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=name + "-", dir=root))
