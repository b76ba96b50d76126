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
