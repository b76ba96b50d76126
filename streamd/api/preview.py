"""Live preview: the newest analysed frame of a stream with its tracks, lines, zones and counts drawn, as JPEG.

Costs nothing when nobody watches: the analytics stage publishes tracked frames on a ZeroMQ PUB socket that
drops them without a subscriber, and this hub subscribes (per stream, filtered at the publisher) only while a
viewer is connected. Pixels are read from the stream's shared-memory ring by sequence number, never copied
through a socket.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import cv2
import msgspec
import numpy as np
import zmq

from streamd.config.models import PipelineConfig
from streamd.errors import RingError
from streamd.ipc.messages import TrackedFrame
from streamd.ipc.ring import FrameRing

_decoder = msgspec.msgpack.Decoder(TrackedFrame)
_COLORS = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
           (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0)]


class PreviewHub:
    def __init__(self, ctx: zmq.Context, endpoint: str, pipeline_of: Callable[[str], PipelineConfig | None],
                 snapshot: Callable[[], dict[str, Any]]):
        self._ctx = ctx
        self._endpoint = endpoint
        self._pipeline_of = pipeline_of
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._viewers: dict[str, int] = {}
        self._latest: dict[str, TrackedFrame] = {}
        self._rings: dict[str, FrameRing] = {}  # stream -> its attached ring, while watched
        self._ring_lock = threading.Lock()  # renders run in a thread pool; leave() closes rings
        self._thread: threading.Thread | None = None
        self._changed = threading.Event()

    @property
    def subscribed(self) -> list[str]:
        with self._lock:
            return sorted(s for s, n in self._viewers.items() if n > 0)

    def join(self, stream: str) -> None:
        with self._lock:
            self._viewers[stream] = self._viewers.get(stream, 0) + 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._receive, name="preview", daemon=True)
                self._thread.start()
        self._changed.set()

    def leave(self, stream: str) -> None:
        with self._lock:
            self._viewers[stream] = max(0, self._viewers.get(stream, 0) - 1)
            if not self._viewers[stream]:
                del self._viewers[stream]
                self._latest.pop(stream, None)
                with self._ring_lock:  # unmapped, so a removed stream's shared memory is really freed
                    ring = self._rings.pop(stream, None)
                    if ring is not None:
                        ring.close()
        self._changed.set()

    def _receive(self) -> None:
        """Runs while anybody watches: keeps the newest tracked frame of each watched stream."""
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 4)
        sub.connect(self._endpoint)
        topics: set[str] = set()
        try:
            while True:
                wanted = set(self.subscribed)
                if not wanted:
                    return
                if self._changed.is_set():
                    self._changed.clear()
                    for topic in wanted - topics:
                        sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
                    for topic in topics - wanted:
                        sub.setsockopt(zmq.UNSUBSCRIBE, topic.encode())
                    topics = wanted
                if sub.poll(200, zmq.POLLIN):
                    stream, payload = sub.recv_multipart()
                    name = stream.decode()
                    if name in wanted:  # topics match by prefix: "cam" also receives "cam2"
                        with self._lock:
                            self._latest[name] = _decoder.decode(payload)
        finally:
            sub.close(linger=0)
            with self._lock:
                self._thread = None

    def render(self, stream: str, quality: int = 75) -> bytes | None:
        """JPEG of the newest analysed frame of ``stream`` with overlays, or None before the first one."""
        with self._lock:
            tracked = self._latest.get(stream)
        if tracked is None or not tracked.ring:
            return None
        with self._ring_lock:
            ring = self._ring(stream, tracked.ring)
            if ring is None:
                return None
            found = ring.read(tracked.seq)
            if found is None:  # lapped by the writer: show the newest frame with the last known tracks
                found = ring.read(ring.write_seq)
            if found is None:
                return None
            meta, view = found
            image = np.array(view)
            del view
            if not ring.still_valid(meta.seq):
                return None
        self._draw(image, stream, tracked)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return jpeg.tobytes() if ok else None

    def _ring(self, stream: str, name: str) -> FrameRing | None:
        ring = self._rings.get(stream)
        if ring is not None and ring.name == name:
            return ring
        if ring is not None:  # the stream was restarted with a new ring
            self._rings.pop(stream).close()
        try:
            ring = self._rings[stream] = FrameRing.attach(name)
        except RingError:
            return None
        return ring

    def _draw(self, image: np.ndarray, stream: str, tracked: TrackedFrame) -> None:
        scale = max(1.0, image.shape[1] / 960)
        thick = max(1, round(2 * scale))
        font = 0.5 * scale
        pipeline = self._pipeline_of(stream)
        info = self._snapshot().get("streams", {}).get(stream, {})
        counts: dict[str, int] = info.get("line_counts", {})
        occupancy: dict[str, int] = info.get("zone_occupancy", {})
        if pipeline is not None:
            for zone in pipeline.zones:
                points = np.asarray(zone.polygon, np.int32).reshape(-1, 1, 2)
                overlay = image.copy()
                cv2.fillPoly(overlay, [points], (255, 160, 0))
                cv2.addWeighted(overlay, 0.15, image, 0.85, 0, dst=image)
                cv2.polylines(image, [points], True, (255, 160, 0), thick)
                inside = sum(n for k, n in occupancy.items() if k.split("/")[0] == zone.name)
                _label(image, f"{zone.name}: {inside} inside", tuple(points[0, 0]), font, (255, 160, 0))
            for line in pipeline.lines:
                (x1, y1), (x2, y2) = [(int(x), int(y)) for x, y in line.points]
                cv2.line(image, (x1, y1), (x2, y2), (0, 255, 255), thick)
                n_in = sum(n for k, n in counts.items() if k.split("/")[0] == line.name and k.endswith("/in"))
                n_out = sum(n for k, n in counts.items() if k.split("/")[0] == line.name and k.endswith("/out"))
                _label(image, f"{line.name}: in {n_in} / out {n_out}", (x1, y1), font, (0, 255, 255))
        for track in tracked.tracks:
            x1, y1, x2, y2 = (int(v) for v in track.xyxy)
            color = _COLORS[track.track_id % len(_COLORS)]
            cv2.rectangle(image, (x1, y1), (x2, y2), color, thick)
            _label(image, f"#{track.track_id} {track.class_name} {track.confidence:.2f}", (x1, y1), font, color)
        _label(image, f"{stream}  frame {tracked.frame}  {info.get('fps', 0):.1f} fps", (8, int(24 * scale)), font,
               (255, 255, 255))


def _label(image: np.ndarray, text: str, origin: tuple[int, int], font: float, color: tuple[int, int, int]) -> None:
    x, y = int(origin[0]), max(int(origin[1]) - 4, 14)
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
    cv2.rectangle(image, (x, y - h - 4), (x + w + 4, y + 2), (0, 0, 0), -1)
    cv2.putText(image, text, (x + 2, y - 2), cv2.FONT_HERSHEY_SIMPLEX, font, color, 1, cv2.LINE_AA)
