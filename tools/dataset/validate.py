"""Dataset validation: every problem a trainer would trip over (or silently learn from), named by file and line.

Errors (non-zero exit): label without image, image without label, unreadable or truncated image, malformed line,
class id without a name, degenerate box, box outside the image, byte-identical duplicate images.
Warnings: empty label files (fine for background images, suspicious in bulk), repeated boxes.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from tools.dataset.yolo import YoloDataset, parse_labels


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    code: str
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity} [{self.code}] {self.message}"


@dataclass
class Report:
    images: int
    label_files: int
    boxes: int
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.code for f in self.findings))

    def to_json(self) -> str:
        return json.dumps({"images": self.images, "label_files": self.label_files, "boxes": self.boxes,
                           "errors": len(self.errors), "warnings": len(self.warnings), "counts": self.counts(),
                           "findings": [asdict(f) for f in self.findings]}, indent=2)


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def decoded_size(path: Path) -> tuple[int, int]:
    """(width, height) after decoding every pixel.

    The header alone says nothing about the rest of the file: a JPEG cut short opens fine, and cv2
    (what trainers use) then decodes the missing part as grey fill with only a stderr warning, so
    the model learns from damaged pixels. PIL's full decode raises "image file is truncated".
    A 640x480 JPEG decodes in about 1-2 ms, so this costs little next to reading the file.
    """
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.size


def validate(ds: YoloDataset, tolerance: float = 1e-6, min_box_px: float = 1.0, progress: bool = True) -> Report:
    """Check ``ds``; ``tolerance`` is how far (normalised) a box may stick out before it counts as outside."""
    findings: list[Finding] = []

    def add(severity: str, code: str, path: Path, line: int | None, message: str) -> None:
        findings.append(Finding(severity, code, str(path), line, message))

    images = ds.images()
    if not images:
        add("error", "no_images", ds.images_root, None, "no images found")
    if not ds.names:
        add("error", "no_names", ds.source, None,
            "no class names (data.yaml `names`, classes.txt or --names FILE); every class id is unnamed")
    for label in ds.label_files():
        if ds.image_for_label(label) is None:
            add("error", "missing_image", label, None, f"label file has no image in {ds.images_root}")
    seen: dict[str, Path] = {}
    boxes = 0
    for image in tqdm(images, desc="validate", unit="image", disable=not progress):
        digest = _sha1(image)
        if digest in seen:
            add("error", "duplicate_image", image, None, f"same bytes as {seen[digest]}; remove one of them")
        else:
            seen[digest] = image
        try:
            width, height = decoded_size(image)
        except Exception as exc:  # PIL raises several types for broken files
            add("error", "unreadable_image", image, None,
                f"cannot decode image: {exc}; re-export or re-download it, or remove it and its label")
            width = height = 0
        label = ds.label_path(image)
        if not label.is_file():
            add("error", "missing_label", image, None, f"no label file {label} (write an empty one for a background image)")
            continue
        parsed, bad_lines = parse_labels(label)
        for bad in bad_lines:
            add("error", "malformed_line", label, bad.line, f"{bad.reason}: {bad.text!r}")
        if not parsed and not bad_lines:
            add("warning", "empty_label", label, None, "no boxes (a background image, or missing annotations?)")
        repeated = Counter((b.class_id, b.cx, b.cy, b.w, b.h) for b in parsed)
        for box in parsed:
            boxes += 1
            if box.class_id < 0 or box.class_id >= len(ds.names):
                add("error", "unknown_class", label, box.line,
                    f"class id {box.class_id} has no name (names has {len(ds.names)}: 0..{len(ds.names) - 1})")
            if box.w <= 0 or box.h <= 0 or (width and (box.w * width < min_box_px or box.h * height < min_box_px)):
                size = f"{box.w * width:.2f}x{box.h * height:.2f} px" if width else f"w={box.w} h={box.h}"
                add("error", "degenerate_box", label, box.line, f"box {size} is smaller than {min_box_px} px")
            x1, y1, x2, y2 = box.xyxy
            if min(x1, y1) < -tolerance or max(x2, y2) > 1 + tolerance:
                add("error", "box_outside", label, box.line,
                    f"box x {x1:.4f}..{x2:.4f}, y {y1:.4f}..{y2:.4f} leaves the image (0..1); clip or fix it")
        for key, n in repeated.items():
            if n > 1:
                first = next(b for b in parsed if (b.class_id, b.cx, b.cy, b.w, b.h) == key)
                add("warning", "repeated_box", label, first.line, f"the same box appears {n} times")
    findings.sort(key=lambda f: (f.severity != "error", f.file, f.line or 0))
    return Report(images=len(images), label_files=len(ds.label_files()), boxes=boxes, findings=findings)
