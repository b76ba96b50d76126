"""System 4, the limits no pipeline can beat on this machine: decoding alone, and ONNX Runtime alone.

Decode-only: PyAV decodes the clip, every frame to BGR arrays as streamd's decoder hands them over,
with FFmpeg frame threading (what streamd uses for files) — nothing else runs.
ONNX Runtime alone: tools.bench_models (streamd's own inference path, session built as `load_model`
builds it) on frames decoded beforehand, at each batch size; the best batch gives the limit. Both the
model call alone and the whole detector call (letterbox, tensor, model, decode, NMS) are reported.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import av
import numpy as np


def decode_fps(path: Path, thread_type: str = "AUTO", max_frames: int | None = None) -> dict[str, Any]:
    frames = 0
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        for frame in container.decode(stream):
            frame.to_ndarray(format="bgr24")
            frames += 1
            if max_frames and frames >= max_frames:
                break
        width, height = stream.codec_context.width, stream.codec_context.height
    seconds = time.perf_counter() - started
    return {"clip": path.name, "width": width, "height": height, "thread_type": thread_type, "frames": frames,
            "seconds": round(seconds, 3), "fps": round(frames / seconds, 1) if seconds > 0 else None}


def sample_frames(path: Path, count: int) -> list[np.ndarray]:
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="bgr24"))
            if len(out) >= count:
                break
    return out


def ort_limit(model: Path, frames: list[np.ndarray], batches: list[int], runs: int, warmup: int,
              threads: int | None = None) -> dict[str, Any]:
    """Images per second through ONNX Runtime at each batch size (streamd's session settings), and the best."""
    from tools.bench_models.__main__ import bench_one

    threads = threads or os.cpu_count() or 1
    rows = []
    for batch in batches:
        row = bench_one(model, None, "CPUExecutionProvider", threads, batch, frames, None, runs, warmup)
        row["model_images_per_s"] = round(batch * 1000 / row["model_median_ms"], 1)
        rows.append(row)
    best = max(rows, key=lambda r: r["model_images_per_s"])
    best_e2e = max(rows, key=lambda r: r["images_per_s"])
    return {"threads": threads, "by_batch": rows, "best_batch": best["batch"],
            "fps_model_only": best["model_images_per_s"], "best_batch_end_to_end": best_e2e["batch"],
            "fps_end_to_end": best_e2e["images_per_s"]}


def _cpu_per_item(fn: Any, items: list[Any], repeat: int = 1) -> float:
    """CPU milliseconds (this process, all threads) per item of ``fn(item)``."""
    start = time.process_time()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return (time.process_time() - start) * 1000 / (len(items) * repeat)


def decode_cost_ms(path: Path, max_frames: int = 300) -> float:
    """CPU ms to decode one frame to BGR, single-threaded (what any system pays per frame, on one core)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.thread_count = 1
        start = time.process_time()
        frames = 0
        for frame in container.decode(stream):
            frame.to_ndarray(format="bgr24")
            frames += 1
            if frames >= max_frames:
                break
    return (time.process_time() - start) * 1000 / max(1, frames)


def ort_settings(model: Path, batches: list[int], runs: int, cores: int) -> list[dict[str, Any]]:
    """ONNX Runtime alone on zeros: images/s (wall) and CPU ms per image for every batch x threads x spin."""
    import onnxruntime as ort

    rows = []
    for threads in sorted({1, cores}):
        for spin in (False, True):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
            session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
            inp = session.get_inputs()[0]
            h, w = (d if isinstance(d, int) else 320 for d in inp.shape[-2:])
            for batch in batches:
                x = np.zeros((batch, 3, h, w), np.float32)
                for _ in range(2):
                    session.run(None, {inp.name: x})
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(runs):
                    session.run(None, {inp.name: x})
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                rows.append({"threads": threads, "spin": spin, "batch": batch,
                             "images_per_s": round(batch * runs / wall, 1),
                             "cpu_ms_per_image": round(cpu * 1000 / (batch * runs), 3),
                             "wall_ms_per_run": round(wall * 1000 / runs, 3)})
    return rows


def bound(model: Path, s2_clip: Path, s1_clip: Path | None, frames: list[np.ndarray], batches: list[int],
          runs: int, stream_fps: float) -> dict[str, Any]:
    """The most frames a second this machine can analyse, from per-frame costs measured here and now.

    Costs in CPU milliseconds per frame, each at its best: decoding (one core, BGR), pre-processing (letterbox +
    tensor) and post-processing (output decode + NMS) as streamd does them, ONNX Runtime alone at the batch,
    thread count and spin setting that cost the least CPU per image, and tracking plus line counting.
    With every core busy doing only these, ``cores * 1000 / sum`` frames a second is the bound; divided by
    the stream frame rate it is the bound's stream count. The single-frame floor (S1): decoding a frame of the
    S1 clip + pre/post-processing + one batch-1 model call at its fastest wall time.
    """
    from streamd.analytics.stream import StreamAnalytics
    from streamd.config.models import PipelineConfig
    from streamd.infer.model import load_model
    from streamd.infer.postprocess import PostprocessParams, finish
    from streamd.infer.preprocess import letterbox_into, to_tensor

    cores = os.cpu_count() or 1
    loaded = load_model(str(model), intra_op_threads=1)
    spec = loaded.adapter.preprocess
    h, w = loaded.input_hw
    pixels = np.zeros((1, h, w, 3), spec.pixel_dtype)
    tensor = np.zeros((1, 3, h, w), np.float32)
    pre_ms = _cpu_per_item(lambda f: to_tensor(pixels, spec, tensor) if letterbox_into(f, pixels[0], spec) else None,
                           frames, repeat=3)
    params = PostprocessParams(confidence=0.25)
    outputs = []
    for f in frames:
        transform = letterbox_into(f, pixels[0], spec)
        outputs.append((loaded.run(to_tensor(pixels, spec, tensor).copy()), transform, f.shape))
    dets = []

    def post(item: tuple[list[np.ndarray], Any, tuple[int, ...]]) -> None:
        out, transform, shape = item
        dets.append(finish(loaded.adapter.decode(out, 0, params.confidence), params, transform, shape[1], shape[0]))

    post_ms = _cpu_per_item(post, outputs)
    height, width = frames[0].shape[:2]
    pipeline = PipelineConfig(model=str(model), confidence=0.25, lines=[
        {"name": "exit", "points": [[width / 2, height], [width / 2, 0]], "anchor": "center"}])
    analytics = StreamAnalytics(pipeline, loaded.names)
    clock = iter(range(10**9))
    track_ms = _cpu_per_item(lambda d: analytics.update(d.xyxy, d.confidence, d.class_id, next(clock) / stream_fps),
                             dets[: len(frames)] * 4)
    settings = ort_settings(model, batches, runs, cores)
    cheapest = min(settings, key=lambda r: r["cpu_ms_per_image"])
    fastest_b1 = min((r for r in settings if r["batch"] == 1), key=lambda r: r["wall_ms_per_run"])
    fastest = max(settings, key=lambda r: r["images_per_s"])
    decode_ms = decode_cost_ms(s2_clip)
    costs = {"decode": round(decode_ms, 3), "preprocess": round(pre_ms, 3), "ort": cheapest["cpu_ms_per_image"],
             "postprocess": round(post_ms, 3), "tracking": round(track_ms, 3)}
    total = sum(costs.values())
    fps = cores * 1000 / total
    out: dict[str, Any] = {
        "cores": cores, "cost_cpu_ms": costs, "total_cpu_ms": round(total, 3), "fps": round(fps, 1),
        "streams": int(fps // stream_fps), "stream_fps": stream_fps,
        "ort_cheapest": cheapest, "ort_fastest": fastest, "ort_fastest_batch1": fastest_b1, "ort_settings": settings,
    }
    if s1_clip is not None:
        s1_decode = decode_cost_ms(s1_clip, max_frames=150)
        out["s1_floor_ms"] = round(s1_decode + pre_ms + fastest_b1["wall_ms_per_run"] + post_ms, 2)
        out["s1_floor_parts_ms"] = {"decode": round(s1_decode, 3), "preprocess": round(pre_ms, 3),
                                    "ort_batch1": fastest_b1["wall_ms_per_run"], "postprocess": round(post_ms, 3)}
    return out
