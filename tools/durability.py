"""Are counts exact through `kill -9`? Runs the real daemon on a conveyor demo scene in real time, SIGKILLs its
analytics process (``--mode analytics``: the supervisor restarts it) or the whole daemon's process group and
then starts the daemon again (``--mode daemon``: the file resumes after its checkpoint) at a random moment,
and compares the final counts in the store with the scene's ground truth.

    python -m tools.durability --runs 20 --mode analytics
    python -m tools.durability --runs 20 --mode daemon --scene 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from streamd.analytics.store import CountStore
from streamd.demo import DEMO_SCENES, ensure_scene, package_file
from streamd.synth import CLASSES

STREAM = "belt"


def write_config(folder: Path, video: Path) -> Path:
    """The demo's pipeline (streamd/data/demo.yaml) on one real-time stream, with a store of its own."""
    path = folder / "streamd.yaml"
    path.write_text(yaml.safe_dump({
        "streams": [{"name": STREAM, "url": str(video), "pipeline": "conveyor", "realtime": True}],
        "pipelines": {"conveyor": {
            "model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35, "tracker": {"lost_track_s": 0.5},
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}]}},
        "sinks": [{"type": "jsonl", "path": str(folder / "events.jsonl")}],
        "counts": {"path": str(folder / "counts.db")}, "api": {"enabled": False},
        "supervisor": {"stats_interval_s": 1},
    }, sort_keys=False))
    return path


class Daemon:
    """`streamd run CONFIG` in a process group of its own; its JSON log lines go to a file."""

    def __init__(self, config: Path, log: Path):
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamd", "run", str(config)], stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=config.parent, start_new_session=True)

    def analysed_frames(self) -> int:
        frames = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"stream_stats"' in line:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("event") == "stream_stats" and event.get("stream") == STREAM:
                    frames = max(frames, int(event.get("frames") or 0))
        return frames

    def analytics_pid(self) -> int | None:
        """The analytics stage process, by the process title the stage sets (streamd-analytics, 15 chars)."""
        listing = subprocess.run(["ps", "--ppid", str(self.proc.pid), "-o", "pid=,comm="], capture_output=True,
                                 text=True, check=False).stdout
        for line in listing.splitlines():
            pid, _, comm = line.strip().partition(" ")
            if comm.strip().startswith("streamd-analyti"):
                return int(pid)
        return None

    def kill_group(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return -9
        finally:
            self._log.close()


def poll(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} not within {timeout:.0f} s")


def checkpoint_frame(store_path: Path) -> int:
    """The stream's last recorded frame (-1: none yet)."""
    if not store_path.is_file():
        return -1
    with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=10) as db:
        row = db.execute("SELECT frame FROM checkpoints WHERE stream=?", (STREAM,)).fetchone()
    return -1 if row is None else int(row[0])


def stored_counts(store_path: Path) -> dict[str, int]:
    store = CountStore(store_path, readonly=True)
    try:
        totals: dict[str, int] = {}
        for (_stream, _line, cls, _direction), n in store.counts(STREAM).items():
            totals[cls] = totals.get(cls, 0) + n
        return totals
    finally:
        store.close()


@dataclass(frozen=True)
class RunResult:
    run: int
    kill_s: float  # seconds of video analysed when the kill came
    kill_frame: int  # the stream's checkpoint right after the kill
    counted: dict[str, int]
    exit_code: int
    restored: bool  # the restarted analytics stage logged state_restored


    def exact(self, truth: dict[str, int]) -> bool:
        return self.exit_code == 0 and all(self.counted.get(k, 0) == n for k, n in truth.items()) and \
            not set(self.counted) - set(truth)


def one_run(run: int, folder: Path, video: Path, mode: str, kill_at_frame: int, timeout: float = 300) -> RunResult:
    config = write_config(folder, video)
    log = folder / "daemon.log"
    daemon = Daemon(config, log)
    poll(lambda: daemon.analysed_frames() >= kill_at_frame or daemon.proc.poll() is not None, timeout,
         f"{kill_at_frame} analysed frames")
    if mode == "analytics":
        pid = poll(daemon.analytics_pid, 30, "the analytics process")
        os.kill(pid, signal.SIGKILL)
        killed_frame = checkpoint_frame(folder / "counts.db")
        code = daemon.wait(timeout)
    else:
        daemon.kill_group()
        killed_frame = checkpoint_frame(folder / "counts.db")
        code = Daemon(config, log).wait(timeout)
    fps = 30.0
    restored = '"state_restored"' in log.read_text(errors="replace")
    return RunResult(run, round(killed_frame / fps, 2), killed_frame, stored_counts(folder / "counts.db"), code,
                     restored)


def run_table(runs: int, mode: str, scene: int, seed: int | None, out=sys.stdout) -> int:  # type: ignore[no-untyped-def]
    """Prints the table; returns how many runs were exact."""
    video, truth_file = ensure_scene(scene)
    truth = {name: truth_file.counts[name] for name in CLASSES}
    frames = int(DEMO_SCENES[scene].seconds * 30)
    rng = random.Random(seed)
    header = "  ".join(f"{name:>7}" for name in CLASSES)
    print(f"mode {mode}, scene {scene}, truth {truth}, seed {seed}", file=out)
    print(f"{'run':>3}  {'kill s':>6}  {'frame':>5}  {header}  restored  exact", file=out, flush=True)
    exact = 0
    with tempfile.TemporaryDirectory(prefix="streamd-durability-") as tmp:
        for i in range(1, runs + 1):
            folder = Path(tmp) / f"run{i}"
            folder.mkdir()
            result = one_run(i, folder, video, mode, rng.randint(int(frames * 0.05), int(frames * 0.9)))
            ok = result.exact(truth)
            exact += ok
            cells = "  ".join(f"{result.counted.get(name, 0):>3}/{truth[name]:<3}" for name in CLASSES)
            note = "" if result.exit_code == 0 else f"  (exit {result.exit_code}: {folder / 'daemon.log'})"
            print(f"{i:>3}  {result.kill_s:>6.2f}  {result.kill_frame:>5}  {cells}  {'yes' if result.restored else 'no':>8}  "
                  f"{'yes' if ok else 'NO'}{note}",
                  file=out, flush=True)
            if not ok and result.exit_code != 0:
                print((folder / "daemon.log").read_text(errors="replace")[-2000:], file=out)
    print(f"{exact} of {runs} exact", file=out, flush=True)
    return exact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--mode", choices=["analytics", "daemon"], default="analytics")
    parser.add_argument("--scene", type=int, default=3, choices=sorted(DEMO_SCENES), help="demo scene (--demo-seed)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random kill moments (default: new)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    exact = run_table(args.runs, args.mode, args.scene, seed)
    return 0 if exact == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
