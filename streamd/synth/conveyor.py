"""A top-down conveyor belt moving left to right, carrying boxes, bottles and cans.

Everything is drawn from one seeded random generator, so a seed gives the same video and the same
ground truth. Ground truth per frame: object id, class and the axis-aligned box of the drawn shape
(clipped to the frame). Counting line: vertical at ``line_x``; an object crosses it when its centre
passes the line, and the scene schedules products so that no centre is near the line in the first or
last frames, which makes the expected count exact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

CLASSES = ("box", "bottle", "can")


@dataclass(frozen=True)
class SceneConfig:
    seed: int = 0
    width: int = 640
    height: int = 360
    fps: int = 30
    seconds: float = 20.0
    belt_speed: float = 6.0  # pixels per frame
    density: float = 1.0  # products per second, on average
    line_x: int = 320
    blur: bool = True
    noise: float = 4.0  # std of per-pixel noise
    margin_frames: int = 20  # no product centre within this many frames of the line at start/end

    @property
    def frames(self) -> int:
        return int(round(self.seconds * self.fps))

    @property
    def belt_top(self) -> int:
        return int(self.height * 0.14)

    @property
    def belt_bottom(self) -> int:
        return int(self.height * 0.86)


@dataclass
class Product:
    object_id: int
    class_id: int
    x0: float  # centre x at frame 0 (may be far left, off-screen)
    y: float
    length: float  # along the belt
    breadth: float  # across the belt
    angle: float  # degrees
    colour: tuple[int, int, int]
    accent: tuple[int, int, int]

    def centre_x(self, frame: int, speed: float) -> float:
        return self.x0 + speed * frame


@dataclass
class GroundTruth:
    config: dict
    classes: list[str]
    line: list[list[int]]
    counts: dict[str, int]
    frames: list[list[list[float]]] = field(default_factory=list)  # per frame: [id, class_id, x1, y1, x2, y2]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @staticmethod
    def load(path: Path) -> GroundTruth:
        return GroundTruth(**json.loads(path.read_text()))


class ConveyorScene:
    def __init__(self, config: SceneConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.products = self._schedule()
        self._belt = self._belt_texture()
        self._marks = self._belt_marks()
        self._shadow = np.repeat(self._shadow_mask(), 3, axis=2)
        # a small bank of noise fields drawn once: per-frame normal() on every pixel dominates render time
        shape = (config.height, config.width, 3)
        self._noise = [self.rng.normal(0, config.noise, shape).astype(np.float32) for _ in range(5)] \
            if config.noise else []

    # --- layout --------------------------------------------------------------------------------------

    def _schedule(self) -> list[Product]:
        """Products whose centres cross the line between margin_frames and frames - margin_frames."""
        c, rng = self.config, self.rng
        first = c.margin_frames + 1
        last = c.frames - c.margin_frames - 1
        products: list[Product] = []
        t = float(first)
        object_id = 1
        lane_top, lane_bottom = c.belt_top + 34, c.belt_bottom - 34
        while True:
            gap_s = rng.exponential(1.0 / c.density)
            if rng.random() < 0.15:
                gap_s = rng.uniform(0.25, 0.4)  # a pair close together
            t += max(gap_s * c.fps, 60.0 / c.belt_speed)  # at least ~60 px apart along the belt
            if t > last:
                break
            crossing_frames = [t]
            if rng.random() < 0.2:
                crossing_frames.append(t + rng.uniform(-2, 2))  # side by side
            lanes = rng.permutation(np.linspace(lane_top, lane_bottom, 3))
            for k, frame in enumerate(crossing_frames):
                if not first <= frame <= last:
                    continue
                products.append(self._product(object_id, c.line_x - c.belt_speed * frame, float(lanes[k])
                                              + rng.uniform(-12, 12)))
                object_id += 1
        return products

    def _product(self, object_id: int, x0: float, y: float) -> Product:
        rng = self.rng
        class_id = int(rng.integers(0, len(CLASSES)))
        scale = rng.uniform(0.85, 1.2)
        if CLASSES[class_id] == "box":
            length, breadth = 58 * scale, 42 * scale * rng.uniform(0.8, 1.1)
            colour = tuple(int(v) for v in rng.integers([40, 90, 140], [70, 130, 190]))  # cardboard (BGR)
            accent = (200, 200, 210)
        elif CLASSES[class_id] == "bottle":
            length, breadth = 70 * scale, 22 * scale
            colour = tuple(int(v) for v in (rng.integers(120, 200), rng.integers(90, 160), rng.integers(20, 60)))
            accent = (240, 240, 240)
        else:
            length = breadth = 34 * scale
            colour = tuple(int(v) for v in (rng.integers(30, 60), rng.integers(30, 60), rng.integers(170, 230)))
            accent = (190, 190, 190)
        angle = float(rng.uniform(-35, 35) if CLASSES[class_id] != "can" else 0.0)
        return Product(object_id, class_id, x0, y, length, breadth, angle, colour, accent)  # type: ignore[arg-type]

    def _belt_texture(self) -> np.ndarray:
        c = self.config
        period = 256
        noise = self.rng.normal(70, 10, (c.belt_bottom - c.belt_top, period)).astype(np.float32)
        return np.clip(cv2.GaussianBlur(noise, (0, 0), 1.5), 0, 255).astype(np.uint8)

    def _belt_marks(self) -> list[tuple[float, int, int]]:
        """Dark stains on the belt (x on the texture loop, y, radius): they move with the belt."""
        c = self.config
        return [(float(self.rng.uniform(0, 256)), int(self.rng.integers(c.belt_top, c.belt_bottom)),
                 int(self.rng.integers(4, 12))) for _ in range(3)]

    def _shadow_mask(self) -> np.ndarray:
        c = self.config
        mask = np.ones((c.height, c.width), np.float32)
        x = int(self.rng.uniform(0.1, 0.8) * c.width)
        cv2.ellipse(mask, (x, c.height // 2), (70, c.height), 15, 0, 360, 0.72, -1)
        return cv2.GaussianBlur(mask, (0, 0), 25)[..., None]

    # --- drawing -------------------------------------------------------------------------------------

    def render(self, frame: int) -> tuple[np.ndarray, list[list[float]]]:
        c = self.config
        image = np.full((c.height, c.width, 3), (95, 100, 105), np.uint8)  # floor
        offset = int(round(c.belt_speed * frame)) % self._belt.shape[1]
        reps = c.width // self._belt.shape[1] + 2
        strip = np.tile(self._belt, (1, reps))[:, self._belt.shape[1] - offset:][:, : c.width]
        image[c.belt_top : c.belt_bottom] = strip[..., None]
        for x_loop, y, r in self._marks:
            for k in range(reps):
                x = int(x_loop + k * self._belt.shape[1] + c.belt_speed * frame) % (reps * self._belt.shape[1]) - 256
                if -r < x < c.width + r:
                    cv2.circle(image, (x, y), r, (45, 45, 45), -1, cv2.LINE_AA)
        cv2.line(image, (0, c.belt_top), (c.width, c.belt_top), (150, 150, 150), 3)
        cv2.line(image, (0, c.belt_bottom), (c.width, c.belt_bottom), (150, 150, 150), 3)
        boxes = []
        for p in self.products:
            cx = p.centre_x(frame, c.belt_speed)
            if cx < -p.length or cx > c.width + p.length:
                continue
            box = self._draw(image, p, cx)
            if box is not None:
                boxes.append([p.object_id, p.class_id, *box])
        lighting = 0.85 + 0.15 * math.sin(frame / (c.fps * 3.0) + c.seed) + 0.05 * math.sin(frame / 7.0)
        out = cv2.multiply(image.astype(np.float32), self._shadow, scale=lighting)
        if self._noise:
            out = cv2.add(out, self._noise[frame % len(self._noise)])
        out = np.clip(out, 0, 255, out=out).astype(np.uint8)
        if c.blur and c.belt_speed >= 3:
            k = max(3, int(c.belt_speed / 2) | 1)
            kernel = np.zeros((k, k), np.float32)
            kernel[k // 2, :] = 1.0 / k
            out = cv2.filter2D(out, -1, kernel)
        return out, boxes

    def _draw(self, image: np.ndarray, p: Product, cx: float) -> list[float] | None:
        c = self.config
        name = CLASSES[p.class_id]
        if name == "can":
            r = p.length / 2
            centre = (int(round(cx)), int(round(p.y)))
            cv2.circle(image, centre, int(r), p.colour, -1, cv2.LINE_AA)
            cv2.circle(image, centre, int(r * 0.72), p.accent, 2, cv2.LINE_AA)
            cv2.circle(image, (centre[0] + int(r * 0.3), centre[1] - int(r * 0.2)), int(r * 0.12), (60, 60, 60), -1)
            corners = np.array([[cx - r, p.y - r], [cx + r, p.y + r]])
        else:
            rect = ((cx, p.y), (p.length, p.breadth), p.angle)
            corners = cv2.boxPoints(rect)
            cv2.fillConvexPoly(image, np.round(corners).astype(np.int32), p.colour, cv2.LINE_AA)
            if name == "box":  # packing tape along the middle
                a = math.radians(p.angle)
                dx, dy = math.cos(a) * p.length / 2, math.sin(a) * p.length / 2
                cv2.line(image, (int(cx - dx), int(p.y - dy)), (int(cx + dx), int(p.y + dy)), p.accent,
                         max(2, int(p.breadth / 6)), cv2.LINE_AA)
            else:  # bottle: a cap at the leading end and a label band
                a = math.radians(p.angle)
                ux, uy = math.cos(a), math.sin(a)
                cap = (int(cx + ux * p.length / 2), int(p.y + uy * p.length / 2))
                cv2.circle(image, cap, max(3, int(p.breadth / 3)), p.accent, -1, cv2.LINE_AA)
                band = ((cx - ux * p.length * 0.1, p.y - uy * p.length * 0.1), (p.length * 0.3, p.breadth), p.angle)
                cv2.fillConvexPoly(image, np.round(cv2.boxPoints(band)).astype(np.int32), (230, 230, 230),
                                   cv2.LINE_AA)
        x1, y1 = corners.min(axis=0)
        x2, y2 = corners.max(axis=0)
        x1, x2 = max(0.0, float(x1)), min(float(c.width), float(x2))
        y1, y2 = max(0.0, float(y1)), min(float(c.height), float(y2))
        if x2 - x1 < 2 or y2 - y1 < 2:
            return None
        return [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)]

    # --- truth ---------------------------------------------------------------------------------------

    def expected_counts(self) -> dict[str, int]:
        c = self.config
        counts = {name: 0 for name in CLASSES}
        for p in self.products:
            if p.centre_x(0, c.belt_speed) < c.line_x < p.centre_x(c.frames - 1, c.belt_speed):
                counts[CLASSES[p.class_id]] += 1
        return counts

    def frames(self) -> Iterator[tuple[int, np.ndarray, list[list[float]]]]:
        for i in range(self.config.frames):
            image, boxes = self.render(i)
            yield i, image, boxes


def render_video(config: SceneConfig, video_path: Path, truth_path: Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> GroundTruth:
    """Write the scene as H.264 (PyAV) and its ground truth as JSON; returns the ground truth."""
    scene = ConveyorScene(config)
    truth = GroundTruth(config=asdict(config), classes=list(CLASSES),
                        line=[[config.line_x, config.height], [config.line_x, 0]], counts=scene.expected_counts())
    video_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = video_path.with_name(video_path.name + ".part")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=config.fps)
        stream.width, stream.height, stream.pix_fmt = config.width, config.height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20", "g": str(config.fps)}
        for i, image, boxes in scene.frames():
            truth.frames.append(boxes)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
            if progress:
                progress(i + 1, config.frames)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(video_path)
    if truth_path is not None:
        truth.save(truth_path)
    return truth
