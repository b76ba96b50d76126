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

import cv2
import numpy as np
import pytest

from streamd.infer.inspect import inspect_model
from streamd.infer.model import LoadedModel, load_model
from streamd.infer.postprocess import PostprocessParams
from tests.reference.compare import (cached_path, compare, detect_files, frames_by_kind, framework_reference,
                                     model_tensor, pick_threshold, run_train, train_python,
                                     without_metadata)

pytestmark = pytest.mark.reference

REF_SCRIPT = Path(__file__).with_name("rfdetr_ref.py")
EXPORT_CODE = Path(__file__).resolve().parents[2] / "tools" / "export" / "frameworks.py"
IMGSZ = 256  # rfdetr_ref.RESOLUTION: see there why not nano's default 384 (which the last test covers)
NANO_DEFAULT = 384  # 24 x 24 = 576 encoder tokens; the 300 best become decoder queries
TIE = 1e-4  # encoder token scores this close to the 300th may swap places between PyTorch and ONNX Runtime
QUANTILE = 0.9  # of the top-300 scores: ~30 detections per frame


def exported(imgsz: int = IMGSZ) -> Path:
    """The cached export (out/reference-cache, keyed by the reference and export code), made on first use."""
    path = cached_path("rfdetr-nano" if imgsz == IMGSZ else f"rfdetr-nano-{imgsz}", REF_SCRIPT, EXPORT_CODE)
    if not path.is_file():
        python = train_python("rfdetr", "onnx")
        run_train(python, str(REF_SCRIPT), "export", "--out", str(path), "--imgsz", str(imgsz))
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


def onnx_encoder_selection(path: Path, model: LoadedModel, images: list[Path],
                           work: Path) -> tuple[list[np.ndarray], list[set[int]]]:
    """Per image: every encoder token's score and the tokens kept as queries, read from the ONNX graph's one
    TopK node (made a graph output in a copy), on the input tensor streamd's pre-processing makes."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(path))
    topk = [n for n in graph.graph.node if n.op_type == "TopK"]
    assert len(topk) == 1, f"{path}: expected the encoder's one TopK node, found {len(topk)}"
    graph.graph.output.extend([onnx.helper.make_tensor_value_info(topk[0].input[0], onnx.TensorProto.FLOAT, None),
                               onnx.helper.make_tensor_value_info(topk[0].output[1], onnx.TensorProto.INT64, None)])
    probe = work / "probe.onnx"
    onnx.save(graph, str(probe))
    session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
    scores, kept = [], []
    for image in images:
        tensor, _ = model_tensor(model, [cv2.imread(str(image))])
        token_scores, indices = session.run(None, {model.info.input_name: tensor})[-2:]
        scores.append(token_scores.reshape(-1))
        kept.append(set(indices.reshape(-1).tolist()))
    return scores, kept


def test_nano_default_resolution_agrees_wherever_the_encoder_keeps_the_same_queries(tmp_path: Path) -> None:
    """At nano's own 384 px, the untrained encoder keeps 300 of 576 tokens whose scores are packed so tightly
    that float noise can swap one at the cut (rfdetr_ref.py). Per frame: the two sides' token scores agree, any
    token kept by one side only sits within TIE of the cut, and frames with the same queries give the same
    detections (1 px, 1e-3)."""
    path = exported(NANO_DEFAULT)
    model = load_model(str(path))
    assert model.adapter.name == "rfdetr" and model.input_hw == (NANO_DEFAULT, NANO_DEFAULT)
    (tmp_path / "frames").mkdir()
    by_kind = frames_by_kind(tmp_path / "frames", NANO_DEFAULT)
    images = by_kind["model-resolution"] + by_kind["downscaled"]
    threshold = pick_threshold(path, images, QUANTILE)
    ours = detect_files(model, images, PostprocessParams(confidence=threshold, max_detections=300))
    ref = framework_reference(REF_SCRIPT, ("rfdetr", "onnx"), path, images, threshold, tmp_path / "reference.json",
                              "--record-selection")
    onnx_scores, onnx_kept = onnx_encoder_selection(path, model, images, tmp_path)
    same, swapped_tokens, max_token_diff = [], 0, 0.0
    for i, (theirs, scores, kept) in enumerate(zip(ref, onnx_scores, onnx_kept, strict=True)):
        torch_scores = np.asarray(theirs["encoder_selection"]["scores"], np.float32)
        assert torch_scores.shape == scores.shape == (576,), f"image {i}: {torch_scores.shape} {scores.shape}"
        max_token_diff = max(max_token_diff, float(np.abs(torch_scores - scores).max()))
        swapped = kept ^ set(theirs["encoder_selection"]["indices"])
        if not swapped:
            same.append(i)
            continue
        cut = np.sort(scores)[::-1][299]
        distance = np.abs(scores[sorted(swapped)] - cut).max()
        assert distance <= TIE, f"image {i} ({images[i].name}): tokens {sorted(swapped)} kept by one side only " \
                                f"score up to {distance:.2e} from the cut, more than a float tie"
        swapped_tokens += len(swapped)
    assert max_token_diff <= 1e-3, f"encoder token scores differ by {max_token_diff:.2e}"
    assert len(same) >= len(images) * 2 // 3, f"only {len(same)} of {len(images)} frames kept the same queries"
    agreement = compare([ours[i] for i in same], [ref[i] for i in same], f"{path.name} (threshold {threshold})",
                        threshold)
    assert agreement.detections >= 10 * len(same), f"too few detections to compare: {agreement}"
    print(f"\n{path.name}: {len(same)} of {len(images)} frames kept the same 300 queries ({swapped_tokens} tokens "
          f"swapped at the cut elsewhere, token scores within {max_token_diff:.1e}); on those, "
          f"{agreement.detections} detections, max box diff {agreement.max_box_px:.4f} px, "
          f"max score diff {agreement.max_score:.2e}")
