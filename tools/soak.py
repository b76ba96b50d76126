"""Soak: a real daemon with 4 real-time streams and reload churn; resources must stay flat.

    python -m tools.soak --minutes 30 --out reports/soak

Every ``--churn-s`` seconds the config changes without changing how much runs: a pipeline's threshold (its
streams restart on new rings), or one stream replaced by another. Every ``--sample-s`` seconds the daemon's
processes are measured: resident memory, open file descriptors and threads (supervisor plus every stage), and
its shared-memory rings in /dev/shm. After the warm-up (the first 20 % of the run), the median of the last fifth
must not exceed the median of the first post-warm-up fifth by 5 % or more, for every measure. Writes
soak.csv, soak.json and soak.png (one panel per measure, warm-up shaded) to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
MODELS = (REPO / "streamd" / "models" / "conveyor.onnx", REPO / "streamd" / "models" / "conveyor.int8.onnx")
MEASURES = ("rss_mb", "fds", "threads", "shm_rings", "processes")
MAX_GROWTH = 0.05
WARMUP_FRACTION = 0.2


@dataclass(frozen=True)
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    threads: int
    shm_rings: int
    processes: int


def measure(pid: int, t0: float) -> Sample | None:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    rss = fds = threads = 0
    alive = 0
    for proc in procs:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                fds += proc.num_fds()
                threads += proc.num_threads()
            alive += 1
        except psutil.NoSuchProcess:
            continue  # a stage that just exited (churn)
    rings = len(list(Path("/dev/shm").glob(f"streamd-{pid}-*")))
    return Sample(round(time.monotonic() - t0, 1), round(rss / 2**20, 1), fds, threads, rings, alive)


def config(state: Path, video: Path, streams: list[str], confidence: float) -> dict[str, Any]:
    return {
        "streams": [{"name": n, "url": str(video), "pipeline": f"p{i % 2}", "realtime": True, "loop": True}
                    for i, n in enumerate(streams)],
        "pipelines": {f"p{i}": {"model": str(m), "confidence": confidence if i == 0 else 0.35,
                                "lines": [{"name": "exit", "points": [[320, 360], [320, 0]]}]}
                      for i, m in enumerate(MODELS)},
        "sinks": [{"type": "jsonl", "path": str(state / "events.jsonl"), "max_bytes": 1 << 20, "keep_files": 2}],
        "counts": {"path": str(state / "counts.db")},
        "supervisor": {"stats_interval_s": 30},
        "api": {"port": 0},
    }


def growth(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Per measure: median of the first post-warm-up fifth, of the last fifth, and their ratio - 1."""
    steady = samples[int(len(samples) * WARMUP_FRACTION):]
    fifth = max(1, len(steady) // 5)
    out = {}
    for name in MEASURES:
        first = statistics.median(getattr(s, name) for s in steady[:fifth])
        last = statistics.median(getattr(s, name) for s in steady[-fifth:])
        out[name] = {"first": first, "last": last, "growth": (last - first) / first if first else 0.0}
    return out


def plot(samples: list[Sample], path: Path, warmup_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(MEASURES), 1, figsize=(9, 2.0 * len(MEASURES)), sharex=True)
    t = [s.t_s / 60 for s in samples]
    for ax, name in zip(axes, MEASURES):
        ax.plot(t, [getattr(s, name) for s in samples], lw=1.2)
        ax.axvspan(0, warmup_s / 60, color="0.9")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes (grey: warm-up)")
    fig.suptitle("streamd soak: 4 real-time streams with reload churn")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(minutes: float, out: Path, churn_s: float = 10.0, sample_s: float = 5.0, log: Any = print) -> dict[str, Any]:
    from streamd.synth.conveyor import SceneConfig, render_video

    out.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="streamd-soak-"))
    video = state / "belt.mp4"
    render_video(SceneConfig(seed=5, fps=10, seconds=6.0, belt_speed=18.0, density=1.0), video)
    streams = ["s0", "s1", "s2", "s3"]
    confidence = 0.35
    cfg_path = state / "streamd.yaml"
    cfg_path.write_text(yaml.safe_dump(config(state, video, streams, confidence), sort_keys=False))
    log_file = open(state / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamd", "run", str(cfg_path)], stdout=log_file,
                            stderr=subprocess.STDOUT, cwd=state)
    samples: list[Sample] = []
    t0 = time.monotonic()
    end = t0 + minutes * 60
    next_churn, next_sample, churns, serial = t0 + churn_s, t0, 0, len(streams)
    try:
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {proc.returncode}; see {state / 'daemon.log'}")
            now = time.monotonic()
            if now >= next_sample:
                sample = measure(proc.pid, t0)
                if sample is not None:
                    samples.append(sample)
                next_sample = now + sample_s
            if now >= next_churn:
                churns += 1
                if churns % 2:
                    confidence = 0.4 if confidence == 0.35 else 0.35  # p0's streams restart
                else:
                    streams[churns % len(streams)] = f"s{serial}"  # one stream replaced by a new one
                    serial += 1
                tmp = cfg_path.with_suffix(".tmp")
                tmp.write_text(yaml.safe_dump(config(state, video, streams, confidence), sort_keys=False))
                os.replace(tmp, cfg_path)
                next_churn = now + churn_s
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        log_file.close()
    applied = sum(1 for line in (state / "daemon.log").read_text(errors="replace").splitlines()
                  if '"reload_applied"' in line)
    result = {"minutes": minutes, "churn_s": churn_s, "edits": churns, "reloads_applied": applied, "exit_code": code,
              "samples": len(samples), "growth": growth(samples), "max_growth": MAX_GROWTH}
    result["ok"] = code == 0 and all(g["growth"] < MAX_GROWTH for g in result["growth"].values())
    with open(out / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(samples[0])))
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    plot(samples, out / "soak.png", minutes * 60 * WARMUP_FRACTION)
    for name, g in result["growth"].items():
        log(f"{name:>10}: {g['first']:>9} -> {g['last']:>9}  ({g['growth'] * 100:+.1f} %)")
    log(f"{churns} edits, {applied} reloads applied, exit code {code}: {'OK' if result['ok'] else 'GREW'}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--churn-s", type=float, default=10.0, help="seconds between config edits (default 10)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--out", type=Path, default=Path("reports/soak"), help="folder for csv, json and plot")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.churn_s <= 0 or args.sample_s <= 0:
        parser.error("--minutes, --churn-s and --sample-s must be positive")
    result = run(args.minutes, args.out, args.churn_s, args.sample_s)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
