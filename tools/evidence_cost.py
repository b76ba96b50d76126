"""What evidence costs, from one command: the real daemon on a held-out conveyor scene in real time, once with
snapshots and clips on and once with evidence off; per event CPU (ms) and bytes on disk, and the counting latency
(decoded -> crossing recorded, from the events' own timestamps) with evidence on and off.

    python -m tools.evidence_cost [--seconds 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from streamd.demo import DEMO_SCENES, package_file
from streamd.synth.conveyor import render_video


def _config(root: Path, video: Path, evidence: bool) -> Path:
    stream: dict[str, Any] = {"name": "belt", "url": str(video), "pipeline": "conveyor", "realtime": True,
                              "ring_slots": 32}
    if evidence:
        stream["clips"] = {"pre_s": 2.0, "post_s": 2.0, "segment_s": 2.0}
    config = {
        "streams": [stream],
        "pipelines": {"conveyor": {
            "model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35, "tracker": {"lost_track_s": 0.5},
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}],
            "evidence": {"snapshots": evidence},
        }},
        "sinks": [{"type": "jsonl", "path": str(root / "events.jsonl")}],
        "counts": {"path": str(root / "state" / "counts.db")},
        "inference": {"intra_op_threads": 1},
        "api": {"enabled": False},
    }
    path = root / "streamd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run(root: Path, video: Path, evidence: bool) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    config = _config(root, video, evidence)
    log = root / "streamd.log"
    with open(log, "wb") as out:
        code = subprocess.run([sys.executable, "-m", "streamd", "run", str(config)], stdout=out,
                              stderr=subprocess.STDOUT, cwd=root, timeout=600).returncode
    if code != 0:
        raise SystemExit(f"daemon exited with {code}; see {log}")
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    crossings = [e for e in events if e["type"] == "line_crossing"]
    latency = np.array([(e["t_analysed_ns"] - e["t_decoded_ns"]) / 1e6 for e in crossings])
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    summary = next((e for e in reversed(lines) if e.get("event") == "run_summary"), {})
    result: dict[str, Any] = {
        "crossings": len(crossings),
        "counting_latency_ms": {"p50": round(float(np.percentile(latency, 50)), 2),
                                "p99": round(float(np.percentile(latency, 99)), 2)} if len(latency) else None,
        "frame_latency_ms": {"p50": summary.get("latency_p50_ms"), "p99": summary.get("latency_p99_ms")},
    }
    if evidence:
        numbers = next((e for e in reversed(lines) if e.get("event") == "evidence_summary"), {})
        with sqlite3.connect(root / "state" / "evidence" / "index.db") as db:
            kinds = dict(db.execute("SELECT kind, SUM(bytes) FROM files GROUP BY kind").fetchall())
        n = max(1, len(crossings))
        result["evidence"] = {k: numbers.get(k) for k in ("snapshots", "clips", "missed_overwritten",
                                                           "missed_no_frame", "dropped_queue", "failed")}
        result["per_event"] = {
            "cpu_ms": round((numbers.get("cpu_us", 0) + numbers.get("copy_us", 0)) / n / 1000, 2),
            "copy_ms_on_sinks_thread": round(numbers.get("copy_us", 0) / n / 1000, 3),
            "snapshot_bytes": round((kinds.get("snapshot", 0) + kinds.get("crop", 0)) / n),
            "clip_bytes": round(kinds.get("clip", 0) / n),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the generated scene")
    parser.add_argument("--seed", type=int, default=2, choices=sorted(DEMO_SCENES), help="held-out scene")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix="evidence-cost-"))
    video = root / "belt.mp4"
    render_video(replace(DEMO_SCENES[args.seed], seconds=args.seconds), video)
    on = _run(root / "on", video, evidence=True)
    off = _run(root / "off", video, evidence=False)
    report = {"scene": {"seed": args.seed, "seconds": args.seconds}, "evidence_on": on, "evidence_off": off}
    (root / "evidence_cost.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if on["crossings"] != off["crossings"]:
        print(f"warning: {on['crossings']} crossings with evidence, {off['crossings']} without", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
