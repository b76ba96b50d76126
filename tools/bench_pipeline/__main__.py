"""python -m tools.bench_pipeline: streamd beside what users would otherwise run, one model, same videos, one run.

  python -m tools.bench_pipeline                       # S1, the S2 sweep (N 1..12), S3, S4 and the limits (~20 min)
  python -m tools.bench_pipeline --smoke               # everything on tiny inputs (about two minutes)
  python -m tools.bench_pipeline --scenarios s2 --systems streamd plain --s2-max 6 --repeats 3
  python -m tools.bench_pipeline --scenarios s2 --systems streamd plain --streams 1 4   # exactly these N
  python -m tools.bench_pipeline --scenarios s4 --systems streamd plain --s4-streams 1 2 4

Systems: streamd (`streamd run CONFIG`, results from its zmq sink), ultralytics
(`YOLO(model).track(..., stream=True)`, a `.streams` file for live sources; needs the training
interpreter: .venv-train or STREAMD_TRAIN_PYTHON), plain (OpenCV + ONNX Runtime + ByteTrack in one
loop), and the limits (decode only; ONNX Runtime alone at its best batch size).

Scenarios: s1 one live RTSP camera, 720p 30 fps: latency p50/p99 and drops. s2 N live cameras at 15 fps:
fps, drops, latency, lag, CPU, peak memory; a system holds N when its lag p99 <= 50 ms and drops < 1 %
(medians over --repeats). S2 sweeps N = 1, 2, 3, ... up to --s2-max (12): at each N every system still
sweeping runs --repeats times, the systems interleaved (load drifts hit all alike; a point that fails is run
once more and judged on the median of all its runs), and a system's sweep
stops after its first N that does not hold (--s2-keep-going runs every N; --streams runs exactly the N
given, no stop). Its most streams held is the largest N up to which every N it ran held, "lower bound"
when it held the largest N it ran. S2 runs are shorter than S1's (--s2-warmup 4 s, --s2-duration 15 s
unless --warmup / --duration are given) so that the sweep fits the default run's budget. s3 files,
every frame, as fast as possible: fps against the limits. s4 counting at scale: N cameras at 15 fps,
each a different held-out conveyor scene played once from its start; a system holds N when it counts
every product on every stream exactly (per class, against the scene's truth) with lag p99 <= 100 ms,
each analysing every 3rd frame its own way (--s4-stride); the sweep over --s4-streams stops at a
system's first failure and its score is the largest N held. Live cameras are a real RTSP server on
127.0.0.1 (GStreamer, system python) playing conveyor scenes that the model detects.

Time: the run starts by printing its plan, runs x seconds per run per phase, and an estimate (sweeps
assumed to stop where they do on a 2-core machine: streamd holding 8 streams, the others 3; RUN_OVERHEAD_S
and TYPICAL_HELD below), and the most it could take (every system holding every N). The defaults are
sized to stay under 25 minutes there; results.json keeps the estimate and the time each phase took.

Writes OUT/results.json (every run, medians, goals, machine and load average), results.md, runs.csv,
bench_s2_scale.png and bench_s4_counting.png. Every figure comes from this run; timings vary between
runs and machines.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tools.bench_pipeline import limits as limits_mod
from tools.bench_pipeline import report
from tools.bench_pipeline.media import S4_SEEDS, ClipSpec, clip, frame_count, s4_scene
from tools.bench_pipeline.measure import counting_stats, live_stats, load_average, machine_info, throughput_stats
from tools.bench_pipeline.systems import (
    REPO, SYSTEMS, Counting, Job, RtspServer, rtsp_available, run_job, scratch_dir, train_python,
)

SCENARIOS = ("s1", "s2", "s3", "s4", "limits")
S4_FPS = 15
DEFAULT_MODEL = REPO / "streamd" / "models" / "conveyor.onnx"
S1_WARMUP_S, S1_DURATION_S = 5.0, 20.0  # S1 (and S2 when --warmup / --duration are given)
S2_WARMUP_S, S2_DURATION_S = 4.0, 15.0  # S2's sweep: up to 12 N per system, so shorter runs

# The start-up estimate (printed, and kept in results.json with the time each phase took). Seconds a run costs
# beyond its measured window on the 2-core development machine: RTSP server and process start, model load, the
# first frame, shutdown. The smoke run at load 0.5-1 measured streamd 6-7, plain 2.5-4, ultralytics 7-9 (wall
# time less warm-up and measured seconds); these are about 1.3x that, for a shared machine, plus a little per
# stream beyond the first.
RUN_OVERHEAD_S = {"streamd": 9.0, "plain": 5.0, "ultralytics": 12.0}
RUN_OVERHEAD_PER_STREAM_S = 0.7
S3_FPS_ASSUMED = 90.0  # S3: frames a second a system gets through its files
LIMITS_MS_PER_IMAGE, LIMITS_MS_PER_FRAME = 15.0, 10.0  # limits: per model image run, per frame decoded
# Where the estimate assumes each sweep stops (largest N held, S2 and S4) on that machine; a system not named: 3
TYPICAL_HELD = {"streamd": 8, "plain": 3, "ultralytics": 3}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="results folder (default out/bench-pipeline/<date-time>)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="ONNX model every system runs (default: the bundled conveyor model, 320 px), or an "
                             "ultralytics yaml such as yolov8n.yaml: exported at --imgsz with random weights "
                             "(needs the training interpreter; same speed as trained, but it detects nothing)")
    parser.add_argument("--imgsz", type=int, default=320, help="model input size in pixels (square)")
    parser.add_argument("--s1-extra-model", type=Path, action="append", default=[],
                        help="also run S1 with this model (ONNX or yaml as for --model), e.g. yolov8n.yaml: "
                             "the issue's nano network at 320 px")
    parser.add_argument("--streams", type=int, nargs="+", default=None,
                        help="S2: run exactly these stream counts for every system (no sweep, no stop)")
    parser.add_argument("--s2-max", type=int, default=12,
                        help="S2 sweep: N = 1, 2, 3, ... up to this, each system until its first N that does not "
                             "hold (default 12)")
    parser.add_argument("--s2-keep-going", action="store_true",
                        help="S2 sweep: run every N up to --s2-max for every system, also after a failure")
    parser.add_argument("--duration", type=float, default=None,
                        help=f"measured seconds per live run (default {S1_DURATION_S:g}; S2 as well when given, "
                             f"else --s2-duration)")
    parser.add_argument("--warmup", type=float, default=None,
                        help=f"seconds of frames ignored at the start of a live run (default {S1_WARMUP_S:g}; S2 as "
                             "well when given, else --s2-warmup)")
    parser.add_argument("--s2-duration", type=float, default=None,
                        help=f"S2: measured seconds per run (default --duration when given, else {S2_DURATION_S:g}: "
                             "the sweep runs many short runs)")
    parser.add_argument("--s2-warmup", type=float, default=None,
                        help=f"S2: warm-up seconds per run (default --warmup when given, else {S2_WARMUP_S:g})")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per (scenario, system, streams); medians reported, S2 holds judged on them")
    parser.add_argument("--s1-size", type=int, nargs=2, default=[1280, 720], metavar=("W", "H"))
    parser.add_argument("--s1-fps", type=int, default=30)
    parser.add_argument("--s2-size", type=int, nargs=2, default=[640, 360], metavar=("W", "H"))
    parser.add_argument("--s2-fps", type=int, default=15)
    parser.add_argument("--s3-files", type=int, default=2, help="S3: files processed together")
    parser.add_argument("--s3-seconds", type=float, default=20.0, help="S3: length of each file (30 fps)")
    parser.add_argument("--s4-streams", type=int, nargs="+", default=[2, 4, 8, 12],
                        help="S4 stream counts, tried in increasing order; a system stops at its first failure")
    parser.add_argument("--s4-seconds", type=float, default=20.0, help="S4: length of each stream's scene")
    parser.add_argument("--s4-lead-in", type=float, default=4.0,
                        help="S4: no product crosses the line in a scene's first and last this many seconds (a "
                             "system may lose the first frames of a connection while it probes the stream)")
    parser.add_argument("--s4-warmup", type=float, default=3.0,
                        help="S4: lag is measured from this long after every stream's first published frame")
    parser.add_argument("--s4-stride", type=int, default=3,
                        help="S4: every system analyses every Nth frame (streamd detect_fps = 15 / N, plain "
                             "--stride N, ultralytics vid_stride=N)")
    parser.add_argument("--s4-seeds", type=int, nargs="+", default=list(S4_SEEDS),
                        help="S4 scene seeds, one per stream in this order (default: held-out seeds 1-3, 146-155; "
                             "more streams than seeds continue from 156)")
    parser.add_argument("--streamd-max-batch", type=int, default=0,
                        help="streamd inference.max_batch (default 0: the number of streams, at most 8)")
    parser.add_argument("--streamd-threads", type=int, default=0,
                        help="streamd inference.intra_op_threads (default 0: ONNX Runtime's default)")
    parser.add_argument("--streamd-spin", action="store_true",
                        help="streamd inference.spin: true (ORT worker threads busy-wait; default false)")
    parser.add_argument("--ort-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--ort-runs", type=int, default=60)
    parser.add_argument("--cache", type=Path, default=REPO / "out" / "bench-pipeline" / "clips",
                        help="rendered clips are kept here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny inputs, one stream count, short runs: checks the harness, not speed")
    args = parser.parse_args(argv)
    if args.smoke:  # S2 stays a sweep (of one N) so that its code runs
        args.streams, args.s2_max, args.duration, args.warmup, args.repeats = None, 1, 2.0, 1.0, 1
        args.s1_size, args.s2_size, args.s3_files, args.s3_seconds = [320, 180], [320, 180], 1, 2.0
        args.ort_batches, args.ort_runs = [1, 2], 3
        args.s4_streams, args.s4_seconds, args.s4_lead_in, args.s4_warmup = [1], 10.0, 3.0, 1.0
    if args.s2_duration is None:
        args.s2_duration = args.duration if args.duration is not None else S2_DURATION_S
    if args.s2_warmup is None:
        args.s2_warmup = args.warmup if args.warmup is not None else S2_WARMUP_S
    args.duration = args.duration if args.duration is not None else S1_DURATION_S
    args.warmup = args.warmup if args.warmup is not None else S1_WARMUP_S
    if args.s2_max < 1 or (args.streams is not None and min(args.streams) < 1):
        parser.error("S2 stream counts must be at least 1")
    if args.out is None:
        args.out = REPO / "out" / "bench-pipeline" / time.strftime("%Y%m%d-%H%M%S")
    args.out, args.cache = args.out.resolve(), args.cache.resolve()  # systems run with other working directories
    return args


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None


def resolve_model(model: Path, args: argparse.Namespace) -> Path:
    """The ONNX file to run: ``model`` itself, or its yaml exported once next to the clip cache (ValueError if not)."""
    if model.suffix not in (".yaml", ".yml"):
        if not model.is_file():
            raise ValueError(f"--model {model} does not exist")
        return model
    out = args.cache.parent / "models" / f"{model.stem}-{args.imgsz}.onnx"
    if out.is_file():
        return out
    python = train_python()
    if python is None:
        raise ValueError(f"--model {model}: exporting a yaml needs ultralytics (install the train extra into "
                         ".venv-train or set STREAMD_TRAIN_PYTHON), or pass an ONNX file")
    proc = subprocess.run([python, "-m", "tools.bench_pipeline.export_model", "--yaml", str(model), "--imgsz",
                           str(args.imgsz), "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise ValueError(f"--model {model}: export failed: {(proc.stderr or proc.stdout)[-1500:]}")
    return out


def repo_relative(path: Path) -> str:
    full = path.resolve()
    return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else str(path)


def live_seconds(args: argparse.Namespace, warmup: float, duration: float) -> float:
    """Length of the RTSP clips: the measured window plus room for the slowest system's start-up."""
    return warmup + duration + (20.0 if args.smoke else 40.0)


