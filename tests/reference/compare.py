"""Helpers of the reference tests: streamd's detections for image files, the training interpreter,
the export cache, and the detection-by-detection comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from streamd.infer.model import LoadedModel
from streamd.infer.postprocess import Candidates, PostprocessParams, finish
from streamd.infer.preprocess import Transform, letterbox_into, to_tensor
from tests.conftest import MEDIA, REPO, require

# Exported models are cached here between runs (gitignored: out/ is): CI keeps the folder warm.
CACHE = Path(os.environ.get("STREAMD_REFERENCE_CACHE", REPO / "out" / "reference-cache"))
REF_SCRIPT = Path(__file__).with_name("ultra_ref.py")

# Real frames of the framework-equality tests: whole (960 x 540, 1920 x 1080, 640 x 4xx) and cropped.
VIDEO_FRAMES = {"Traffic.mp4": (30, 200), "TrafficHD_short.mp4": (10,)}
COCO_FRAMES = ("000000000025.jpg", "000000000154.jpg")

BOX_TOLERANCE_PX = 1.0
SCORE_TOLERANCE = 1e-3


def train_python(*modules: str) -> str:
    """The interpreter with the training stack (STREAMD_TRAIN_PYTHON, else .venv-train, else this one)."""
    python = os.environ.get("STREAMD_TRAIN_PYTHON")
    if not python:
        local = REPO / ".venv-train" / "bin" / "python"
        python = str(local) if local.is_file() else sys.executable
    imports = ", ".join(modules)
    ok = subprocess.run([python, "-c", f"import {imports}"], capture_output=True).returncode == 0
    require(ok, f"{python} cannot import {imports} (install the train extra; set STREAMD_TRAIN_PYTHON)")
    return python


def run_train(python: str, *args: str, timeout: float = 900) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([python, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[:2]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def model_tensor(model: LoadedModel, frames: list[np.ndarray]) -> tuple[np.ndarray, list[Transform]]:
    """The input tensor streamd's pre-processing makes for these frames, and each frame's transform."""
    h, w = model.input_hw
    spec = model.adapter.preprocess
    pixels = np.zeros((len(frames), h, w, 3), spec.pixel_dtype)  # float32 for resize="linear_float"
    transforms = [letterbox_into(f, pixels[i], spec) for i, f in enumerate(frames)]
    return to_tensor(pixels, spec, np.zeros((len(frames), 3, h, w), np.float32)), transforms


def detect_files(model: LoadedModel, images: list[Path], params: PostprocessParams) -> list[Candidates]:
    """streamd's detections for image files, the way the inference stage makes them (batched)."""
    frames = [cv2.imread(str(p)) for p in images]
    tensor, transforms = model_tensor(model, frames)
    outputs = model.run(tensor)
    return [finish(model.adapter.decode(outputs, i, params.confidence), params, t, f.shape[1], f.shape[0])
            for i, (f, t) in enumerate(zip(frames, transforms))]


@dataclass
class Agreement:
    detections: int
    max_box_px: float
    max_score: float


def compare(ours: list[Candidates], reference: list[dict], what: str, threshold: float | None = None) -> Agreement:
    """Every reference detection has one of ours with the same class, box within 1 px and score within
    1e-3, and nothing is left over. Returns the largest differences seen.

    With ``threshold`` (the confidence both sides cut at), a detection of either side whose score lies within
    the score tolerance of it may lack a counterpart: the other side's score may sit just across the cut.
    Without it the counts must be equal.

    Reference boxes are clipped to the image first: streamd always clips, ultralytics' RT-DETR predictor
    does not (its YOLO predictors do, so there this changes nothing)."""
    total, max_box, max_score = 0, 0.0, 0.0

    def at_cut(score: float) -> bool:
        return threshold is not None and abs(score - threshold) <= SCORE_TOLERANCE

    for i, (mine, ref) in enumerate(zip(ours, reference, strict=True)):
        r_xyxy = np.asarray(ref["xyxy"], np.float32).reshape(-1, 4)
        r_xyxy[:, [0, 2]] = r_xyxy[:, [0, 2]].clip(0, ref["width"])
        r_xyxy[:, [1, 3]] = r_xyxy[:, [1, 3]].clip(0, ref["height"])
        r_conf = np.asarray(ref["confidence"], np.float32)
        r_cls = np.asarray(ref["class_id"], np.int32)
        assert threshold is not None or len(mine.confidence) == len(r_conf), (
            f"{what}, image {i} ({ref['image']}): streamd found {len(mine.confidence)} detections, "
            f"the reference {len(r_conf)}")
        unmatched = set(range(len(r_conf)))
        for j in np.argsort(-mine.confidence, kind="stable"):
            box_diff = np.abs(r_xyxy - mine.xyxy[j]).max(axis=1)
            score_diff = np.abs(r_conf - mine.confidence[j])
            ok = [k for k in unmatched if r_cls[k] == mine.class_id[j] and box_diff[k] <= BOX_TOLERANCE_PX
                  and score_diff[k] <= SCORE_TOLERANCE]
            if not ok and at_cut(float(mine.confidence[j])):
                continue
            assert ok, (f"{what}, image {i}: streamd's detection class {mine.class_id[j]} "
                        f"{mine.xyxy[j].round(2).tolist()} score {mine.confidence[j]:.5f} has no reference "
                        f"counterpart (nearest box {box_diff.min() if len(box_diff) else float('nan'):.2f} px)")
            best = min(ok, key=lambda k: (box_diff[k], score_diff[k]))
            unmatched.discard(best)
            max_box, max_score = max(max_box, float(box_diff[best])), max(max_score, float(score_diff[best]))
            total += 1
        left = [k for k in unmatched if not at_cut(float(r_conf[k]))]
        assert not left, (f"{what}, image {i} ({ref['image']}): {len(left)} reference detections have no streamd "
                          f"counterpart, e.g. class {r_cls[left[0]]} {r_xyxy[left[0]].round(2).tolist()} "
                          f"score {r_conf[left[0]]:.5f}")
    return Agreement(total, max_box, max_score)


