"""python -m tools.measure_pipeline: throughput and latency of `streamd run` for 1..N streams of one video.

Runs the daemon as users do (subprocess, real model, real files) once per scenario and reads its
`run_summary` log lines. Modes: `fast` (every frame, as fast as possible: throughput) and `realtime`
(paced like cameras: end-to-end latency p50/p99 and drops). Prints a Markdown table.

  python -m tools.measure_pipeline --video ../shared/media/videos/Traffic.mp4 \\
      --model ../shared/media/models/yolox-nano/yolox_nano.onnx --labels ../shared/media/models/coco.names \\
      --streams 1 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml


def run_scenario(video: Path, model: Path, labels: Path | None, streams: int, mode: str, max_batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "streams": [{"name": f"cam{i}", "url": str(video.resolve()), "pipeline": "p",
                         "realtime": mode == "realtime"} for i in range(streams)],
            "pipelines": {"p": {"model": str(model.resolve()), **({"labels": str(labels.resolve())} if labels else {})}},
            "sinks": [{"type": "jsonl", "path": f"{tmp}/events.jsonl"}],
            "inference": {"max_batch": max_batch, "max_wait_ms": 5},
            "supervisor": {"stats_interval_s": 5},
        }
        path = Path(tmp) / "streamd.yaml"
        path.write_text(yaml.safe_dump(config))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "streamd", "run", str(path)], capture_output=True, text=True)
        wall = time.monotonic() - started
    logs = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        raise RuntimeError(f"streamd exited {proc.returncode}: {proc.stderr[-2000:]}")
    first = min(datetime.fromisoformat(e["timestamp"]) for e in logs
                if e["event"] == "source_state" and e.get("state") == "streaming")
    last = max(datetime.fromisoformat(e["timestamp"]) for e in logs if e["event"] == "all_streams_finished")
    summaries = [e for e in logs if e["event"] == "run_summary"]
    analysed = sum(e["frames_analysed"] for e in summaries)
    decoded = sum(e["frames_decoded"] for e in summaries)
    dropped = sum(e["dropped_stale"] + e["dropped_overwritten"] for e in summaries)
    seconds = (last - first).total_seconds()
    return {
        "streams": streams, "mode": mode, "frames_analysed": analysed, "frames_decoded": decoded,
        "dropped_pct": round(100 * dropped / max(decoded, 1), 1), "seconds": round(seconds, 2),
        "fps_total": round(analysed / seconds, 1), "wall_s_with_startup": round(wall, 1),
        "latency_p50_ms": round(max(e["latency_p50_ms"] for e in summaries), 1),
        "latency_p99_ms": round(max(e["latency_p99_ms"] for e in summaries), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.measure_pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=["fast", "realtime"], choices=["fast", "realtime"])
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []
    for n in args.streams:
        for mode in args.modes:
            row = run_scenario(args.video, args.model, args.labels, n, mode, args.max_batch)
            rows.append(row)
            print(f"measured {row}", file=sys.stderr)
    cols = ["streams", "mode", "fps_total", "latency_p50_ms", "latency_p99_ms", "dropped_pct", "frames_analysed",
            "seconds"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