def live_window(args: argparse.Namespace, scenario: str) -> tuple[float, float]:
    """(warm-up, measured seconds) of a live run of ``scenario``: S2 has its own, S1 the global ones."""
    return (args.s2_warmup, args.s2_duration) if scenario == "s2" else (args.warmup, args.duration)


def s2_stream_counts(args: argparse.Namespace) -> list[int]:
    """S2's N in the order run: the explicit --streams list, else the sweep 1, 2, 3, ... --s2-max."""
    return sorted(set(args.streams)) if args.streams else list(range(1, args.s2_max + 1))


def s2_stops(args: argparse.Namespace) -> bool:
    """Whether S2's stop rule applies: a sweep without --s2-keep-going (an explicit --streams list runs every N)."""
    return not args.streams and not args.s2_keep_going


def s2_still_sweeping(runs: list[dict[str, Any]], systems: list[str], stop: bool = True) -> list[str]:
    """S2's stop rule: of ``systems``, those whose sweep goes on to the next N. Without ``stop``, every one; else
    each that held at every N it ran, judged on the medians over its repeats (report.holds: lag p99 <= 50 ms,
    drops < 1 %; a point whose every repeat failed does not hold). A system with no S2 run yet goes on."""
    if not stop:
        return list(systems)
    rows = report.aggregate([r for r in runs if r["scenario"] == "s2"])
    return [s for s in systems if all(report.holds(row) for (_, system, _), row in rows.items() if system == s)]


