"""A YOLO-format dataset on disk: where its images, labels and class names are, and reading labels.

Layouts understood (the ones ultralytics and most exporters write):
  DIR/data.yaml                      names + split folders (train/val/test: images/<split>)
  DIR/images/**.jpg + DIR/labels/**.txt   labels mirror the image tree; names in classes.txt or *.names
A label path is the image path with the last `images` folder replaced by `labels` and suffix .txt.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class DatasetError(Exception):
    """The dataset folder cannot be understood; the message says where and what to do."""


@dataclass(frozen=True)
class Box:
    """One label line: class id and normalised cx, cy, w, h; ``text`` is the line exactly as written."""

    class_id: int
    cx: float
    cy: float
    w: float
    h: float
    line: int
    text: str

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return self.cx - self.w / 2, self.cy - self.h / 2, self.cx + self.w / 2, self.cy + self.h / 2


@dataclass(frozen=True)
class LineError:
    line: int
    text: str
    reason: str


@dataclass
class YoloDataset:
    images_root: Path
    labels_root: Path
    names: list[str]
    source: Path  # what the user pointed at (for messages)

    def images(self) -> list[Path]:
        """Every image under the images root, sorted (the order every tool works in)."""
        return sorted(p for p in self.images_root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    def label_files(self) -> list[Path]:
        return sorted(p for p in self.labels_root.rglob("*.txt") if p.is_file()) if self.labels_root.is_dir() else []

    def relative(self, image: Path) -> Path:
        return image.relative_to(self.images_root)

    def label_path(self, image: Path) -> Path:
        return self.labels_root / self.relative(image).with_suffix(".txt")

    def image_for_label(self, label: Path) -> Path | None:
        stem = self.images_root / label.relative_to(self.labels_root).with_suffix("")
        for suffix in IMAGE_SUFFIXES:
            for candidate in (stem.with_suffix(suffix), stem.with_suffix(suffix.upper())):
                if candidate.is_file():
                    return candidate
        return None


def parse_labels(path: Path) -> tuple[list[Box], list[LineError]]:
    """Boxes of one label file, and the lines that are not `class cx cy w h` (segments are not boxes)."""
    boxes: list[Box] = []
    errors: list[LineError] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 5:
            errors.append(LineError(number, text, f"expected 5 fields (class cx cy w h), found {len(parts)}"))
            continue
        try:
            class_id = int(parts[0])
        except ValueError:
            errors.append(LineError(number, text, f"class id {parts[0]!r} is not an integer"))
            continue
        try:
            cx, cy, w, h = (float(p) for p in parts[1:])
        except ValueError:
            errors.append(LineError(number, text, "coordinates are not numbers"))
            continue
        boxes.append(Box(class_id, cx, cy, w, h, number, raw.rstrip("\r\n")))
    return boxes, errors


def read_boxes(path: Path) -> list[Box]:
    """Boxes of a label file that must be well-formed (run `tools.dataset validate` first)."""
    if not path.is_file():
        return []
    boxes, errors = parse_labels(path)
    if errors:
        e = errors[0]
        raise DatasetError(f"{path}:{e.line}: {e.reason}: {e.text!r}; run `python -m tools.dataset validate`")
    return boxes


def format_value(value: float) -> str:
    """Shortest text that reads back as the same number to 10 significant digits."""
    return f"{value:.10g}"


def format_box(class_id: int, cx: float, cy: float, w: float, h: float, decimals: int | None = None) -> str:
    """One label line; ``decimals`` fixes the digits after the point (6, as ultralytics and COCO exports write)."""
    fmt = format_value if decimals is None else (lambda v: f"{v:.{decimals}f}")
    return " ".join([str(class_id), *(fmt(v) for v in (cx, cy, w, h))])


def _names_from(value: object, where: Path) -> list[str]:
    if isinstance(value, dict):
        keys = sorted(int(k) for k in value)
        if keys != list(range(len(keys))):
            raise DatasetError(f"{where}: `names` ids must be 0..{len(keys) - 1} without gaps, found {keys}")
        return [str(value[k] if k in value else value[str(k)]) for k in keys]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise DatasetError(f"{where}: `names` must be a list or an id -> name mapping")


def read_names(path: Path) -> list[str]:
    """Class names from a data.yaml (`names`) or a text file with one name per line."""
    if not path.is_file():
        raise DatasetError(f"names file {path} does not exist")
    if path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if "names" not in data:
            raise DatasetError(f"{path}: no `names` key")
        return _names_from(data["names"], path)
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _labels_for(images: Path) -> Path:
    parts = list(images.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
        return Path(*parts)
    return images.parent / "labels"


def open_dataset(path: Path, names: Path | None = None, split: str | None = None) -> YoloDataset:
    """Find images, labels and names for ``path`` (a dataset folder, its data.yaml, or an images folder)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    yaml_path = path if path.is_file() else path / "data.yaml"
    found_names: list[str] = []
    if path.is_file() and path.suffix not in (".yaml", ".yml"):
        raise DatasetError(f"{path}: give a dataset folder, its data.yaml, or an images folder")
    if yaml_path.is_file():
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
        root = Path(data.get("path") or yaml_path.parent)
        if not root.is_absolute():
            root = (yaml_path.parent / root).resolve()
        if not root.is_dir():
            root = yaml_path.parent
        if split is not None:
            if split not in data:
                raise DatasetError(f"{yaml_path}: no `{split}` split (has {', '.join(k for k in data if k != 'names')})")
            images_root = root / str(data[split])
        else:
            images_root = root / "images"
        found_names = _names_from(data["names"], yaml_path) if "names" in data else []
    elif (path / "images").is_dir():
        images_root = path / "images" / split if split else path / "images"
    elif path.name == "images" or any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        images_root = path
    else:
        raise DatasetError(f"{path}: no data.yaml, no images/ folder and no images; expected DIR/images + DIR/labels")
    if not images_root.is_dir():
        raise DatasetError(f"images folder {images_root} does not exist")
    if names is not None:
        found_names = read_names(names)
    elif not found_names:
        root = images_root.parent if images_root.name == "images" else images_root.parent.parent
        for candidate in [root / "classes.txt", *sorted(root.glob("*.names"))]:
            if candidate.is_file():
                found_names = read_names(candidate)
                break
    return YoloDataset(images_root=images_root, labels_root=_labels_for(images_root), names=found_names, source=path)


def write_data_yaml(out: Path, names: list[str], splits: dict[str, str] | None = None) -> Path:
    """data.yaml ultralytics trains from; without splits, train and val both point at images/."""
    splits = splits or {"train": "images", "val": "images"}
    data = {"path": str(out.resolve()), **splits, "names": dict(enumerate(names))}
    target = out / "data.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return target


def place(src: Path, dst: Path, mode: str = "copy") -> None:
    """Put ``src`` at ``dst``: copy, hardlink (falls back to copy across devices) or symlink."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "hardlink":
        try:
            dst.hardlink_to(src)
        except OSError:
            shutil.copy2(src, dst)
    else:
        shutil.copy2(src, dst)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size
