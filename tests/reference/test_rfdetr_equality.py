"""streamd's detections for an RF-DETR ONNX export equal rfdetr's own ``model.predict`` of the same model on the
same frames: same classes (ids and names), boxes within 1 px, scores within 1e-3, same count.

The model is ``RFDETRNano(pretrain_weights=None)`` exported with rfdetr's exporter (rfdetr_ref.py says how its
random init is made a meaningful test subject); rfdetr runs in the training interpreter (STREAMD_TRAIN_PYTHON)
as a subprocess with the network blocked. streamd loads the file with nothing configured: the adapter, input
size and class names come from the export's metadata.

Frames: real Traffic.mp4 / TrafficHD_short.mp4 frames and coco128 images, written as PNG so both sides read
identical pixels (rfdetr opens files with PIL, streamd with OpenCV; their JPEG decoders may differ by a grey
level). Once at the model resolution (256 x 256 crops: no resize at all), once whole (960 x 540,
1920 x 1080, 640 x 4xx): downscaled, where rfdetr's resize (torchvision bilinear, antialias=False, on float
pixels) meets streamd's (the adapter's default resize="linear_float": OpenCV INTER_LINEAR on float32 pixels).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.infer.inspect import inspect_model
from streamd.infer.model import load_model
from streamd.infer.postprocess import PostprocessParams
from tests.reference.compare import (cached_path, compare, detect_files, frames_by_kind, framework_reference,
                                     pick_threshold, run_train, train_python, without_metadata)

pytestmark = pytest.mark.reference

REF_SCRIPT = Path(__file__).with_name("rfdetr_ref.py")
EXPORT_CODE = Path(__file__).resolve().parents[2] / "tools" / "export" / "frameworks.py"
IMGSZ = 256  # rfdetr_ref.RESOLUTION: see there why not nano's default 384
QUANTILE = 0.9  # of the top-300 scores: ~30 detections per frame


def exported() -> Path:
    """The cached export (out/reference-cache, keyed by the reference and export code), made on first use."""
    path = cached_path("rfdetr-nano", REF_SCRIPT, EXPORT_CODE)
    if not path.is_file():
        python = train_python("rfdetr", "onnx")
        run_train(python, str(REF_SCRIPT), "export", "--out", str(path))
    return path


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return frames_by_kind(tmp_path_factory.mktemp("rfdetr-frames"), IMGSZ)


@pytest.mark.parametrize("kind", ["model-resolution", "downscaled"])
def test_streamd_equals_rfdetr_predict(kind: str, frames: dict[str, list[Path]], tmp_path: Path) -> None:
    images = frames[kind]
    path = exported()
    model = load_model(str(path))  # nothing configured: adapter, input size and names from the file
    assert model.adapter.name == "rfdetr"
    assert model.input_hw == (IMGSZ, IMGSZ)
    threshold = pick_threshold(path, images, QUANTILE)
    params = PostprocessParams(confidence=threshold, max_detections=300)
    ours = detect_files(model, images, params)
    ref = framework_reference(REF_SCRIPT, ("rfdetr", "onnx"), path, images, threshold, tmp_path / "reference.json")
    agreement = compare(ours, ref, f"{path.name} {kind} (threshold {threshold})", threshold)
    assert agreement.detections >= 10 * len(images), f"too few detections to compare: {agreement}"
    for theirs in ref:  # the names in the file are rfdetr's names of the same class ids (COCO category ids)
        for name, class_id in zip(theirs["class_name"], theirs["class_id"], strict=True):
            assert model.names[class_id] == (name or f"class_{class_id}"), f"class {class_id}"  # '' = unused id
    print(f"\n{path.name} {kind}: {agreement.detections} detections, max box diff {agreement.max_box_px:.4f} px, "
          f"max score diff {agreement.max_score:.2e}")


def test_inspect_identifies_rfdetr_export() -> None:
    report = inspect_model(exported(), runs=0)
    assert report.adapter == "rfdetr"
    assert report.adapter_source.startswith("streamd metadata")
    assert report.adapter_candidates == ["rfdetr"]  # the output layout alone says the same
    assert report.input_hw == (IMGSZ, IMGSZ)
    assert report.batch_axis == "dynamic"
    assert report.precision == "fp32"
    assert report.num_classes == 91  # rfdetr's COCO layout: logit index = COCO category id
    assert report.classes[1] == "person" and report.classes[3] == "car" and report.classes[90] == "toothbrush"
    assert report.preprocess["letterbox"] is False and report.preprocess["mean"] == (0.485, 0.456, 0.406)


def test_inspect_identifies_rfdetr_export_without_metadata(tmp_path: Path) -> None:
    """A user's own RF-DETR export carries no streamd metadata: the output layout still gives the adapter."""
    report = inspect_model(without_metadata(exported(), tmp_path / "plain.onnx"), runs=0)
    assert report.adapter == "rfdetr" and report.adapter_source == "output names and shapes"
    assert report.input_hw == (IMGSZ, IMGSZ) and report.num_classes == 91  # one logit per COCO category id
