"""System 2: ultralytics' own streaming API, run in the training interpreter (the `train` extra).

    .venv-train/bin/python -m tools.bench_pipeline.ultra_loop --model M.onnx --imgsz 320 \\
        --source rtsp://127.0.0.1:8560/cam0 --source rtsp://... --live --warmup 5 --duration 20 --out rec.json

Live sources go into a ``.streams`` text file and through ``YOLO(model).track(streams, stream=True)``
(ultralytics' LoadStreams: one reader thread per source keeping the newest frame, one batch over all
streams, one ByteTrack per stream). Files run one after another through ``track(file, stream=True)``,
every frame. Nothing is changed in ultralytics; to time a frame from decoded to result, the
``cv2.VideoCapture`` class it opens sources with is replaced by a subclass that notes when each
frame array came out of ``read``/``retrieve``; the result's ``orig_img`` is that same array.
Writes measure.RunRecords as JSON to --out.

``--vid-stride 3`` is ultralytics' own frame skipping (``vid_stride``: LoadStreams grabs every frame
and retrieves every 3rd). ``--line-x 320`` counts from the track ids as a user would by hand: a track
counts once when its box centre crosses the vertical line x = 320 from left to right (the rule of
plain_loop.LineCounter, written out here because this runs in the training interpreter); the counts
per source and class go into ``extra["counts"]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tools.bench_pipeline.measure import RunRecords  # noqa: E402
from tools.offline import prepare_offline_ultralytics  # noqa: E402

_STAMPS: OrderedDict[int, tuple[int, int, int]] = OrderedDict()  # id(frame array) -> (stream, t_decoded_ns, pts_us)
_STAMPS_MAX = 4096
_LOCK = threading.Lock()


def install_timed_capture(run: RunRecords) -> None:
    import cv2

    base = cv2.VideoCapture
    opened: list[int] = []

    class TimedCapture(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with _LOCK:
                self._stream = len(opened)
                opened.append(self._stream)
                run.decoded.append(0)

        def _stamp(self, ok: bool, image):
            if ok and image is not None:
                now = time.monotonic_ns()
                pts_us = int(self.get(cv2.CAP_PROP_POS_MSEC) * 1000)
                with _LOCK:
                    _STAMPS[id(image)] = (self._stream, now, pts_us)
                    if len(_STAMPS) > _STAMPS_MAX:
                        _STAMPS.popitem(last=False)
                    run.decoded[self._stream] += 1
            return ok, image

        def read(self, *args):
            return self._stamp(*super().read(*args))

        def retrieve(self, *args):
            return self._stamp(*super().retrieve(*args))

    cv2.VideoCapture = TimedCapture


class HandCounter:
    """One source's line: each track id counts once when its box centre goes from x < line to x >= line."""

    def __init__(self, line_x: float, names: dict[int, str]):
        self.line_x, self.names = float(line_x), names
        self.last_x: dict[int, float] = {}
        self.counted: set[int] = set()
        self.counts: dict[str, int] = {}

    def update(self, ids: list[int], classes: list[float], boxes: list[list[float]]) -> None:
        for tid, cid, box in zip(ids, classes, boxes):
            if tid < 0:
                continue
            cx = (box[0] + box[2]) / 2
            prev = self.last_x.get(tid)
            self.last_x[tid] = cx
            if prev is not None and prev < self.line_x <= cx and tid not in self.counted:
                self.counted.add(tid)
                name = self.names.get(int(cid), str(int(cid)))
                self.counts[name] = self.counts.get(name, 0) + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_pipeline.ultra_loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--source", action="append", required=True)
    parser.add_argument("--live", action="store_true", help="stop after --warmup + --duration s of frames")
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--vid-stride", type=int, default=1, help="ultralytics vid_stride: analyse every Nth frame")
    parser.add_argument("--line-x", type=float, help="count left-to-right crossings of the vertical line x = this")
    parser.add_argument("--max-seconds", type=float, default=0.0,
                        help="stop this long after the first frame (instead of --warmup + --duration; "
                             "0: when the sources end)")
    parser.add_argument("--config-dir", type=Path, default=REPO / "out" / "bench-pipeline" / "yolo-config")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run = RunRecords("ultralytics", len(args.source))
    prepare_offline_ultralytics(args.config_dir)
    install_timed_capture(run)
    from ultralytics import YOLO

    model = YOLO(args.model, task="detect")
    kwargs = {"imgsz": args.imgsz, "conf": args.conf, "device": "cpu", "verbose": False, "stream": True,
              "tracker": "bytetrack.yaml", "persist": False, "vid_stride": args.vid_stride}
    names = {int(k): str(v) for k, v in model.names.items()}
    counters = [HandCounter(args.line_x, names) for _ in args.source] if args.line_x is not None else []
    if args.live:
        streams = args.out.with_suffix(".streams")
        streams.write_text("\n".join(args.source) + "\n")
        sources = [str(streams)]
    else:
        sources = list(args.source)
    unmatched = 0
    sink = open("/dev/null", "w")
    try:
        for source in sources:
            results = model.track(source, **kwargs)
            deadline = None
            for result in results:
                with _LOCK:
                    stamp = _STAMPS.pop(id(result.orig_img), None)
                if stamp is None:
                    unmatched += 1
                    continue
                stream, t_decoded, pts_us = stamp
                boxes = result.boxes
                ids = boxes.id.int().tolist() if boxes.id is not None else [-1] * len(boxes)
                if counters:
                    counters[stream].update(ids, boxes.cls.tolist(), boxes.xyxy.tolist())
                sink.write(json.dumps({"stream": stream, "tracks": [
                    {"id": i, "class_id": int(c), "xyxy": [round(v, 1) for v in b]}
                    for i, c, b in zip(ids, boxes.cls.tolist(), boxes.xyxy.tolist())]}) + "\n")
                run.records.append((stream, t_decoded, time.monotonic_ns(), pts_us, len(ids)))
                if not run.started_ns:
                    run.started_ns = t_decoded
                if deadline is None:
                    seconds = args.max_seconds or (args.warmup + args.duration + 0.5 if args.live else 0)
                    deadline = run.started_ns + int(seconds * 1e9) if seconds else 0
                if stop.is_set() or (deadline and time.monotonic_ns() > deadline):
                    break
            if hasattr(results, "close"):
                results.close()
            if stop.is_set():
                break
    except Exception as exc:  # reported in the result, not a traceback the harness must parse
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        sink.close()
        run.extra["unmatched_results"] = unmatched
        run.extra["vid_stride"] = args.vid_stride
        if counters:
            run.extra["counts"] = [c.counts for c in counters]
        run.save(args.out)
    return 0 if run.error is None else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: LoadStreams' reader threads are still inside OpenCV and crash it (SIGSEGV)
    os._exit(code)
