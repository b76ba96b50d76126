"""Frame selection (every Nth, target fps, scene change, near-duplicates) and writing images + manifest.

Selection runs in a fixed order so each option means one thing: a frame is a *candidate* when it
passes every-Nth and the fps schedule; a candidate is kept when it differs enough from the last kept
frame (scene change, if asked: gradual drift counts too, not only cuts) and is not a near-duplicate of a recently kept frame.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import av
import cv2
import numpy as np
from tqdm import tqdm

from streamd.redact import redact
from tools.dataset.hashing import NearDuplicateFilter

LIVE_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "srt://")
THUMB = (64, 64)


class ExtractError(Exception):
    """The source cannot be opened or read; the message carries a redacted URL only."""


@dataclass(frozen=True)
class Selection:
    every: int = 1  # keep every Nth decoded frame (1: all)
    fps: float | None = None  # at most this many candidates per second of video time
    scene_threshold: float | None = None  # mean abs grey difference (0..1) to the last kept frame
    dedupe_threshold: int | None = None  # Hamming distance (bits of a 64-bit hash); None: no dedupe
    hash_method: str = "phash"
    dedupe_window: int = 1000
    max_frames: int | None = None
    start_s: float = 0.0
    duration_s: float | None = None


@dataclass
class ManifestRow:
    file: str
    source: str
    frame_index: int
    timestamp_s: float
    scene_score: float | None = None
    phash: str | None = None


@dataclass
class Summary:
    decoded: int = 0
    candidates: int = 0
    kept: int = 0
    skipped_scene: int = 0
    skipped_duplicate: int = 0
    duration_s: float | None = None  # of a file, from its header (None: not given, or a live source)
    last_frame_s: float | None = None  # timestamp of the last decoded frame
    removed: int = 0  # old images deleted by --overwrite

    @property
    def length_s(self) -> float | None:
        """How long the video is, as far as is known: its header, else its last decoded frame."""
        return self.duration_s if self.duration_s is not None else self.last_frame_s

    def started_past_end(self, start_s: float) -> bool:
        """True when --start lies at or beyond the video's end, so nothing could be selected."""
        if start_s <= 0 or self.candidates:
            return False
        return (self.duration_s is not None and start_s >= self.duration_s) or \
            (self.last_frame_s is not None and start_s > self.last_frame_s)


def is_live(source: str) -> bool:
    return source.lower().startswith(LIVE_PREFIXES)


def open_video(source: str, open_timeout_s: float = 10.0) -> av.container.InputContainer:
    options = {"rtsp_transport": "tcp"} if source.lower().startswith(("rtsp://", "rtsps://")) else {}
    if not is_live(source) and not Path(source).is_file():
        raise ExtractError(f"video file {source} does not exist")
    try:
        container = av.open(source, options=options, timeout=(open_timeout_s, open_timeout_s))
    except (av.FFmpegError, OSError) as exc:
        raise ExtractError(f"cannot open {redact(source)}: {redact(str(exc))}") from exc
    if not container.streams.video:
        container.close()
        raise ExtractError(f"{redact(source)} has no video track")
    return container


