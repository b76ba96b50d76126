"""Turning runs into the published result: medians over repeats, goals, JSON, Markdown, CSV and plots."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

RUN_FIELDS = ["scenario", "system", "streams", "repeat", "model", "fps_processed", "drop_pct", "latency_p50_ms",
              "latency_p99_ms", "latency_max_ms", "lag_p50_ms", "lag_p99_ms", "tracks_per_frame", "cpu_pct",
              "peak_rss_mb", "frames_processed", "frames_expected", "frames_in_files", "seconds", "wall_s",
              "exact_streams", "holds", "error"]
METRICS = ["fps_processed", "drop_pct", "latency_p50_ms", "latency_p99_ms", "latency_max_ms", "lag_p50_ms",
           "lag_p99_ms", "tracks_per_frame", "cpu_pct",
           "peak_rss_mb", "frames_processed", "seconds"]
HOLD_P99_MS = 50.0
HOLD_DROP_PCT = 1.0
S4_LAG_P99_MS = 100.0  # S4: a system holds N streams when it counts all exactly with lag p99 at most this
S4_GOAL_X = 2.0  # S4 goal: streamd's score at least this many times the best alternative's


def _median(values: list[Any]) -> float | None:
    nums = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(nums), 2) if nums else None


def aggregate(runs: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(scenario, system, streams) -> median of every metric over the repeats, the repeats' errors."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["scenario"], run["system"], run["streams"]), []).append(run)
    out = {}
    for key, group in groups.items():
        ok = [r for r in group if not r.get("error")]
        out[key] = {m: _median([r.get(m) for r in ok]) for m in METRICS}
        out[key]["repeats"] = len(ok)
        out[key]["errors"] = [r["error"] for r in group if r.get("error")]
    return out


def holds(row: dict[str, Any]) -> bool:
    """Lag, not latency: camera sent -> published p99 within HOLD_P99_MS, and drops under HOLD_DROP_PCT."""
    return (row["repeats"] > 0 and row.get("lag_p99_ms") is not None and row["lag_p99_ms"] <= HOLD_P99_MS
            and row["drop_pct"] is not None and row["drop_pct"] < HOLD_DROP_PCT)


def _ceil(x: float) -> int:
    return int(-(-x // 1))


def s2_score(by_n: dict[str, dict[str, Any]]) -> tuple[int, bool]:
    """A system's S2 result from its medians per N: the most streams held, i.e. the largest N up to which every N
    it ran held (0 when its first did not), and whether that is only a lower bound (it held every N it ran, the
    largest included, so its limit was not reached). A sweep that stopped at its first failure gives the N before
    it; with --s2-keep-going a later N that happens to hold again does not raise the score."""
    score = 0
    for n in sorted(int(k) for k in by_n):
        if not holds(by_n[str(n)]):
            return score, False
        score = n
    return score, bool(by_n)


def cpu_goal_streams(s2: dict[str, dict[str, dict[str, Any]]], want: int = 4) -> int | None:
    """The N at which streamd's and plain's CPU per frame are compared: ``want`` when both ran it, else the closest
    N both ran (the larger of two as close; a sweep stops plain early), None when they share none."""
    mine, theirs = s2.get("streamd", {}), s2.get("plain", {})
    common = [int(n) for n in mine if n in theirs and mine[n].get("cpu_ms_per_frame")
              and theirs[n].get("cpu_ms_per_frame")]
    return min(common, key=lambda n: (abs(n - want), -n)) if common else None


def summarise(runs: list[dict[str, Any]], limits: dict[str, Any], systems: list[str]) -> dict[str, Any]:
    agg = aggregate(runs)
    summary: dict[str, Any] = {"s1": {}, "s1_extra": {}, "s2": {}, "s3": {}}
    summary.update(summarise_s4(runs))
    for (scenario, system, streams), row in sorted(agg.items()):
        if scenario == "s1":
            summary["s1"][system] = row
        elif scenario.startswith("s1:"):
            summary["s1_extra"].setdefault(scenario[3:], {})[system] = row
        elif scenario == "s2":
            summary["s2"].setdefault(system, {})[str(streams)] = row
        elif scenario == "s3":
            summary["s3"][system] = dict(row, streams=streams)
    tested = sorted({int(n) for rows in summary["s2"].values() for n in rows})
    scores = {system: s2_score(rows) for system, rows in summary["s2"].items()}
    summary["s2_max_streams"] = {system: score for system, (score, _) in scores.items()}
    summary["s2_lower_bound"] = {system: lower for system, (_, lower) in scores.items()}
    summary["s2_streams_tested"] = tested
    ort = (limits.get("ort") or {}).get("fps_model_only")
    ort_e2e = (limits.get("ort") or {}).get("fps_end_to_end")
    decode = (limits.get("decode_s3") or {}).get("fps")
    plain = summary["s3"].get("plain", {}).get("fps_processed")
    for row in summary["s3"].values():
        fps = row.get("fps_processed")
        row["pct_of_ort_limit"] = round(100 * fps / ort, 1) if fps and ort else None
        row["pct_of_ort_end_to_end"] = round(100 * fps / ort_e2e, 1) if fps and ort_e2e else None
        row["pct_of_decode_limit"] = round(100 * fps / decode, 1) if fps and decode else None
        # decoding and inference share the same cores: both at full speed one after the other bound any pipeline
        row["pct_of_decode_plus_ort"] = round(100 * fps * (1 / decode + 1 / ort_e2e), 1) if fps and decode and ort_e2e \
            else None
        row["x_plain_loop"] = round(fps / plain, 2) if fps and plain else None
    bound_fps = (limits.get("bound") or {}).get("fps")
    alternatives = [r.get("fps_processed") for s, r in summary["s3"].items() if s != "streamd"]
    best_alt = max([f for f in alternatives if f], default=None)
    for system, row in summary["s3"].items():
        fps = row.get("fps_processed")
        row["pct_of_bound"] = round(100 * fps / bound_fps, 1) if fps and bound_fps else None
        row["x_best_alternative"] = round(fps / best_alt, 2) if fps and best_alt and system == "streamd" else None
    for rows in summary["s2"].values():
        for row in rows.values():
            fps, cpu = row.get("fps_processed"), row.get("cpu_pct")
            row["cpu_ms_per_frame"] = round(10 * cpu / fps, 2) if fps and cpu else None
    summary["streamd_stage_cpu_pct"] = stage_cpu(runs)
    summary["bound_streams"] = (limits.get("bound") or {}).get("streams")
    summary["s1_floor_ms"] = (limits.get("bound") or {}).get("s1_floor_ms")
    summary["goals"] = goals(summary, systems)
    return summary


S4_FIELDS = ["streams", "exact_streams", "exact", "holds", "counted_total", "truth_total", "missed_s_max",
             "lag_p50_ms", "lag_p99_ms",
             "latency_p99_ms", "analysed_fps_min", "frames_analysed_per_stream", "lag_frames", "cpu_pct",
             "peak_rss_mb", "tracks_per_frame", "per_stream", "seeds", "error"]


def summarise_s4(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """S4 rows per system and stream count (one run each), the score (largest N held) and whether the sweep
    found the limit (a system that held every N tried has a score that is only a lower bound)."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        if run["scenario"] == "s4":
            rows.setdefault(run["system"], {})[str(run["streams"])] = {k: run.get(k) for k in S4_FIELDS}
    tested = sorted({int(n) for by_n in rows.values() for n in by_n})
    score = {s: max([int(n) for n, r in by_n.items() if r["holds"]], default=0) for s, by_n in rows.items()}
    limit_found = {s: any(not r["holds"] for r in by_n.values()) for s, by_n in rows.items()}
    return {"s4": rows, "s4_score": score, "s4_limit_found": limit_found, "s4_streams_tested": tested}