def script_digest(*paths: Path) -> str:
    """A short hash of the files that make an export, so a changed reference script re-exports."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def cached_path(name: str, *scripts: Path, suffix: str = ".onnx") -> Path:
    """``CACHE/<name>-<digest of scripts><suffix>``; exports of ``name`` made by older scripts are deleted
    (the cache holds one export per model, some are 100 MB)."""
    path = CACHE / f"{name}-{script_digest(*scripts)}{suffix}"
    for stale in CACHE.glob(f"{name}-*{suffix}"):
        if stale != path and stale.name.removeprefix(f"{name}-").removesuffix(suffix).isalnum():
            stale.unlink(missing_ok=True)
    return path


def video_frames(video: Path, wanted: tuple[int, ...], folder: Path) -> list[Path]:
    """Frames ``wanted`` of ``video`` written as lossless PNG files (both sides of a comparison read the same pixels)."""
    paths = []
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                paths.append(folder / f"{video.stem}-{i}.png")
                cv2.imwrite(str(paths[-1]), frame.to_ndarray(format="bgr24"))
            if i >= max(wanted):
                break
    return paths


def frames_by_kind(folder: Path, size: int) -> dict[str, list[Path]]:
    """Reference frames at the model resolution (centre crops: nothing is resized) and whole (downscaled)."""
    whole = reference_frames(folder)
    return {"model-resolution": centre_crops(whole, folder, size), "downscaled": whole}


def reference_frames(folder: Path) -> list[Path]:
    """Whole video frames and coco128 images as PNG files."""
    require((MEDIA / "videos" / "Traffic.mp4").is_file(), f"Traffic.mp4 not found under {MEDIA} (set STREAMD_MEDIA)")
    paths = [p for video, wanted in VIDEO_FRAMES.items() for p in video_frames(MEDIA / "videos" / video, wanted, folder)]
    for name in COCO_FRAMES:
        image = cv2.imread(str(MEDIA / "datasets" / "coco128" / "images" / name))
        require(image is not None, f"coco128 image {name} not found under {MEDIA}")
        paths.append(folder / name.replace(".jpg", ".png"))
        cv2.imwrite(str(paths[-1]), image)
    return paths


def centre_crops(frames: list[Path], folder: Path, size: int) -> list[Path]:
    """The centre ``size`` x ``size`` of each frame (the model resolution: nothing is resized)."""
    paths = []
    for path in frames:
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        paths.append(folder / f"{path.stem}-crop.png")
        cv2.imwrite(str(paths[-1]), image[top : top + size, left : left + size])
    return paths


def pick_threshold(model_path: Path, images: list[Path], quantile: float) -> float:
    """A confidence threshold at ``quantile`` of all of streamd's scores on ``images``: random-init models
    have no meaningful threshold, so the comparison cuts where enough detections remain on each side."""
    from streamd.infer.model import load_model

    model = load_model(str(model_path))
    everything = detect_files(model, images, PostprocessParams(confidence=0.0, max_detections=1000))
    return round(float(np.quantile(np.concatenate([c.confidence for c in everything]), quantile)), 4)


def framework_reference(script: Path, modules: tuple[str, ...], model_path: Path, images: list[Path],
                        threshold: float, out: Path, *extra: str) -> list[dict]:
    """The framework's own detections: ``script predict`` run in the training interpreter."""
    python = train_python(*modules)
    run_train(python, str(script), "predict", "--model", str(model_path), "--threshold", str(threshold),
              "--out", str(out), *extra, *map(str, images))
    return json.loads(out.read_text())


def without_metadata(path: Path, out: Path) -> Path:
    """A copy of an export with every metadata entry removed, as a user's own export would come."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(out))
    return out