def video_duration(container: av.container.InputContainer) -> float | None:
    """Seconds, from the stream's or the container's header; None for live streams and files without one."""
    video = container.streams.video[0]
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _manifest_files(path: Path) -> list[str] | None:
    """Image names a tools.frames manifest lists, or None when ``path`` is not such a manifest."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            if path.suffix == ".csv":
                reader = csv.DictReader(f)
                if not {"file", "frame_index"} <= set(reader.fieldnames or ()):
                    return None
                return [row["file"] for row in reader if row.get("file")]
            names = []
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or "file" not in row or "frame_index" not in row:
                        return None
                    names.append(str(row["file"]))
            return names
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return None


def earlier_output(out: Path, stem: str) -> tuple[list[Path], list[Path]]:
    """(images, manifests) an earlier run left in ``out``: every image its manifests (.csv or .jsonl) list,
    and images named as this run would name them (``<stem>_<frame>.jpg|png``) even if no manifest lists them
    (a manifest deleted by hand, or a run with another --manifest name that was removed)."""
    if not out.is_dir():
        return [], []
    images: set[Path] = set()
    manifests = []
    for candidate in sorted(out.iterdir()):
        if candidate.suffix in (".csv", ".jsonl") and candidate.is_file():
            listed = _manifest_files(candidate)
            if listed is None:
                continue
            manifests.append(candidate)
            for name in listed:
                if Path(name).name == name and (out / name).is_file():  # never follow a path out of OUT
                    images.add(out / name)
    pattern = re.compile(re.escape(stem) + r"_\d{6}\.(jpg|png)")
    images.update(p for p in out.iterdir() if p.is_file() and pattern.fullmatch(p.name))
    return sorted(images), manifests


def frames(container: av.container.InputContainer) -> Iterator[tuple[int, float, av.VideoFrame]]:
    video = container.streams.video[0]
    video.thread_type = "AUTO"
    rate = float(video.average_rate or 25)
    for index, frame in enumerate(container.decode(video)):
        yield index, (float(frame.time) if frame.time is not None else index / rate), frame


def _thumb(image: np.ndarray) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), THUMB, interpolation=cv2.INTER_AREA).astype(np.int16)


class ManifestWriter:
    """CSV or JSON-lines manifest, one row per written image, flushed as it goes (a stopped run keeps it)."""

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[str] = path.open("w", newline="", encoding="utf-8")
        self._csv: Any = None
        if path.suffix == ".csv":
            self._csv = csv.DictWriter(self._file, fieldnames=list(ManifestRow.__dataclass_fields__))
            self._csv.writeheader()
        elif path.suffix != ".jsonl":
            raise ValueError(f"manifest {path} must end in .csv or .jsonl")

    def write(self, row: ManifestRow) -> None:
        if self._csv is not None:
            self._csv.writerow({k: "" if v is None else v for k, v in asdict(row).items()})
        else:
            self._file.write(json.dumps(asdict(row)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def extract(source: str, out: Path, selection: Selection, image_format: str = "jpg", quality: int = 95,
            manifest: str = "manifest.csv", prefix: str | None = None, progress: bool = True,
            overwrite: bool = False) -> Summary:
    """Decode ``source`` and write the selected frames to ``out``; returns counts and manifest rows.

    A non-empty ``out`` is refused: a rerun would rewrite the manifest and leave the earlier run's images
    beside the new ones, unlisted. With ``overwrite`` the earlier run's images and manifests are deleted
    (see ``earlier_output``; other files stay), only once the source has opened.
    """
    if selection.every < 1:
        raise ValueError("--every must be >= 1")
    if selection.fps is not None and selection.fps <= 0:
        raise ValueError("--fps must be > 0")
    if image_format not in ("jpg", "png"):
        raise ValueError("--format must be jpg or png")
    safe_source = redact(source)
    stem = prefix or (Path(source).stem if not is_live(source) else "frame")
    if out.exists() and not out.is_dir():
        raise ExtractError(f"--out {out} is a file; give a folder")
    present = sorted(out.iterdir()) if out.is_dir() else []
    if present and not overwrite:
        images, manifests = earlier_output(out, stem)
        what = (f"{len(images)} images and {len(manifests)} manifest{'s' * (len(manifests) != 1)} of an earlier "
                f"run" if images or manifests else f"{len(present)} other files")
        raise ExtractError(f"--out {out} is not empty ({what}); give a new --out, or --overwrite to delete "
                           "the earlier run's images and manifest first")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    dedupe = (NearDuplicateFilter(selection.dedupe_threshold, selection.hash_method, selection.dedupe_window)
              if selection.dedupe_threshold is not None else None)
    summary = Summary()
    container = open_video(source)
    if not is_live(source):
        summary.duration_s = video_duration(container)
        if summary.started_past_end(selection.start_s):
            container.close()
            return summary  # nothing to decode; OUT untouched
    if present:
        images, manifests = earlier_output(out, stem)
        for old in [*images, *manifests]:
            old.unlink()
        summary.removed = len(images)
    out.mkdir(parents=True, exist_ok=True)
    writer = ManifestWriter(out / manifest)
    total = container.streams.video[0].frames or None
    bar = tqdm(total=total, desc=Path(source).name if not is_live(source) else "stream", unit="frame",
               disable=not progress)
    next_time: float | None = None
    previous: np.ndarray | None = None
    try:
        for index, t, frame in frames(container):
            summary.decoded += 1
            summary.last_frame_s = t
            bar.update(1)
            if t < selection.start_s:
                continue
            if selection.duration_s is not None and t >= selection.start_s + selection.duration_s:
                break
            if index % selection.every:
                continue
            if selection.fps is not None:
                if next_time is not None and t + 1e-6 < next_time:
                    continue
                # schedule from the nominal grid so rounding of timestamps does not drift
                step = 1.0 / selection.fps
                next_time = (next_time if next_time is not None else t) + step
                while next_time <= t:
                    next_time += step
            summary.candidates += 1
            image = frame.to_ndarray(format="bgr24")
            score: float | None = None
            if selection.scene_threshold is not None:
                thumb = _thumb(image)
                score = 1.0 if previous is None else float(np.abs(thumb - previous).mean() / 255.0)
                if score < selection.scene_threshold:
                    summary.skipped_scene += 1
                    continue
            hash_text: str | None = None
            if dedupe is not None:
                value = dedupe.hash(image)
                hash_text = str(value)
                if dedupe.match(value) is not None:
                    summary.skipped_duplicate += 1
                    continue
            name = f"{stem}_{index:06d}.{image_format}"
            if not cv2.imwrite(str(out / name), image, params):
                raise ExtractError(f"cannot write {out / name}")
            if dedupe is not None:
                dedupe.remember(value, name)
            if selection.scene_threshold is not None:
                previous = thumb
            row = ManifestRow(file=name, source=safe_source, frame_index=index, timestamp_s=round(t, 6),
                              scene_score=None if score is None else round(score, 6), phash=hash_text)
            writer.write(row)
            summary.kept += 1
            bar.set_postfix(kept=summary.kept)
            if selection.max_frames is not None and summary.kept >= selection.max_frames:
                break
    except av.FFmpegError as exc:
        raise ExtractError(f"reading {safe_source} failed after frame {summary.decoded}: {redact(str(exc))}") from exc
    finally:
        bar.close()
        writer.close()
        container.close()
    return summary