def sweep_runs(ns: list[int], held: int, stop: bool) -> list[int]:
    """The N a sweep over ``ns`` (increasing) runs for a system that holds up to ``held`` streams."""
    if not stop:
        return list(ns)
    out = []
    for n in ns:
        out.append(n)
        if n > held:
            break
    return out


def estimate(args: argparse.Namespace, systems: list[str], extra_models: int = 0,
             held: dict[str, int] | None = None) -> dict[str, Any]:
    """How long the run takes: per phase, runs planned x seconds per run, expected (the sweeps stopping where
    ``held`` says, default TYPICAL_HELD) and at most (every system holding every N). Seconds from the
    RUN_OVERHEAD_S calibration; clips not rendered yet come on top."""
    held = dict(TYPICAL_HELD, **(held or {}))
    phases: dict[str, dict[str, Any]] = {}

    def live_s(system: str, n: int, warmup: float, duration: float) -> float:
        return warmup + duration + RUN_OVERHEAD_S.get(system, 10.0) + RUN_OVERHEAD_PER_STREAM_S * (n - 1)

    def add(name: str, expected: list[float], most: list[float], note: str = "") -> None:
        phases[name] = {"runs": len(expected), "runs_max": len(most), "seconds": round(sum(expected)),
                        "seconds_max": round(sum(most)), "per_run_s": round(sum(expected) / max(1, len(expected))),
                        "note": note}

    if "limits" in args.scenarios:  # ort_limit, then the bound's batch x (1, cores) threads x spin settings
        images = sum(args.ort_batches) * (args.ort_runs + max(2, args.ort_runs // 10))
        images += 4 * sum(args.ort_batches) * (max(3, args.ort_runs // 4) + 2)
        frames = args.s3_seconds * 30 + 750 if "s1" in args.scenarios else args.s3_seconds * 30 + 300
        limits_s = 10 + (images * LIMITS_MS_PER_IMAGE + frames * LIMITS_MS_PER_FRAME) / 1000
        add("limits", [limits_s], [limits_s])
    if "s1" in args.scenarios:
        s1 = [live_s(s, 1, args.warmup, args.duration) for s in systems] * (1 + extra_models) * args.repeats
        add("s1", s1, s1)
    if "s2" in args.scenarios:
        ns, stop = s2_stream_counts(args), s2_stops(args)
        expected = [live_s(s, n, args.s2_warmup, args.s2_duration) for s in systems
                    for n in sweep_runs(ns, held.get(s, 3), stop)] * args.repeats
        most = [live_s(s, n, args.s2_warmup, args.s2_duration) for s in systems for n in ns] * args.repeats
        add("s2", expected, most, f"N {ns[0]}..{ns[-1]}" + (" sweep" if stop else ""))
    if "s3" in args.scenarios:
        s3 = [args.s3_files * args.s3_seconds * 30 / S3_FPS_ASSUMED + RUN_OVERHEAD_S.get(s, 10.0)
              for s in systems] * args.repeats
        add("s3", s3, s3)
    if "s4" in args.scenarios:
        ns = sorted(set(args.s4_streams))

        def s4_s(system: str, n: int) -> float:
            return args.s4_seconds + RUN_OVERHEAD_S.get(system, 10.0) + RUN_OVERHEAD_PER_STREAM_S * (n - 1)

        add("s4", [s4_s(s, n) for s in systems for n in sweep_runs(ns, held.get(s, 3), True)],
            [s4_s(s, n) for s in systems for n in ns], f"N {' '.join(map(str, ns))} sweep")
    return {"phases": phases, "assumed_held": {s: held.get(s, 3) for s in systems},
            "minutes": round(sum(p["seconds"] for p in phases.values()) / 60, 1),
            "minutes_max": round(sum(p["seconds_max"] for p in phases.values()) / 60, 1)}


def format_estimate(est: dict[str, Any]) -> str:
    parts = []
    for name, p in est["phases"].items():
        runs = f"{p['runs']} run(s)" + (f" (at most {p['runs_max']})" if p["runs_max"] != p["runs"] else "")
        parts.append(f"{name.upper() if name != 'limits' else name} {runs} x ~{p['per_run_s']} s"
                     + (f" [{p['note']}]" if p["note"] else ""))
    held = ", ".join(f"{s} {n}" for s, n in est["assumed_held"].items())
    return (f"plan: {'; '.join(parts)}. Estimate ~{est['minutes']:g} min if the sweeps stop where they do on a "
            f"2-core machine (assumed most streams held: {held}); at most ~{est['minutes_max']:g} min if every "
            "system held every N; clips not yet cached are rendered first.")


def run_one(args: argparse.Namespace, scenario: str, system: str, model: Path, sources: list[str], live: bool,
            size: tuple[int, int], fps: float, frames_in_files: int, repeat: int, train: str | None) -> dict[str, Any]:
    work = scratch_dir(args.out / "work", f"{scenario.replace(':', '-')}-{system}-{len(sources)}-r{repeat}")
    warmup, duration = live_window(args, scenario)
    job = Job(system, sources, model, args.imgsz, live, warmup, duration, work,
              timeout_s=(warmup + duration + 180) if live else 900,
              max_batch=args.streamd_max_batch or max(1, min(len(sources), 8)), intra_op_threads=args.streamd_threads,
              spin=args.streamd_spin, train_python=train)
    row: dict[str, Any] = {"scenario": scenario, "system": system, "streams": len(sources), "repeat": repeat,
                           "model": model.name}
    try:
        outcome = run_job(job, *size)
    except Exception as exc:  # one failed run is reported, the others still run
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc()[-2000:]
        return row
    run = outcome.run
    stats = live_stats(run, fps, warmup, duration) if live else throughput_stats(run, frames_in_files)
    window = stats.pop("window_ns")
    row.update(stats)
    stage_pids = run.extra.pop("stage_pids", None)
    if stage_pids:  # streamd: CPU of each stage process in the window (decode-*, infer-*, analytics, sinks, ...)
        by_stage: dict[str, float] = {}
        for pid, pct in outcome.monitor.cpu_pct_by_pid(*window).items():
            name = stage_pids.get(pid, "other")
            name = "decode" if name.startswith("decode-") else "infer" if name.startswith("infer-") else name
            by_stage[name] = round(by_stage.get(name, 0.0) + pct, 1)
        run.extra["stage_cpu_pct"] = by_stage
    row.update({"cpu_pct": outcome.monitor.cpu_pct(*window), "peak_rss_mb": outcome.monitor.peak_rss_mb(),
                "wall_s": round(outcome.wall_s, 1), "frames_decoded": run.decoded, "error": run.error,
                "extra": run.extra})
    if not run.records and not row["error"]:
        row["error"] = "no frames processed"
    if row["error"]:
        row["log_tail"] = outcome.log_tail
    else:
        shutil.rmtree(work, ignore_errors=True)
    return row


def _ms(v: float | None) -> str:
    return "none" if v is None else f"{v:g} ms"


def s4_seeds(args: argparse.Namespace, n: int) -> list[int]:
    seeds = list(dict.fromkeys(args.s4_seeds))
    extra = (s for s in range(156, 100_000) if s not in seeds)
    while len(seeds) < n:
        seeds.append(next(extra))
    return seeds[:n]


def judge_counts(counted: list[dict[str, int]] | None, truths: list[dict[str, int]],
                 seeds: list[int]) -> list[dict[str, Any]]:
    """Per stream: the scene's truth, what the system counted, exact when every class matches (zeros included)."""
    counted = counted or []
    out = []
    for i, (seed, truth) in enumerate(zip(seeds, truths)):
        got = {k: int(v) for k, v in (counted[i] if i < len(counted) else {}).items() if v}
        want = {k: int(v) for k, v in truth.items() if v}
        out.append({"stream": f"cam{i}", "seed": seed, "truth": truth, "counted": got, "exact": got == want,
                    "missed": sum(max(0, want.get(k, 0) - got.get(k, 0)) for k in want),
                    "extra": sum(max(0, got.get(k, 0) - want.get(k, 0)) for k in got)})
    return out


def run_counting(args: argparse.Namespace, system: str, model: Path, n: int, train: str | None) -> dict[str, Any]:
    """One S4 run: n cameras, each a different scene played once from its start; counts judged per stream."""
    seeds = s4_seeds(args, n)
    scenes = [s4_scene(seed, args.s4_seconds, args.cache, S4_FPS, args.s4_lead_in) for seed in seeds]
    truths = [truth for _, truth in scenes]
    counting = Counting(scene_s=args.s4_seconds, fps=S4_FPS, stride=args.s4_stride)
    work = scratch_dir(args.out / "work", f"s4-{system}-{n}")
    row: dict[str, Any] = {"scenario": "s4", "system": system, "streams": n, "repeat": 0, "model": model.name,
                           "seeds": seeds}
    try:
        with RtspServer([path for path, _ in scenes], once=True) as server:
            job = Job(system, server.urls, model, args.imgsz, True, args.s4_warmup, args.s4_seconds, work,
                      timeout_s=args.s4_seconds + 180, max_batch=args.streamd_max_batch or max(1, min(n, 8)),
                      intra_op_threads=args.streamd_threads, spin=args.streamd_spin, train_python=train,
                      counting=counting)
            outcome = run_job(job, 640, 360)
    except Exception as exc:  # one failed run is reported, the sweep goes on
        row.update({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:],
                    "per_stream": judge_counts(None, truths, seeds), "exact_streams": 0, "exact": False,
                    "holds": False})
        return row
    run = outcome.run
    stats = counting_stats(run, args.s4_warmup, args.s4_seconds)
    window = stats.pop("window_ns")
    stage_pids = run.extra.pop("stage_pids", None)
    if stage_pids:  # streamd: CPU of each stage process over the lag window, as in run_one
        by_stage: dict[str, float] = {}
        for pid, pct in outcome.monitor.cpu_pct_by_pid(*window).items():
            name = stage_pids.get(pid, "other")
            name = "decode" if name.startswith("decode-") else "infer" if name.startswith("infer-") else name
            by_stage[name] = round(by_stage.get(name, 0.0) + pct, 1)
        run.extra["stage_cpu_pct"] = by_stage
    per_stream = judge_counts(run.extra.get("counts"), truths, seeds)
    # frames a stream never got from its connection (lost while probing, or not read before the run ended);
    # ultralytics reports the frames it retrieved (every vid_stride-th), the others every frame decoded
    scene_frames = round(args.s4_seconds * S4_FPS)
    per_frame = args.s4_stride if system == "ultralytics" else 1
    for p, decoded in zip(per_stream, list(run.decoded) + [0] * (n - len(run.decoded))):
        p["frames_decoded"] = int(decoded) * per_frame
        p["missed_s"] = round(max(0, scene_frames - int(decoded) * per_frame) / S4_FPS, 2)
    exact_streams = sum(p["exact"] for p in per_stream)
    row.update(stats)
    row.update({
        "per_stream": per_stream, "exact_streams": exact_streams, "exact": exact_streams == n,
        "missed_s_max": max((p["missed_s"] for p in per_stream), default=None),
        "counted_total": sum(sum(p["counted"].values()) for p in per_stream),
        "truth_total": sum(sum(p["truth"].values()) for p in per_stream),
        "cpu_pct": outcome.monitor.cpu_pct(*window), "peak_rss_mb": outcome.monitor.peak_rss_mb(),
        "wall_s": round(outcome.wall_s, 1), "frames_decoded": run.decoded, "error": run.error,
        "extra": {k: v for k, v in run.extra.items() if k not in ("counts", "stage_pids")},
    })
    if not run.records and not row["error"]:
        row["error"] = "no frames processed"
    lag = row.get("lag_p99_ms")
    row["holds"] = bool(row["exact"] and not row["error"] and lag is not None and lag <= report.S4_LAG_P99_MS)
    if row["error"] or not row["holds"]:
        row["log_tail"] = outcome.log_tail
    if not row["error"]:
        shutil.rmtree(work, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        args.model = resolve_model(args.model, args)
        extra_models = {m.stem: resolve_model(m, args) for m in args.s1_extra_model}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    systems = list(dict.fromkeys(args.systems))
    skipped: dict[str, str] = {}
    train = train_python() if "ultralytics" in systems else None
    if "ultralytics" in systems and train is None:
        skipped["ultralytics"] = ("no interpreter with ultralytics and lap (pip install -e '.[train]' into "
                                  ".venv-train, or set STREAMD_TRAIN_PYTHON)")
        systems.remove("ultralytics")
    live_scenarios = [s for s in args.scenarios if s in ("s1", "s2", "s4")]
    if live_scenarios:
        why = rtsp_available()
        if why:
            print(f"error: scenarios {' '.join(live_scenarios)} need the RTSP server: {why}", file=sys.stderr)
            return 1
    meta: dict[str, Any] = {
        "argv": list(argv if argv is not None else sys.argv[1:]), "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git_commit(), "machine": machine_info(), "load_start": load_average(), "systems": systems,
        "skipped": skipped, "model": repo_relative(args.model), "imgsz": args.imgsz, "repeats": args.repeats,
        "warmup_s": args.warmup,
        "duration_s": args.duration, "train_python": train, "smoke": args.smoke,
        "estimate": estimate(args, systems, len(extra_models)), "elapsed_s": {},
        "s1_extra_models": {label: repo_relative(path) for label, path in extra_models.items()},
        "streamd_max_batch": args.streamd_max_batch or "streams (at most 8)", "streamd_threads": args.streamd_threads,
        "streamd_spin": args.streamd_spin,
    }
    if "s2" in args.scenarios:
        meta["s2"] = {"streams_planned": s2_stream_counts(args), "sweep": not args.streams,
                      "stops_at_first_failure": s2_stops(args), "warmup_s": args.s2_warmup,
                      "duration_s": args.s2_duration, "lag_p99_ms_max": report.HOLD_P99_MS,
                      "drop_pct_below": report.HOLD_DROP_PCT}
    print(format_estimate(meta["estimate"]), file=sys.stderr)
    started = time.monotonic()
    if "s4" in args.scenarios:
        meta["s4"] = {
            "streams": sorted(set(args.s4_streams)), "scene_s": args.s4_seconds, "fps": S4_FPS,
            "size": "640x360", "warmup_s": args.s4_warmup, "lead_in_s": args.s4_lead_in, "stride": args.s4_stride,
            "seeds": s4_seeds(args, max(args.s4_streams)), "lag_p99_ms_max": report.S4_LAG_P99_MS,
            "settings": {
                "streamd": f"detect_fps: {S4_FPS / args.s4_stride:g} per stream; pipeline conveyor.onnx, "
                           "confidence 0.35, tracker {lost_track_s: 0.5}, line exit [[320, 360], [320, 0]] anchor "
                           "center; counts from its line_crossing events (jsonl sink)",
                "plain": f"--stride {args.s4_stride} (cap.read() every frame, one in {args.s4_stride} analysed), "
                         "confidence 0.35, trackers.ByteTrackTracker defaults, LineCounter: a track counts once "
                         "when its box centre crosses x = 320 left to right",
                "ultralytics": f"track(.streams, stream=True, vid_stride={args.s4_stride}, conf=0.35, "
                               "tracker=bytetrack.yaml), counting by hand from track ids (same rule as plain)",
            },
        }
    s1_spec = ClipSpec(*args.s1_size, args.s1_fps, live_seconds(args, args.warmup, args.duration),
                       unit_seconds=4.0 if args.smoke else 8.0)
    s2_spec = ClipSpec(*args.s2_size, args.s2_fps, live_seconds(args, args.s2_warmup, args.s2_duration),
                       unit_seconds=4.0 if args.smoke else 8.0)
    s3_spec = ClipSpec(*args.s2_size, 30, args.s3_seconds, unit_seconds=min(8.0, args.s3_seconds))
    meta["s1_clip"] = f"{s1_spec.width}x{s1_spec.height} at {s1_spec.fps} fps"
    meta["s2_clip"] = f"{s2_spec.width}x{s2_spec.height} at {s2_spec.fps} fps"
    meta["s3_clip"] = f"{s3_spec.width}x{s3_spec.height}, {s3_spec.seconds:g} s at 30 fps each"
    meta["s3_files"] = args.s3_files
    runs: list[dict[str, Any]] = []
    limits: dict[str, Any] = {}

    elapsed = meta["elapsed_s"]
    phase_start = time.monotonic()

    def phase_done(name: str) -> None:
        nonlocal phase_start
        now = time.monotonic()
        elapsed[name] = round(elapsed.get(name, 0.0) + now - phase_start, 1)
        phase_start = now

    s3_file = clip(s3_spec, args.cache) if ("s3" in args.scenarios or "limits" in args.scenarios) else None
    s1_file = clip(s1_spec, args.cache) if "s1" in args.scenarios else None
    s2_file = clip(s2_spec, args.cache) if "s2" in args.scenarios else None
    phase_done("clips")

    plan: list[tuple[str, int, int, str, Path]] = []  # scenario, streams, repeat, system, model (S2: its sweep)
    for repeat in range(args.repeats):
        if "s1" in args.scenarios:
            plan += [("s1", 1, repeat, s, args.model) for s in systems]
            plan += [(f"s1:{label}", 1, repeat, s, path) for label, path in extra_models.items() for s in systems]
        if "s3" in args.scenarios:
            plan += [("s3", args.s3_files, repeat, s, args.model) for s in systems]
    s2_ns = s2_stream_counts(args) if "s2" in args.scenarios else []
    s4_ns = sorted(set(args.s4_streams)) if "s4" in args.scenarios else []
    progress = tqdm(total=len(plan) + ("limits" in args.scenarios) + len(s2_ns) * len(systems) * args.repeats
                    + len(s4_ns) * len(systems), desc="bench", unit="run", disable=None)
    if "limits" in args.scenarios and s3_file is not None:
        progress.set_postfix_str("limits")
        limits["decode"] = [limits_mod.decode_fps(s3_file)]
        limits["decode_s3"] = limits["decode"][0]
        if s1_file is not None:
            limits["decode"].append(limits_mod.decode_fps(s1_file, "SLICE", max_frames=300))
        frames = limits_mod.sample_frames(s3_file, 16)
        limits["ort"] = limits_mod.ort_limit(args.model, frames, args.ort_batches, args.ort_runs,
                                             warmup=max(2, args.ort_runs // 10))
        # the bound: per-frame CPU costs of every step at its best, on the S2 clip's frame size
        limits["bound"] = limits_mod.bound(args.model, s2_file or s3_file, s1_file, frames, args.ort_batches,
                                           max(3, args.ort_runs // 4), float(args.s2_fps))
        progress.update(1)
        phase_done("limits")
    s3_frames = frame_count(s3_file) * args.s3_files if s3_file is not None else 0
    if s3_file is not None:
        per_file = s3_frames // args.s3_files
        meta["s3_clip"] = f"{s3_spec.width}x{s3_spec.height}, {per_file} frames ({per_file / 30:.0f} s at 30 fps) each"

    def run_planned(scenario: str, n: int, repeat: int, system: str, model: Path) -> dict[str, Any]:
        progress.set_postfix_str(f"{scenario} {system} x{n} r{repeat}")
        if scenario == "s3":
            assert s3_file is not None
            row = run_one(args, scenario, system, model, [str(s3_file)] * n, False, tuple(args.s2_size), 30.0, s3_frames,
                          repeat, train)
        else:
            s1 = scenario.startswith("s1")
            file, spec = (s1_file, s1_spec) if s1 else (s2_file, s2_spec)
            assert file is not None
            with RtspServer(file, n) as server:
                row = run_one(args, scenario, system, model, server.urls, True, (spec.width, spec.height), spec.fps, 0,
                              repeat, train)
        runs.append(row)
        progress.update(1)
        if row.get("error"):
            tqdm.write(f"{scenario} {system} x{n}: {row['error']}", file=sys.stderr)
        phase_done("s1" if scenario.startswith("s1") else scenario)
        return row

    for scenario, n, repeat, system, model in plan:
        run_planned(scenario, n, repeat, system, model)
    # S2: at each N every system still sweeping runs --repeats times, systems interleaved; a system's sweep stops
    # after its first N that does not hold on the medians (unless --s2-keep-going or an explicit --streams list)
    sweeping = list(systems)
    for i, n in enumerate(s2_ns):
        for repeat in range(args.repeats):
            for system in sweeping:
                run_planned("s2", n, repeat, system, args.model)
        still = s2_still_sweeping(runs, sweeping, s2_stops(args))
        # a failed point is run once more before it ends a sweep (one noisy 15 s window on a shared machine must
        # not decide a score), and judged on the median of all its runs; the same rule for every system
        failed = [system for system in sweeping if system not in still]
        for system in failed:
            progress.total += 1
            run_planned("s2", n, args.repeats, system, args.model)
        if failed:
            still = s2_still_sweeping(runs, sweeping, s2_stops(args))
        point = report.aggregate([r for r in runs if r["scenario"] == "s2" and r["streams"] == n])
        for system in sweeping:
            if system not in still:
                progress.total -= (len(s2_ns) - i - 1) * args.repeats
                row = point[("s2", system, n)]
                why = "; ".join(row["errors"]) if not row["repeats"] else (
                    f"lag p99 {_ms(row['lag_p99_ms'])}, drops {row['drop_pct']} %")
                tqdm.write(f"s2 {system} x{n}: does not hold ({why}); its sweep stops", file=sys.stderr)
        sweeping = still
        if not sweeping:
            break
    progress.refresh()
    sweeping = list(systems)  # S4: each system until its first failure
    for n in s4_ns:
        for system in list(sweeping):
            progress.set_postfix_str(f"s4 {system} x{n}")
            row = run_counting(args, system, args.model, n, train)
            runs.append(row)
            progress.update(1)
            phase_done("s4")
            if not row["holds"]:
                sweeping.remove(system)
                progress.total -= len([m for m in s4_ns if m > n])
                why = row.get("error") or (f"{row['exact_streams']}/{n} streams exact, lag p99 "
                                           f"{row.get('lag_p99_ms')} ms")
                tqdm.write(f"s4 {system} x{n}: does not hold ({why}); its sweep stops", file=sys.stderr)
    progress.close()
    meta["load_end"] = load_average()
    meta["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    meta["elapsed_s"]["total"] = round(time.monotonic() - started, 1)
    result = {"meta": meta, "limits": limits, "runs": runs,
              "summary": report.summarise(runs, limits, systems)}
    written = report.write_all(result, args.out, float(args.s2_fps))
    print(report.markdown(result))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    print(f"took {meta['elapsed_s']['total'] / 60:.1f} min (estimate ~{meta['estimate']['minutes']:g} min); by "
          "phase, s: " + ", ".join(f"{k} {v:g}" for k, v in meta["elapsed_s"].items() if k != "total"), file=sys.stderr)
    if not any(r.get("error") for r in runs):  # failed runs keep their logs and configs under OUT/work
        shutil.rmtree(args.out / "work", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
