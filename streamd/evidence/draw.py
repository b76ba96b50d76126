"""Snapshot pictures: the event's frame with the object's box, track id, class and the line or zone drawn,
and a tight crop of the object from the unmarked frame."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from streamd.config.models import EvidenceConfig, PipelineConfig

BOX_COLOR = (0, 0, 255)
LINE_COLOR = (0, 255, 255)
ZONE_COLOR = (255, 160, 0)
CROP_PAD = 0.04  # of the box size, each side: tight, but the object's edges stay in the picture


@dataclass(frozen=True)
class Pictures:
    snapshot: bytes
    crop: bytes | None
    crop_box: tuple[int, int, int, int] | None  # x1, y1, x2, y2 in source pixels (x2, y2 exclusive)


def crop_rect(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int] | None:
    x1, y1, x2, y2 = box
    pad_x, pad_y = (x2 - x1) * CROP_PAD, (y2 - y1) * CROP_PAD
    left, top = max(0, int(np.floor(x1 - pad_x))), max(0, int(np.floor(y1 - pad_y)))
    right, bottom = min(width, int(np.ceil(x2 + pad_x))), min(height, int(np.ceil(y2 + pad_y)))
    if right - left < 2 or bottom - top < 2:
        return None
    return left, top, right, bottom


def render(image: np.ndarray, box: tuple[float, float, float, float] | None, label: str, what: str,
           pipeline: PipelineConfig, name: str, config: EvidenceConfig) -> Pictures:
    """JPEGs of the event. ``image`` (H x W x 3 BGR) is drawn on: pass a copy. ``name`` is the line or zone."""
    quality = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
    height, width = image.shape[:2]
    crop = None
    rect = crop_rect(box, width, height) if box is not None else None
    if rect is not None:
        ok, encoded = cv2.imencode(".jpg", image[rect[1]:rect[3], rect[0]:rect[2]], quality)
        crop = encoded.tobytes() if ok else None
    scale = max(1.0, width / 960)
    thick = max(1, round(2 * scale))
    font = 0.5 * scale
    for zone in pipeline.zones:
        points = np.asarray(zone.polygon, np.int32).reshape(-1, 1, 2)
        cv2.polylines(image, [points], True, ZONE_COLOR, thick * 2 if zone.name == name else 1)
        if zone.name == name:
            _label(image, zone.name, (int(points[0, 0, 0]), int(points[0, 0, 1])), font, ZONE_COLOR)
    for line in pipeline.lines:
        (x1, y1), (x2, y2) = [(int(x), int(y)) for x, y in line.points]
        cv2.line(image, (x1, y1), (x2, y2), LINE_COLOR, thick * 2 if line.name == name else 1)
        if line.name == name:
            _label(image, line.name, (x1, y1), font, LINE_COLOR)
    if box is not None:
        bx1, by1, bx2, by2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (bx1, by1), (bx2, by2), BOX_COLOR, thick)
        _label(image, label, (bx1, by1), font, BOX_COLOR)
    _label(image, what, (8, int(24 * scale)), font, (255, 255, 255))
    if width > config.max_width:
        image = cv2.resize(image, (config.max_width, round(height * config.max_width / width)),
                           interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, quality)
    if not ok:
        raise ValueError("JPEG encoding failed")
    return Pictures(encoded.tobytes(), crop, rect)


def _label(image: np.ndarray, text: str, origin: tuple[int, int], font: float, color: tuple[int, int, int]) -> None:
    x, y = int(origin[0]), max(int(origin[1]) - 4, 14)
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
    cv2.rectangle(image, (x, y - h - 4), (x + w + 4, y + 2), (0, 0, 0), -1)
    cv2.putText(image, text, (x + 2, y - 2), cv2.FONT_HERSHEY_SIMPLEX, font, color, 1, cv2.LINE_AA)
