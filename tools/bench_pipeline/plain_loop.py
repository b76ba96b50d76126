"""System 3: the single-process loop most tutorials show — OpenCV capture, ONNX Runtime, ByteTrack.

    python -m tools.bench_pipeline.plain_loop --model M.onnx --imgsz 320 --source rtsp://... --out rec.json

One process, one thread: for each source in turn, ``cap.read()``, letterbox, ``session.run``, decode
the YOLOv8/11 output with ``cv2.dnn.NMSBoxes``, ``ByteTrackTracker.update`` (the `trackers` package;
supervision >= 0.26 no longer ships ``sv.ByteTrack``) and ``json.dumps`` of the tracks. Nothing
here is tuned beyond what such tutorials do; that is the point of the comparison. Writes
measure.RunRecords as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import supervision as sv
from trackers import ByteTrackTracker

from tools.bench_pipeline.measure import RunRecords


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    nh, nw = round(h * r), round(w * r)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    blob = cv2.dnn.blobFromImage(canvas, 1 / 255.0, swapRB=True)
    return blob, r, (left, top)


def decode(output: np.ndarray, r: float, pad: tuple[int, int], conf: float, iou: float) -> sv.Detections:
    pred = output[0].T  # [N, 4 + nc]
    scores = pred[:, 4:].max(axis=1)
    keep = scores > conf
    pred, scores = pred[keep], scores[keep]
    if not len(pred):
        return sv.Detections.empty()
    class_id = pred[:, 4:].argmax(axis=1)
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)
    idx = np.asarray(cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), conf, iou), dtype=int).reshape(-1)
    b = boxes[idx]
    xyxy = np.stack([b[:, 0] - pad[0], b[:, 1] - pad[1], b[:, 0] + b[:, 2] - pad[0], b[:, 1] + b[:, 3] - pad[1]],
                    axis=1) / r
    return sv.Detections(xyxy=xyxy.astype(np.float32), confidence=scores[idx].astype(np.float32),
                         class_id=class_id[idx].astype(int))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_pipeline.plain_loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--source", action="append", required=True)
    parser.add_argument("--live", action="store_true", help="stop after --warmup + --duration s of frames")
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    run = RunRecords("plain", len(args.source), decoded=[0] * len(args.source))
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    caps = [cv2.VideoCapture(s, cv2.CAP_FFMPEG) for s in args.source]
    for s, cap in zip(args.source, caps):
        if not cap.isOpened():
            run.error = f"cannot open {s}"
            run.save(args.out)
            return 1
    tracker_list = [ByteTrackTracker() for _ in args.source]
    open_caps = set(range(len(caps)))
    deadline = None
    sink = open("/dev/null", "w")
    try:
        while open_caps and not stop:
            for i in sorted(open_caps):
                ok, frame = caps[i].read()
                t_decoded = time.monotonic_ns()
                if not ok:
                    open_caps.discard(i)
                    continue
                run.decoded[i] += 1
                pts_us = int(caps[i].get(cv2.CAP_PROP_POS_MSEC) * 1000)
                if not run.started_ns:
                    run.started_ns = t_decoded
                    deadline = t_decoded + int((args.warmup + args.duration + 0.5) * 1e9) if args.live else None
                blob, r, pad = letterbox(frame, args.imgsz)
                output = session.run(None, {input_name: blob})[0]
                detections = decode(output, r, pad, args.conf, 0.45)
                tracks = tracker_list[i].update(detections)
                sink.write(json.dumps({"stream": i, "tracks": [
                    {"id": int(t), "class_id": int(c), "xyxy": [round(float(v), 1) for v in box]}
                    for t, c, box in zip(tracks.tracker_id, tracks.class_id, tracks.xyxy)]}) + "\n")
                run.records.append((i, t_decoded, time.monotonic_ns(), pts_us, len(tracks)))
            if deadline is not None and time.monotonic_ns() > deadline:
                break
    finally:
        for cap in caps:
            cap.release()
        sink.close()
        run.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