def stage_cpu(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """streamd's CPU per stage (decode, infer, analytics, sinks, supervisor), median over repeats, per scenario."""
    by_key: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        split = (run.get("extra") or {}).get("stage_cpu_pct")
        if run["system"] == "streamd" and split and not run.get("error"):
            key = run["scenario"] if run["scenario"] not in ("s2", "s4") else f"{run['scenario']} x{run['streams']}"
            by_key.setdefault(key, []).append(split)
    return {key: {stage: _median([s.get(stage) for s in splits]) for stage in sorted({k for s in splits for k in s})}
            for key, splits in by_key.items()}


def goals(summary: dict[str, Any], systems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    s1 = summary["s1"].get("streamd")
    if s1:
        p99 = s1.get("latency_p99_ms")
        out["s1_p99_le_50ms"] = {"value_ms": p99, "met": p99 is not None and p99 <= 50.0
                                 and (s1.get("drop_pct") or 0) < HOLD_DROP_PCT, "drop_pct": s1.get("drop_pct")}
    for label, rows in summary.get("s1_extra", {}).items():
        if "streamd" in rows:
            p99 = rows["streamd"].get("latency_p99_ms")
            out[f"s1_p99_le_50ms[{label}]"] = {"value_ms": p99, "drop_pct": rows["streamd"].get("drop_pct"),
                                               "met": p99 is not None and p99 <= 50.0
                                               and (rows["streamd"].get("drop_pct") or 0) < HOLD_DROP_PCT}
    held = summary["s2_max_streams"]
    s3 = summary["s3"].get("streamd")
    if s3:
        pct, ratio = s3.get("pct_of_bound"), s3.get("x_best_alternative")
        out["s3_90pct_of_bound_and_1.05x_best"] = {
            "pct_of_bound": pct, "x_best_alternative": ratio,
            "met": pct is not None and pct >= 90.0 and (ratio is None or ratio >= 1.05)}
    if "streamd" in held:
        lower = summary.get("s2_lower_bound") or {}
        others = {s: n for s, n in held.items() if s != "streamd"}
        best = max(others.values(), default=0)
        bound_streams = summary.get("bound_streams")
        need = max(1, _ceil(1.3 * best))
        out["s2_1.3x_best_and_85pct_of_bound"] = {
            "streamd": held["streamd"], "best_alternative": best, "needed": need, "bound_streams": bound_streams,
            "needed_for_bound": _ceil(0.85 * bound_streams) if bound_streams is not None else None,
            "alternatives": others, "lower_bound": {s: bool(lower.get(s)) for s in held},
            "met": held["streamd"] >= need and (bound_streams is None or held["streamd"] >= 0.85 * bound_streams)}
    if s1 and "plain" in summary["s1"]:
        plain_lag = summary["s1"]["plain"].get("lag_p99_ms")
        floor = summary.get("s1_floor_ms")
        p50 = s1.get("lag_p50_ms")
        out["s1_lag_p99_le_plain_and_p50_within_15pct_of_floor"] = {
            "lag_p99_ms": s1.get("lag_p99_ms"), "plain_lag_p99_ms": plain_lag, "lag_p50_ms": p50, "floor_ms": floor,
            "met": (s1.get("lag_p99_ms") is not None and plain_lag is not None and s1["lag_p99_ms"] <= plain_lag
                    and (floor is None or (p50 is not None and p50 <= 1.15 * floor)))}
    score = summary.get("s4_score") or {}
    if "streamd" in score:
        others = {s: n for s, n in score.items() if s != "streamd"}
        best = max(others.values(), default=0)
        need = max(1, _ceil(S4_GOAL_X * best))
        out["s4_2x_best_alternative"] = {
            "streamd": score["streamd"], "best_alternative": best, "alternatives": others, "needed": need,
            "streamd_limit_found": summary["s4_limit_found"].get("streamd"),
            "alternatives_compared": bool(others), "met": bool(others) and score["streamd"] >= need}
    s2 = summary["s2"]
    n = cpu_goal_streams(s2)
    if n is not None:
        mine, theirs = s2["streamd"][str(n)]["cpu_ms_per_frame"], s2["plain"][str(n)]["cpu_ms_per_frame"]
        ratio = round(mine / theirs, 2)
        out["cpu_per_frame_s2_le_0.6x_plain"] = {"streams": n, "streamd_ms": mine, "plain_ms": theirs, "ratio": ratio,
                                                 "met": ratio <= 0.6}
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "nothing"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    meta, summary, limits = result["meta"], result["summary"], result["limits"]
    m = meta["machine"]
    parts = [
        "# Pipeline benchmark", "",
        f"`python -m tools.bench_pipeline {' '.join(meta['argv'])}` — {meta['started_at']}, commit "
        f"{meta.get('commit') or '?'}; {m['cpu']}, {m['logical_cores']} logical cores, {m['memory_gb']} GB; "
        f"onnxruntime {m['onnxruntime']}. Load average (1, 5, 15 min) at start {meta['load_start']}, at end "
        f"{meta['load_end']}. Model `{meta['model']}` at {meta['imgsz']} px, same file for every system. "
        f"Medians over {meta['repeats']} repeat(s); {meta['warmup_s']} s warm-up then {meta['duration_s']} s "
        "measured per live run" + (f" (S2: {meta['s2']['warmup_s']} s then {meta['s2']['duration_s']} s)"
                                   if meta.get("s2") else "") + ".", "",
        "Latency: frame decoded → tracked result published (p50/p99/max). Lag: camera sent the frame → "
        "published, which also counts time a frame waited before it was decoded (a lower bound, see "
        "docs/benchmarks.md). Drops: frames the cameras sent in the window but the system never published. "
        "CPU: % of one core, whole process tree. Peak RSS: sum over the tree (shared pages counted in each "
        "process).", "",
    ]
    live_header = ["system", "fps", "drop %", "p50 ms", "p99 ms", "max ms", "lag p50 ms", "lag p99 ms", "CPU %",
                   "peak RSS MB", "tracks/frame", "errors"]
    if summary["s1"]:
        parts += [f"## S1 latency: one live RTSP source, {meta['s1_clip']}", "",
                  _table(live_header, [[s, r["fps_processed"], r["drop_pct"], r["latency_p50_ms"],
                                        r["latency_p99_ms"], r["latency_max_ms"], r["lag_p50_ms"], r["lag_p99_ms"],
                                        r["cpu_pct"], r["peak_rss_mb"], r["tracks_per_frame"],
                                        "; ".join(r["errors"]) or ""] for s, r in summary["s1"].items()]), ""]
    for label, by_system in summary.get("s1_extra", {}).items():
        parts += [f"## S1 latency with `{label}` ({meta['s1_extra_models'].get(label, label)}), {meta['s1_clip']}", "",
                  _table(live_header, [[s, r["fps_processed"], r["drop_pct"], r["latency_p50_ms"],
                                        r["latency_p99_ms"], r["latency_max_ms"], r["lag_p50_ms"], r["lag_p99_ms"],
                                        r["cpu_pct"], r["peak_rss_mb"], r["tracks_per_frame"],
                                        "; ".join(r["errors"]) or ""] for s, r in by_system.items()]), ""]
    if summary["s2"]:
        rows = []
        for system, by_n in summary["s2"].items():
            for n, r in sorted(by_n.items(), key=lambda kv: int(kv[0])):
                rows.append([system, n, r["fps_processed"], r["drop_pct"], r["latency_p50_ms"], r["latency_p99_ms"],
                             r["lag_p50_ms"], r["lag_p99_ms"], r["cpu_pct"], r.get("cpu_ms_per_frame"),
                             r["peak_rss_mb"], "yes" if holds(r) else "no", "; ".join(r["errors"]) or ""])
        lower = summary.get("s2_lower_bound") or {}
        held = ", ".join(f"{s} {n}" + (" (lower bound: held every N run)" if lower.get(s) else "")
                         for s, n in summary["s2_max_streams"].items())
        s2 = meta.get("s2") or {}
        if s2.get("stops_at_first_failure"):
            planned = s2["streams_planned"]
            ns = ", ".join(map(str, planned)) if len(planned) <= 4 else f"1, 2, 3, … up to {planned[-1]}"
            how = f"N = {ns}, each system's sweep stopping after its first N that does not hold"
        elif s2.get("sweep"):
            how = f"every N from 1 to {max(s2['streams_planned'])} for every system (--s2-keep-going)"
        else:
            how = "the N given with --streams, for every system"
        parts += [f"## S2 scale: live RTSP sources, {meta['s2_clip']}", "",
                  f"Runs: {how}. Most streams held: the largest N up to which every N a system ran held, judged on the "
                  "medians over the repeats.", "",
                  _table(["system", "streams", "fps", "drop %", "p50 ms", "p99 ms", "lag p50 ms", "lag p99 ms", "CPU %",
                          "CPU ms/frame", "peak RSS MB",
                          f"holds (lag p99 ≤ {HOLD_P99_MS:g} ms, drops < {HOLD_DROP_PCT:g} %)", "errors"], rows), "",
                  f"Most streams held (by lag): {held}; the bound: {_fmt(summary.get('bound_streams'))}.", ""]
    if summary["s3"]:
        parts += [f"## S3 throughput: {meta['s3_files']} file(s), every frame, as fast as possible, {meta['s3_clip']}",
                  "", _table(["system", "fps", "% of the bound", "x best alternative", "% of ORT limit",
                              "x plain loop", "p99 ms", "CPU %", "peak RSS MB", "tracks/frame", "errors"],
                             [[s, r["fps_processed"], r.get("pct_of_bound"), r.get("x_best_alternative"),
                               r["pct_of_ort_limit"], r["x_plain_loop"], r["latency_p99_ms"], r["cpu_pct"],
                               r["peak_rss_mb"], r["tracks_per_frame"], "; ".join(r["errors"]) or ""]
                              for s, r in summary["s3"].items()]),
                  ""]
    if summary.get("s4"):
        s4 = meta.get("s4") or {}
        rows = []
        for system, by_n in summary["s4"].items():
            for n, r in sorted(by_n.items(), key=lambda kv: int(kv[0])):
                rows.append([system, n, f"{r['exact_streams']}/{n}",
                             f"{_fmt(r['counted_total'])}/{_fmt(r['truth_total'])}",
                             r["missed_s_max"], r["lag_p50_ms"], r["lag_p99_ms"], r["analysed_fps_min"], r["cpu_pct"],
                             r["peak_rss_mb"],
                             "yes" if r["holds"] else "no", r["error"] or ""])
        score = ", ".join(f"{s} {n}" + ("" if summary["s4_limit_found"].get(s) else " (held every N tried)")
                          for s, n in summary["s4_score"].items())
        parts += [f"## S4 counting at scale: N live cameras, {s4.get('size', '640x360')} at {s4.get('fps', 15)} fps, "
                  f"a different {_fmt(s4.get('scene_s'))} s scene each", "",
                  _table(["system", "streams", "streams exact", "counted/expected", "start missed s (max)",
                          "lag p50 ms", "lag p99 ms",
                          "analysed fps/stream (min)", "CPU %", "peak RSS MB",
                          f"holds (all exact, lag p99 ≤ {S4_LAG_P99_MS:g} ms)", "errors"], rows), "",
                  f"Score (most streams held; a system's sweep stops at its first failure): {score}.", ""]
        misses = []
        for system, by_n in summary["s4"].items():
            for n, r in sorted(by_n.items(), key=lambda kv: int(kv[0])):
                for p in r.get("per_stream") or []:
                    if not p["exact"]:
                        misses.append(f"{system} x{n} {p['stream']} (seed {p['seed']}): counted "
                                      f"{_counts(p['counted'])}, expected {_counts(p['truth'])}")
        if misses:
            parts += ["Streams not counted exactly: " + "; ".join(misses) + ".", ""]
        settings = s4.get("settings") or {}
        parts += [f"Every stream: one held-out scene (seeds {', '.join(map(str, s4.get('seeds', [])))}, in stream "
                  "order), played once from its first frame to each client (a reconnect is refused), no product "
                  f"crossing in its first and last {_fmt(s4.get('lead_in_s'))} s; counts are judged per stream and "
                  "class against the scene's truth once it ended; lag from "
                  f"{_fmt(s4.get('warmup_s'))} s after every stream's first published frame. \"start missed\": the "
                  "scene's first seconds a system never decoded (a reader that opens its cameras one after another, "
                  "or drops what FFmpeg read while probing). Settings:", ""]
        parts += [f"- {system}: {text}" for system, text in settings.items() if system in summary["s4"]]
        parts += [""]
    if limits:
        parts += ["## Limits", ""]
        rows = [[f"decode only ({d['clip']}, {d['thread_type']} threads)", d["fps"]]
                for d in limits.get("decode", [])]
        ort = limits.get("ort")
        if ort:
            rows += [[f"ONNX Runtime, batch {r['batch']}, {ort['threads']} threads: model only / with pre+post",
                      f"{r['model_images_per_s']} / {r['images_per_s']}"] for r in ort["by_batch"]]
            rows.append([f"ORT limit (best batch {ort['best_batch']}, model only)", ort["fps_model_only"]])
        parts += [_table(["limit", "frames/s"], rows), ""]
        b = limits.get("bound")
        if b:
            c = b["cost_cpu_ms"]
            parts += ["## The bound: per-frame CPU costs measured in this run", "",
                      _table(["decode", "pre-processing", "ORT (cheapest setting)", "post-processing", "tracking",
                              "total", "cores", "bound frames/s", f"bound streams at {b['stream_fps']:g} fps",
                              "S1 single-frame floor ms"],
                             [[c["decode"], c["preprocess"], c["ort"], c["postprocess"], c["tracking"],
                               b["total_cpu_ms"], b["cores"], b["fps"], b["streams"], b.get("s1_floor_ms")]]), "",
                      "CPU ms per frame; bound = cores × 1000 / total. ORT cheapest: "
                      f"batch {b['ort_cheapest']['batch']}, {b['ort_cheapest']['threads']} thread(s), spin "
                      f"{'on' if b['ort_cheapest']['spin'] else 'off'} ({b['ort_cheapest']['cpu_ms_per_image']} ms CPU "
                      f"per image); fastest: batch {b['ort_fastest']['batch']}, {b['ort_fastest']['threads']} "
                      f"thread(s), spin {'on' if b['ort_fastest']['spin'] else 'off'}, "
                      f"{b['ort_fastest']['images_per_s']} images/s.", ""]
    if summary.get("streamd_stage_cpu_pct"):
        stages = ["decode", "infer", "analytics", "sinks", "supervisor"]
        parts += ["## streamd CPU by stage (% of one core; decode summed over streams)", "",
                  _table(["scenario", *stages], [[key, *[split.get(st) for st in stages]]
                                                 for key, split in summary["streamd_stage_cpu_pct"].items()]), ""]
    if summary["goals"]:
        g = summary["goals"]
        rows = []
        def verdict(x: dict[str, Any]) -> str:
            return "met" if x["met"] else "not met"

        if "s1_p99_le_50ms" in g:
            rows.append(["S1 streamd p99 ≤ 50 ms (drops < 1 %)", f"{_fmt(g['s1_p99_le_50ms']['value_ms'])} ms",
                         verdict(g["s1_p99_le_50ms"])])
        x = g.get("s1_lag_p99_le_plain_and_p50_within_15pct_of_floor")
        if x:
            rows.append(["S1 lag p99 ≤ plain loop's, lag p50 ≤ 1.15 × single-frame floor",
                         f"p99 {_fmt(x['lag_p99_ms'])} vs {_fmt(x['plain_lag_p99_ms'])} ms; p50 {_fmt(x['lag_p50_ms'])} "
                         f"vs floor {_fmt(x['floor_ms'])} ms", verdict(x)])
        x = g.get("s2_1.3x_best_and_85pct_of_bound")
        if x:
            lb = x.get("lower_bound") or {}

            def held_n(system: str, n: int) -> str:
                return f"{n}" + (" (lower bound)" if lb.get(system) else "")

            alts = ", ".join(f"{s} {held_n(s, n)}" for s, n in x["alternatives"].items()) or "none run"
            bound = (f"bound {_fmt(x['bound_streams'])} (needs {x['needed_for_bound']})"
                     if x["bound_streams"] is not None else "bound not measured")
            rows.append(["S2 streams held (lag) ≥ 1.3× best alternative and ≥ 85 % of the bound",
                         f"streamd {held_n('streamd', x['streamd'])} vs {alts} (needs {x['needed']}); {bound}",
                         verdict(x)])
        x = g.get("s3_90pct_of_bound_and_1.05x_best")
        if x:
            rows.append(["S3 ≥ 90 % of the bound and ≥ 1.05× best alternative",
                         f"{_fmt(x['pct_of_bound'])} % of the bound, {_fmt(x['x_best_alternative'])}×", verdict(x)])
        x = g.get("s4_2x_best_alternative")
        if x:
            alts = ", ".join(f"{s} {n}" for s, n in x["alternatives"].items()) or "none run"
            rows.append([f"S4: streamd ≥ {S4_GOAL_X:g}× best alternative (streams counted exactly, lag p99 ≤ "
                         f"{S4_LAG_P99_MS:g} ms)",
                         f"streamd {x['streamd']}" + ("" if x["streamd_limit_found"] else " (held every N tried)")
                         + f" vs {alts} (needs {x['needed']})",
                         verdict(x) if x["alternatives_compared"] else "no alternative run"])
        x = g.get("cpu_per_frame_s2_le_0.6x_plain")
        if x:
            rows.append([f"CPU per analysed frame at S2 × {x['streams']} ≤ 0.6× plain loop"
                         + ("" if x["streams"] == 4 else " (× 4 not run by both)"),
                         f"{_fmt(x['streamd_ms'])} vs {_fmt(x['plain_ms'])} ms ({_fmt(x['ratio'])}×)", verdict(x)])
        parts += ["## Goals", "", _table(["goal", "measured", "result"], rows), ""]
    if meta.get("skipped"):
        parts += ["Skipped: " + "; ".join(f"{k}: {v}" for k, v in meta["skipped"].items()), ""]
    return "\n".join(parts)


def write_csv(runs: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(runs)


def plots(summary: dict[str, Any], out: Path, fps: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    if summary["s2"]:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for system, by_n in summary["s2"].items():  # every N run; a cross where it did not hold
            ns = sorted(int(n) for n in by_n)
            lag = [by_n[str(n)]["lag_p99_ms"] for n in ns]
            got = [by_n[str(n)]["fps_processed"] for n in ns]
            (line,) = ax1.plot(ns, [v if v is not None else float("nan") for v in lag], "o-", label=system)
            failed = [(n, v) for n, v in zip(ns, lag) if v is not None and not holds(by_n[str(n)])]
            if failed:
                ax1.plot(*zip(*failed), "x", color=line.get_color(), ms=10, mew=2)
            ax2.plot(ns, [v if v is not None else float("nan") for v in got], "o-", label=system)
        ns = summary["s2_streams_tested"]
        ax1.axhline(HOLD_P99_MS, color="grey", ls="--", lw=1, label=f"{HOLD_P99_MS:g} ms (× not held)")
        ax2.plot(ns, [fps * n for n in ns], color="grey", ls="--", lw=1, label="all frames")
        ax1.set(xlabel="live streams", ylabel="lag p99 (ms)", yscale="log", title="S2 lag p99 vs streams",
                xticks=ns)
        ax2.set(xlabel="live streams", ylabel="frames/s processed", title="S2 processed fps vs streams", xticks=ns)
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "bench_s2_scale.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    if summary.get("s4"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ns = summary["s4_streams_tested"]
        for system, by_n in summary["s4"].items():
            tried = sorted(int(n) for n in by_n)
            ax1.plot(tried, [by_n[str(n)]["exact_streams"] for n in tried], "o-", label=system, alpha=0.8)
            lag = [by_n[str(n)]["lag_p99_ms"] for n in tried]
            ax2.plot(tried, [v if v is not None else float("nan") for v in lag], "o-", label=system)
        ax1.plot(ns, ns, color="grey", ls="--", lw=1, label="every stream")
        ax2.axhline(S4_LAG_P99_MS, color="grey", ls="--", lw=1, label=f"{S4_LAG_P99_MS:g} ms limit")
        ax1.set(xlabel="live streams", ylabel="streams counted exactly", title="S4 exact counts vs streams", xticks=ns,
                ylim=(0, max(ns, default=1) + 0.5))
        ax1.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax2.set(xlabel="live streams", ylabel="lag p99 (ms)", yscale="log", title="S4 lag p99 vs streams", xticks=ns)
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "bench_s4_counting.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def write_all(result: dict[str, Any], out: Path, fps: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "results.md").write_text(markdown(result))
    write_csv(result["runs"], out / "runs.csv")
    return [out / "results.json", out / "results.md", out / "runs.csv", *plots(result["summary"], out, fps)]
