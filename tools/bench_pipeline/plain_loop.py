"""System 3: the single-process loop most tutorials show — OpenCV capture, ONNX Runtime, ByteTrack.

    python -m tools.bench_pipeline.plain_loop --model M.onnx --imgsz 320 --source rtsp://... --out rec.json

One process, one thread: for each source in turn, ``cap.read()``, letterbox, ``session.run``, decode
the YOLOv8/11 output with ``cv2.dnn.NMSBoxes``, ``ByteTrackTracker.update`` (the `trackers` package;
supervision >= 0.26 no longer ships ``sv.ByteTrack``) and ``json.dumps`` of the tracks. Nothing
here is tuned beyond what such tutorials do; that is the point of the comparison. Writes
measure.RunRecords as JSON to --out.

``--stride 3`` analyses every 3rd frame of each source (the others are read and skipped, as tutorials
do with a frame counter). ``--line-x 320`` counts products as tutorials do: a track counts once when
its box centre crosses the vertical line x = 320 from left to right (LineCounter below); the counts
per source and class go into the result's ``extra["counts"]``.
"""

from __future__ import annotations

import argparse
import ast
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


class LineCounter:
    """Counts each track once when its box centre crosses x = ``line_x`` from left to right.

    Remembers every track's last centre; a track whose centre was left of the line and now is on or right
    of it counts for the class it has at that frame. Tracks without an id (negative) are ignored.
    """

    def __init__(self, line_x: float, names: dict[int, str]):
        self.line_x = float(line_x)
        self.names = names
        self.last_x: dict[int, float] = {}
        self.counted: set[int] = set()
        self.counts: dict[str, int] = {}

    def update(self, track_ids: np.ndarray, class_ids: np.ndarray, xyxy: np.ndarray) -> list[int]:
        """Feed one analysed frame's tracks; returns the ids counted in it."""
        crossed = []
        for tid, cid, box in zip(track_ids, class_ids, xyxy):
            tid = int(tid)
            if tid < 0:
                continue
            cx = (float(box[0]) + float(box[2])) / 2
            prev = self.last_x.get(tid)
            self.last_x[tid] = cx
            if prev is not None and prev < self.line_x <= cx and tid not in self.counted:
                self.counted.add(tid)
                name = self.names.get(int(cid), str(int(cid)))
                self.counts[name] = self.counts.get(name, 0) + 1
                crossed.append(tid)
        return crossed


def class_names(session: ort.InferenceSession) -> dict[int, str]:
    """Class names an ultralytics export stores in the ONNX metadata (``{0: 'box', ...}``); ids otherwise."""
    names = session.get_modelmeta().custom_metadata_map.get("names")
    try:
        return {int(k): str(v) for k, v in ast.literal_eval(names).items()} if names else {}
    except (ValueError, SyntaxError, AttributeError):
        return {}


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
    parser.add_argument("--stride", type=int, default=1, help="analyse every Nth frame of each source")
    parser.add_argument("--line-x", type=float, help="count left-to-right crossings of the vertical line x = this")
    parser.add_argument("--max-seconds", type=float, default=0.0,
                        help="stop this long after the first frame (instead of --warmup + --duration; "
                             "0: when the sources end)")
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
    names = class_names(session)
    counters = [LineCounter(args.line_x, names) for _ in args.source] if args.line_x is not None else []
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
                if (run.decoded[i] - 1) % args.stride:  # every Nth frame of each source, from its first
                    continue
                pts_us = int(caps[i].get(cv2.CAP_PROP_POS_MSEC) * 1000)
                if not run.started_ns:
                    run.started_ns = t_decoded
                    seconds = args.max_seconds or (args.warmup + args.duration + 0.5 if args.live else 0)
                    deadline = t_decoded + int(seconds * 1e9) if seconds else None
                blob, r, pad = letterbox(frame, args.imgsz)
                output = session.run(None, {input_name: blob})[0]
                detections = decode(output, r, pad, args.conf, 0.45)
                tracks = tracker_list[i].update(detections)
                if counters and tracks.tracker_id is not None and tracks.class_id is not None:
                    counters[i].update(tracks.tracker_id, tracks.class_id, tracks.xyxy)
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
        if counters:
            run.extra["counts"] = [c.counts for c in counters]
        run.extra["stride"] = args.stride
        run.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
