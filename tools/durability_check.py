"""How often does a `kill -9` cost a count? Repeats: run the daemon on a generated conveyor scene in real time,
kill -9 the whole daemon (then restart it) or only its analytics process at a random moment, and compare the
final durable counts with the scene's ground truth.

    python -m tools.durability_check --target daemon --runs 8
    python -m tools.durability_check --target analytics --runs 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from streamd.demo import DEMO_SCENES, package_file
from streamd.ipc.ring import remove_orphaned_rings
from streamd.synth.conveyor import render_video


def config(folder: Path, video: Path) -> Path:
    path = folder / "streamd.yaml"
    path.write_text(yaml.safe_dump({
        "streams": [{"name": "belt", "url": str(video), "pipeline": "conveyor", "realtime": True}],
        "pipelines": {"conveyor": {
            "model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35, "tracker": {"lost_track_s": 0.5},
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}]}},
        "sinks": [{"type": "jsonl", "path": str(folder / "events.jsonl")}],
        "counts": {"path": str(folder / "counts.db")}, "api": {"enabled": False},
    }))
    return path


def stored_counts(cfg: Path) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "streamd", "counts", str(cfg), "--json"],
                         capture_output=True, text=True, check=True).stdout
    totals: dict[str, int] = {}
    for row in json.loads(out)["counts"]:
        totals[row["class"]] = totals.get(row["class"], 0) + row["count"]
    return totals


def one_run(folder: Path, video: Path, target: str, delay: float) -> dict[str, int]:
    cfg = config(folder, video)
    run = [sys.executable, "-m", "streamd", "run", str(cfg)]
    with open(folder / "first.log", "w") as log:
        daemon = subprocess.Popen(run, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(delay)
        if target == "daemon":
            daemon.kill()
            daemon.wait()
            time.sleep(1.0)  # its stages follow it (PDEATHSIG)
            subprocess.run(run, stdout=log, stderr=subprocess.STDOUT, timeout=600, check=False)
        else:
            listing = subprocess.run(["ps", "--ppid", str(daemon.pid), "-o", "pid=,comm="],
                                     capture_output=True, text=True).stdout
            for line in listing.splitlines():
                if "analyt" in line:
                    os.kill(int(line.split()[0]), signal.SIGKILL)
            daemon.wait(600)
    remove_orphaned_rings()
    return stored_counts(cfg)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=["daemon", "analytics"], default="daemon")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=3, choices=sorted(DEMO_SCENES), help="demo scene")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="streamd-durability-") as tmp:
        root = Path(tmp)
        truth = render_video(DEMO_SCENES[args.seed], root / "scene.mp4").counts
        seconds = DEMO_SCENES[args.seed].seconds
        offs = []
        for i in range(args.runs):
            folder = root / f"run{i}"
            folder.mkdir()
            delay = random.uniform(0.15, 0.85) * seconds
            got = one_run(folder, root / "scene.mp4", args.target, delay)
            off = sum(abs(got.get(k, 0) - n) for k, n in truth.items()) + sum(n for k, n in got.items() if k not in truth)
            doubled = any(got.get(k, 0) > n for k, n in truth.items())
            offs.append(off)
            print(f"run {i}: kill at {delay:.1f} s, counted {got}, off by {off}{' (DOUBLE COUNT)' if doubled else ''}",
                  flush=True)
    print(f"truth {truth}; {args.runs} runs: exact {offs.count(0)}, off by one {offs.count(1)}, "
          f"worse {sum(o > 1 for o in offs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
