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
    """tools/bench_pipeline/rtsp_file_server.py (system python with GStreamer): ``/cam0`` .. ``/cam{N-1}``.

    ``files``: one file per mount, or one file for ``mounts`` mounts. ``once``: each mount plays to its
    first client only (a reconnect after the end is refused, so no client sees its scene twice)."""

    SCRIPT = Path(__file__).with_name("rtsp_file_server.py")

    def __init__(self, files: Path | list[Path], mounts: int = 0, python: str = "/usr/bin/python3",
                 once: bool = False):
        files = [files] if isinstance(files, Path) else list(files)
        mounts = mounts or len(files)
        self.port = free_port()
        cmd = [python, str(self.SCRIPT), "--port", str(self.port)]
        for file in files:
            cmd += ["--file", str(file)]
        cmd += ["--mounts", str(mounts)] + (["--once"] if once else [])
        # stderr to a file, never a pipe nobody reads: GStreamer's warnings (refused reconnects) would fill it
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "READY":
            self.proc.kill()
            self.proc.wait()
            self._stderr.seek(0)
            err = self._stderr.read().decode(errors="replace")
            self._stderr.close()
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
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()

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
    counting: Counting | None = None  # S4: count line crossings over whole scenes


@dataclass(frozen=True)
class Counting:
    """S4's settings, the same for every system: each analyses every ``stride``-th frame its own way and counts
    left-to-right crossings of x = ``line_x``; a run lasts until every stream's scene has ended."""

    scene_s: float  # length of each stream's scene
    fps: float  # the cameras' frame rate
    stride: int = 3  # streamd detect_fps = fps / stride, plain --stride, ultralytics vid_stride
    line_x: float = 320.0
    confidence: float = 0.35
    lost_track_s: float = 0.5  # streamd's tracker (the tested exact-count config)
    grace_s: float = 30.0  # a system this far behind the end of the scene is stopped

    @property
    def detect_fps(self) -> float:
        return self.fps / self.stride


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
    c = job.counting
    if c is not None:  # until the sources end (the server refuses reconnects), at most the scene + grace
        stride = "--vid-stride" if job.system == "ultralytics" else "--stride"
        cmd += ["--live", "--max-seconds", str(c.scene_s + c.grace_s), "--conf", str(c.confidence), "--line-x",
                str(c.line_x), stride, str(c.stride)]
    elif job.live:
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


def streamd_counting_config(job: Job, names: list[str], endpoint: str) -> dict[str, Any]:
    """S4: the tested exact-count pipeline (tests/integration/test_exact_counts.py config_for) on every stream,
    analysing ``detect_fps`` frames a second; crossings go to a JSONL file (durable: nothing is lost to a slow
    subscriber), tracks to the zmq sink for the lag."""
    c = job.counting
    assert c is not None
    return {
        "streams": [{"name": n, "url": s, "pipeline": "conveyor", "detect_fps": c.detect_fps}
                    for n, s in zip(names, job.sources)],
        "pipelines": {"conveyor": {
            "model": str(job.model.resolve()), "confidence": c.confidence,
            "tracker": {"lost_track_s": c.lost_track_s},
            "lines": [{"name": "exit", "points": [[c.line_x, 360], [c.line_x, 0]], "anchor": "center"}],
        }},
        "sinks": [{"type": "zmq", "endpoint": endpoint, "include_tracks": True},
                  {"type": "jsonl", "path": str(job.workdir / "events.jsonl")}],
        "inference": {"max_batch": job.max_batch, "max_wait_ms": 5, "intra_op_threads": job.intra_op_threads,
                      "spin": job.spin},
        "supervisor": {"stats_interval_s": 5},
        "counts": {"path": str(job.workdir / "counts.db")},
    }


def crossing_counts(events_jsonl: Path, names: list[str]) -> tuple[list[dict[str, int]], int]:
    """Per stream (in ``names`` order): crossings of the line in the counting direction, by class, each event id
    once; and how many crossings went the other way."""
    counts: list[dict[str, int]] = [{} for _ in names]
    index = {n: i for i, n in enumerate(names)}
    seen: set[str] = set()
    backwards = 0
    if not events_jsonl.exists():
        return counts, 0
    for line in events_jsonl.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("type") != "line_crossing" or event.get("id") in seen or event.get("stream") not in index:
            continue
        seen.add(event.get("id"))
        if event.get("direction") != "in":
            backwards += 1
            continue
        by_class = counts[index[event["stream"]]]
        by_class[event["class_name"]] = by_class.get(event["class_name"], 0) + 1
    return counts, backwards


def _scenes_done(records: list[tuple[int, int, int, int, int]], streams: int, scene_s: float,
                 idle_s: float = 3.0) -> bool:
    """Every stream has ended: it published a frame from the last half second of its scene (pts counted from its
    first published frame), or published nothing for ``idle_s`` (a connection that lost its first frames never
    reaches the first criterion; the server refuses the reconnect after the end)."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    last_t: dict[int, int] = {}
    for stream, _, t_done, pts_us, _ in list(records):
        first.setdefault(stream, pts_us)
        last[stream] = max(last.get(stream, pts_us), pts_us)
        last_t[stream] = t_done
    now = time.monotonic_ns()
    return len(last) == streams and all(last[i] - first[i] >= (scene_s - 0.5) * 1e6
                                        or now - last_t[i] > idle_s * 1e9 for i in last)


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
    if job.counting is not None:
        config = streamd_counting_config(job, names, endpoint)
    else:
        config = streamd_config(job, names, endpoint, width, height)
    for stream in config["streams"]:
        if "realtime" in stream and stream["realtime"] is None:
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
                    c = job.counting
                    if collector.records and c is not None:  # until every scene ended, or scene + grace
                        end = time.monotonic() + c.scene_s + c.grace_s
                        while (time.monotonic() < end and proc.poll() is None
                               and not _scenes_done(collector.records, len(names), c.scene_s)):
                            time.sleep(0.2)
                        time.sleep(1.0)  # the events of the last frames reach the sinks
                    elif collector.records:
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
        "frames_skipped": sum(int(s.get("frames_skipped") or 0) for s in summaries.values()),
        "exit_code": proc.returncode,
        "stage_pids": stage_pids,  # for the per-stage CPU split, computed over the measured window by the caller
    }
    if job.counting is not None:
        run.extra["counts"], run.extra["crossings_backwards"] = crossing_counts(job.workdir / "events.jsonl", names)
        run.extra["detect_fps"] = job.counting.detect_fps
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
