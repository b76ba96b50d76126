"""streamd's detections for torchvision detectors exported to ONNX equal torchvision's own output of the same
model on the same frames: same labels, boxes within 1 px, scores within 1e-3, same count.

Models (random init, see tv_ref.py for how they are made meaningful test subjects), both at 320 x 320:
Faster R-CNN (``fasterrcnn_mobilenet_v3_large_320_fpn``: RPN, RoI heads, NMS inside the graph) and SSDlite
(``ssdlite320_mobilenet_v3_large``), exported by tools.export.frameworks.export_torchvision. torchvision runs
in the training interpreter (STREAMD_TRAIN_PYTHON) as ``model([frame])`` on the whole frame: its own
transform resizes (bilinear on float pixels, no antialiasing) and its own postprocess maps boxes back.
streamd loads the file with nothing configured (adapter, input size and COCO label names from the metadata)
and stretches the frame itself with the adapter's default resize="linear_float".

Frames as in the RF-DETR test: 320 x 320 crops (model resolution) and whole frames (downscaled), PNG.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.infer.inspect import inspect_model
from streamd.infer.model import load_model
from streamd.infer.postprocess import PostprocessParams
from tests.conftest import MEDIA, require
from tests.reference.compare import (cached_path, compare, detect_files, frames_by_kind, framework_reference,
                                     pick_threshold, run_train, train_python, without_metadata)

pytestmark = pytest.mark.reference

REF_SCRIPT = Path(__file__).with_name("tv_ref.py")
EXPORT_CODE = Path(__file__).resolve().parents[2] / "tools" / "export" / "frameworks.py"
IMGSZ = 320
CALIBRATION = 16  # first coco128 images: BatchNorm statistics of the random-init models
ARCHS = {"fasterrcnn": 0.5, "ssdlite": 0.7}  # architecture: quantile of all candidate scores used as threshold


def exported(arch: str) -> Path:
    """The cached export (out/reference-cache, keyed by the reference and export code), made on first use."""
    path = cached_path(f"tv-{arch}", REF_SCRIPT, EXPORT_CODE)
    if not path.is_file():
        folder = MEDIA / "datasets" / "coco128" / "images"
        require(folder.is_dir(), f"coco128 images not found at {folder} (set STREAMD_MEDIA)")
        python = train_python("torchvision", "onnx")
        calib = sorted(folder.glob("*.jpg"))[:CALIBRATION]
        run_train(python, str(REF_SCRIPT), "export", "--arch", arch, "--out", str(path), "--calib", *map(str, calib))
    return path


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return frames_by_kind(tmp_path_factory.mktemp("torchvision-frames"), IMGSZ)


@pytest.mark.parametrize("kind", ["model-resolution", "downscaled"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_streamd_equals_torchvision(arch: str, kind: str, frames: dict[str, list[Path]], tmp_path: Path) -> None:
    images = frames[kind]
    path = exported(arch)
    model = load_model(str(path))  # nothing configured: adapter, input size and names from the file
    assert model.adapter.name == "torchvision"
    assert model.input_hw == (IMGSZ, IMGSZ)
    threshold = pick_threshold(path, images, ARCHS[arch])
    params = PostprocessParams(confidence=threshold, max_detections=1000)
    ours = detect_files(model, images, params)
    ref = framework_reference(REF_SCRIPT, ("torchvision", "onnx"), path, images, threshold,
                              tmp_path / "reference.json")
    agreement = compare(ours, ref, f"{arch} {kind} (threshold {threshold})", threshold)
    assert agreement.detections >= 10 * len(images), f"too few detections to compare: {agreement}"
    print(f"\n{arch} {kind}: {agreement.detections} detections, max box diff {agreement.max_box_px:.4f} px, "
          f"max score diff {agreement.max_score:.2e}")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_inspect_identifies_torchvision_export(arch: str) -> None:
    report = inspect_model(exported(arch), runs=0)
    assert report.adapter == "torchvision"
    assert report.adapter_source.startswith("streamd metadata")
    assert report.adapter_candidates == ["torchvision"]  # the output names alone say the same
    assert report.input_hw == (IMGSZ, IMGSZ)
    assert report.batch_axis == "none (one image per run)"
    assert report.precision == "fp32"
    assert report.num_classes == 91  # torchvision's COCO labels: 0 = background, ids 1..90 with gaps
    assert report.classes[1] == "person" and report.classes[3] == "car" and report.classes[90] == "toothbrush"
    assert report.preprocess["letterbox"] is False and report.preprocess["resize"] == "linear_float"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_inspect_identifies_torchvision_export_without_metadata(arch: str, tmp_path: Path) -> None:
    """A user's own torchvision export carries no streamd metadata: the output names still give the adapter."""
    report = inspect_model(without_metadata(exported(arch), tmp_path / "plain.onnx"), runs=0)
    assert report.adapter == "torchvision" and report.adapter_source == "output names and shapes"
    assert report.input_hw == (IMGSZ, IMGSZ) and report.num_classes == 0  # labels output: a names file is needed
    assert "--labels FILE" in report.to_text()
