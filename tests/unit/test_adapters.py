"""Every adapter on tiny ONNX graphs built here: auto-detection from metadata and from output names/shapes,
decoding, pre-processing defaults and overrides, FP16 inputs, unbatched (torchvision-style) models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamd.errors import ModelError
from streamd.infer.adapters import (
    ADAPTERS, FastestDetAdapter, RfdetrAdapter, RtdetrAdapter, TorchvisionAdapter, UltralyticsAdapter,
    UltralyticsEndToEndAdapter, YoloxAdapter,
)
from streamd.infer.model import _stack_padded, load_model
from streamd.infer.postprocess import Candidates, PostprocessParams, finish
from streamd.infer.preprocess import PreprocessSpec, letterbox_into, to_tensor
from tests.unit.test_model import KNOWN, ULTRA_META, constant_model, detect, source_frame

ULTRA_E2E_META = {**ULTRA_META, "end2end": "True", "head": "Detect", "stride": "32"}
RTDETR_META = {**ULTRA_META, "end2end": "False", "head": "RTDETRDecoder", "stride": "32"}


def graph_model(path: Path, outputs: dict[str, np.ndarray], input_shape: list, *,
                input_type: int = TensorProto.FLOAT, metadata: dict[str, str] | None = None,
                declared: dict[str, list] | None = None) -> Path:
    """A graph with one image input whose outputs are the given constants (plus 0 * mean of the input)."""
    images = helper.make_tensor_value_info("images", input_type, input_shape)
    nodes = [helper.make_node("Cast", ["images"], ["images_f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["images_f"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    infos = []
    for name, value in outputs.items():
        integer = np.issubdtype(value.dtype, np.integer)
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_const"))
        if integer:
            nodes += [helper.make_node("Add", [f"{name}_const", "nothing"], [f"{name}_f"]),
                      helper.make_node("Cast", [f"{name}_f"], [name], to=TensorProto.INT64)]
        else:
            nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [name]))
        shape = (declared or {}).get(name, list(value.shape))
        infos.append(helper.make_tensor_value_info(name, TensorProto.INT64 if integer else TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "tiny", [images], infos, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="streamd-tests")
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- ultralytics end-to-end (YOLOv10 / YOLO26) -------------------------------------------------

E2E_ROWS = np.array([
    [24, 24, 40, 40, 0.90, 0],  # in model pixels (64x64)
    [25, 24, 41, 40, 0.80, 0],  # overlaps the first, same class: an NMS-free head keeps both
    [4, 44, 12, 52, 0.60, 1],
    [0, 0, 0, 0, 0.01, 0],  # below any sensible threshold
], np.float32)


def test_end_to_end_head_is_chosen_from_ultralytics_metadata_and_not_suppressed(tmp_path: Path) -> None:
    path = graph_model(tmp_path / "e2e.onnx", {"output0": E2E_ROWS[None]}, [1, 3, 64, 64], metadata=ULTRA_E2E_META)
    model = load_model(str(path))
    assert isinstance(model.adapter, UltralyticsEndToEndAdapter)
    assert model.adapter.num_classes == 2 and model.names == ["a", "b"]  # classes from metadata names
    (dets,) = detect(model, [source_frame()], PostprocessParams(confidence=0.25, iou=0.45))
    # 128x96 source letterboxed at ratio 0.5 with 8 rows of padding on top
    np.testing.assert_allclose(dets.xyxy, [[48, 32, 80, 64], [50, 32, 82, 64], [8, 72, 24, 88]], atol=1e-4)
    np.testing.assert_allclose(dets.confidence, [0.9, 0.8, 0.6], atol=1e-6)
    assert dets.class_id.tolist() == [0, 0, 1]


def test_end_to_end_layout_without_metadata_is_ambiguous_and_lists_candidates(tmp_path: Path) -> None:
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, :4] = E2E_ROWS
    path = graph_model(tmp_path / "e2e.onnx", {"output0": rows}, [1, 3, 64, 64])
    with pytest.raises(ModelError) as info:
        load_model(str(path))
    message = str(info.value)
    assert "fit several adapters" in message and "ultralytics_e2e (" in message and "rtdetr (" in message
    assert "output0 [1, 300, 6]" in message and str(path) in message
    model = load_model(str(path), adapter="ultralytics_e2e", labels=str(_labels(tmp_path, 2)))
    assert isinstance(model.adapter, UltralyticsEndToEndAdapter)


def test_end_to_end_without_names_needs_labels(tmp_path: Path) -> None:
    path = graph_model(tmp_path / "e2e.onnx", {"output0": E2E_ROWS[None]}, [1, 3, 64, 64])
    with pytest.raises(ModelError, match=r"give a class-names file.*`labels:` in the pipeline"):
        load_model(str(path), adapter="ultralytics_e2e")


def _labels(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"c{i}\n" for i in range(n)))
    return path


def test_other_ultralytics_tasks_are_refused(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "seg.onnx", KNOWN, metadata={**ULTRA_META, "task": "segment"})
    with pytest.raises(ModelError, match="ultralytics 'segment' model; streamd reads detection models"):
        load_model(str(path))


# --- RT-DETR --------------------------------------------------------------------------------------


def test_rtdetr_compact_layout_normalised_boxes_and_plain_resize(tmp_path: Path) -> None:
    rows = np.array([[0.5, 0.5, 0.25, 0.25, 0.9, 1], [0.5, 0.5, 0.25, 0.25, 0.7, 1], [0.1, 0.1, 0.1, 0.1, 0.1, 0]],
                    np.float32)
    path = graph_model(tmp_path / "rtdetr.onnx", {"output0": rows[None]}, [1, 3, 64, 64], metadata=RTDETR_META)
    model = load_model(str(path))
    assert isinstance(model.adapter, RtdetrAdapter)
    assert model.adapter.preprocess.letterbox is False  # ultralytics stretches for RT-DETR
    (dets,) = detect(model, [source_frame()], PostprocessParams(confidence=0.25))
    # centre of the 128x96 frame, a quarter of each side; duplicates stay (no NMS in DETR models)
    np.testing.assert_allclose(dets.xyxy, [[48, 36, 80, 60], [48, 36, 80, 60]], atol=1e-4)
    assert dets.class_id.tolist() == [1, 1]


def test_rtdetr_score_per_class_layout(tmp_path: Path) -> None:
    nc = 3
    rows = np.zeros((300, 4 + nc), np.float32)
    rows[0] = [0.5, 0.5, 0.5, 0.5, 0.1, 0.2, 0.8]
    rows[1] = [0.25, 0.25, 0.1, 0.1, 0.6, 0.0, 0.1]
    meta = {**RTDETR_META, "names": "{0: 'a', 1: 'b', 2: 'c'}"}
    model = load_model(str(graph_model(tmp_path / "old.onnx", {"output0": rows[None]}, [1, 3, 64, 64], metadata=meta)))
    assert model.adapter.num_classes == 3
    cands = model.adapter.decode(model.run(np.zeros((1, 3, 64, 64), np.float32)), 0, 0.5)
    assert cands.suppressed and cands.class_id.tolist() == [2, 0]
    np.testing.assert_allclose(cands.xyxy, [[16, 16, 48, 48], [12.8, 12.8, 19.2, 19.2]], atol=1e-4)


# --- RF-DETR ------------------------------------------------------------------------------------------


def rfdetr_outputs(queries: int = 5, classes: int = 6) -> dict[str, np.ndarray]:
    boxes = np.tile(np.array([0.5, 0.5, 0.5, 0.5], np.float32), (1, queries, 1))
    boxes[0, 1] = [0.25, 0.75, 0.1, 0.2]
    logits = np.full((1, queries, classes), -10, np.float32)
    logits[0, 0, 2] = 2.0  # sigmoid 0.881
    logits[0, 1, 1] = 1.0  # 0.731
    logits[0, 1, 3] = 0.5  # 0.622: the same query with a second class
    return {"dets": boxes, "labels": logits}


def test_rfdetr_is_found_by_output_names_and_decoded_like_its_postprocess(tmp_path: Path) -> None:
    path = graph_model(tmp_path / "rfdetr.onnx", rfdetr_outputs(), [1, 3, 64, 64])
    model = load_model(str(path))
    assert isinstance(model.adapter, RfdetrAdapter) and model.adapter.num_classes == 6
    assert model.adapter.preprocess.mean == (0.485, 0.456, 0.406) and not model.adapter.preprocess.letterbox
    cands = model.adapter.decode(model.run(np.zeros((1, 3, 64, 64), np.float32)), 0, 0.5)
    order = np.argsort(-cands.confidence)
    np.testing.assert_allclose(cands.confidence[order], 1 / (1 + np.exp([-2.0, -1.0, -0.5])), atol=1e-6)
    assert cands.class_id[order].tolist() == [2, 1, 3]
    np.testing.assert_allclose(cands.xyxy[order], [[16, 16, 48, 48], [12.8, 41.6, 19.2, 54.4],
                                                    [12.8, 41.6, 19.2, 54.4]], atol=1e-4)


def test_rfdetr_unnamed_outputs_in_any_order(tmp_path: Path) -> None:
    out = rfdetr_outputs()
    path = graph_model(tmp_path / "rf.onnx", {"out_a": out["labels"], "out_b": out["dets"]}, [1, 3, 64, 64])
    model = load_model(str(path), labels=str(_labels(tmp_path, 6)))
    assert isinstance(model.adapter, RfdetrAdapter)
    cands = model.adapter.decode(model.run(np.zeros((1, 3, 64, 64), np.float32)), 0, 0.8)
    assert cands.class_id.tolist() == [2]


def test_rfdetr_top_k_caps_the_query_class_pairs() -> None:
    adapter = RfdetrAdapter((64, 64), 91)
    boxes = np.full((1, 300, 4), 0.5, np.float32)
    logits = np.zeros((1, 300, 91), np.float32)  # every pair scores 0.5: 27300 pairs, 300 kept
    assert len(adapter.decode([boxes, logits], 0, 0.1).confidence) == 300


# --- FastestDet ------------------------------------------------------------------------------------


def test_fastestdet_cell_decoding(tmp_path: Path) -> None:
    raw = np.zeros((1, 7, 4, 4), np.float32)  # 64x64 input: 4x4 cells of 16 px, 2 classes
    raw[0, :, 1, 2] = [0.9, 0.0, 0.0, 0.0, 0.0, 0.2, 0.8]  # cell x=2, y=1: centre (2/4, 1/4), size sigmoid(0)=1/2
    raw[0, :, 3, 0] = [0.5, np.arctanh(0.5), 0.0, -10, -10, 0.9, 0.1]
    path = graph_model(tmp_path / "fd.onnx", {"758": raw}, [1, 3, 64, 64])
    model = load_model(str(path))
    assert isinstance(model.adapter, FastestDetAdapter) and model.adapter.num_classes == 2
    assert model.adapter.preprocess == PreprocessSpec(letterbox=False, rgb=False, scale=1 / 255)
    cands = model.adapter.decode(model.run(np.zeros((1, 3, 64, 64), np.float32)), 0, 0.3)
    order = np.argsort(-cands.confidence)
    np.testing.assert_allclose(cands.confidence[order], [0.9**0.6 * 0.8**0.4, 0.5**0.6 * 0.9**0.4], atol=1e-5)
    assert cands.class_id[order].tolist() == [1, 0]
    np.testing.assert_allclose(cands.xyxy[order][0], [16, 0, 48, 32], atol=1e-4)
    np.testing.assert_allclose(cands.xyxy[order][1, [0, 1]], [(0.5 / 4) * 64, (3 / 4) * 64], atol=0.01)


# --- torchvision-style -----------------------------------------------------------------------------


def torchvision_outputs() -> dict[str, np.ndarray]:
    return {"boxes": np.array([[8, 8, 24, 24], [32, 16, 48, 48]], np.float32),
            "scores": np.array([0.95, 0.4], np.float32), "labels": np.array([3, 1], np.int64)}


def test_torchvision_unbatched_model_runs_per_image_and_pads(tmp_path: Path) -> None:
    path = graph_model(tmp_path / "tv.onnx", torchvision_outputs(), [3, "h", "w"],
                       declared={"boxes": ["n", 4], "scores": ["n"], "labels": ["n"]})
    model = load_model(str(path), input_size=(64, 64), labels=str(_labels(tmp_path, 5)))
    assert isinstance(model.adapter, TorchvisionAdapter)
    assert model.info.unbatched and model.info.static_batch == 1
    results = detect(model, [source_frame(), source_frame()], PostprocessParams(confidence=0.3))
    for dets in results:  # plain resize 128x96 -> 64x64: x * 2, y * 1.5
        np.testing.assert_allclose(dets.xyxy, [[16, 12, 48, 36], [64, 24, 96, 72]], atol=1e-4)
        assert dets.class_id.tolist() == [3, 1]


def test_torchvision_outputs_found_by_shape_when_unnamed(tmp_path: Path) -> None:
    out = torchvision_outputs()
    path = graph_model(tmp_path / "tv.onnx", {"o1": out["boxes"], "o2": out["scores"], "o3": out["labels"]},
                       [3, 64, 64], declared={"o1": ["n", 4], "o2": ["n"], "o3": ["n"]})
    model = load_model(str(path), labels=str(_labels(tmp_path, 5)))
    assert isinstance(model.adapter, TorchvisionAdapter) and model.input_hw == (64, 64)


def test_padded_outputs_are_never_kept() -> None:
    stacked = _stack_padded([[np.ones((2, 4), np.float32), np.array([0.9, 0.8], np.float32), np.array([1, 2])],
                             [np.ones((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)]])
    assert [s.shape for s in stacked] == [(2, 2, 4), (2, 2), (2, 2)]
    assert np.isnan(stacked[1][1]).all() and (stacked[2][1] == -1).all()
    cands = TorchvisionAdapter((64, 64), 3).decode(stacked, 1, 0.0)
    assert len(cands.confidence) == 0


# --- FP16 models, pre-processing overrides, registry --------------------------------------------


def test_fp16_input_is_fed_half_floats(tmp_path: Path) -> None:
    path = graph_model(tmp_path / "half.onnx", {"output0": KNOWN[None]}, [1, 3, 64, 64],
                       input_type=TensorProto.FLOAT16, metadata=ULTRA_META)
    model = load_model(str(path))
    assert model.input_dtype is np.float16
    (dets,) = detect(model, [source_frame()], PostprocessParams())  # float32 tensor in, cast inside run
    assert len(dets.confidence) == 3
    spec = model.adapter.preprocess
    half = to_tensor(np.full((1, 64, 64, 3), 255, np.uint8), spec, np.zeros((1, 3, 64, 64), np.float16))
    assert half.dtype == np.float16 and np.allclose(half, 1.0)


def test_preprocess_overrides_replace_single_fields(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "u.onnx", KNOWN, metadata=ULTRA_META)
    model = load_model(str(path), preprocess={"pad_position": "top_left", "mean": [0.5, 0.5, 0.5], "rgb": None})
    spec = model.adapter.preprocess
    assert spec.pad_position == "top_left" and spec.mean == (0.5, 0.5, 0.5)
    assert spec.rgb is True and spec.scale == pytest.approx(1 / 255)  # untouched fields keep the defaults
    assert UltralyticsAdapter.preprocess.pad_position == "center"  # the class default is not modified
    with pytest.raises(ModelError, match=r"unknown preprocessing fields \['flip'\]"):
        load_model(str(path), preprocess={"flip": True})


def test_mean_and_std_normalisation() -> None:
    spec = PreprocessSpec(scale=1 / 255, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    pixels = np.full((1, 2, 2, 3), 255, np.uint8)
    out = to_tensor(pixels, spec, np.zeros((1, 3, 2, 2), np.float32))
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 3.0, 1.0], atol=1e-6)


def test_unknown_adapter_name_and_bad_streamd_metadata(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "u.onnx", KNOWN, metadata={"streamd_adapter": "nope"})
    with pytest.raises(ModelError, match="metadata streamd_adapter='nope' names no adapter"):
        load_model(str(path))
    with pytest.raises(ModelError, match="adapter 'nope' is unknown"):
        load_model(str(path), adapter="nope")


def test_suppressed_candidates_skip_nms_but_keep_threshold_cap_and_clip() -> None:
    from streamd.infer.preprocess import Transform

    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 200, 8]], np.float32)
    cands = Candidates.build(boxes, np.array([0.5, 0.9, 0.7]), np.array([0, 0, 0]), suppressed=True)
    out = finish(cands, PostprocessParams(confidence=0.6, max_detections=5), Transform(1, 1, 0, 0), 100, 100)
    assert out.confidence.tolist() == pytest.approx([0.9, 0.7])
    np.testing.assert_allclose(out.xyxy[1], [5, 5, 100, 8])
    same = Candidates.build(boxes, np.array([0.5, 0.9, 0.7]), np.array([0, 0, 0]))
    assert len(finish(same, PostprocessParams(confidence=0.4), Transform(1, 1, 0, 0), 100, 100).confidence) == 2


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_every_adapter_describes_itself_and_has_sane_defaults(name: str) -> None:
    adapter = ADAPTERS[name]
    assert adapter.name == name and adapter.description
    assert adapter.preprocess.scale > 0 and adapter.preprocess.pad_position in ("center", "top_left")


# --- execution providers ----------------------------------------------------------------------------

GPU = [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in ort.get_available_providers()]


@pytest.mark.parametrize("provider", ["CPUExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider"])
def test_each_provider_gives_the_same_detections(tmp_path: Path, provider: str) -> None:
    if provider not in ort.get_available_providers():
        pytest.skip(f"{provider} is not in this onnxruntime build ({ort.get_available_providers()})")
    path = constant_model(tmp_path / "u.onnx", KNOWN, metadata=ULTRA_META)
    model = load_model(str(path), providers=[provider])
    assert model.providers[0] == provider
    assert model.uses_io_binding == (provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
    (dets,) = detect(model, [source_frame()], PostprocessParams())
    assert dets.class_id.tolist() == [0, 1, 1]


def test_provider_order_is_kept_and_cpu_is_the_last_resort(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "u.onnx", KNOWN, metadata=ULTRA_META)
    model = load_model(str(path), providers=["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                             "OpenVINOExecutionProvider", "CPUExecutionProvider"])
    assert model.providers[-1] == "CPUExecutionProvider"
    assert model.warm_up(runs=2) > 0


def test_letterbox_transform_uses_the_scale_each_axis_really_got() -> None:
    dst = np.zeros((320, 320, 3), np.uint8)
    t = letterbox_into(np.zeros((640, 427, 3), np.uint8), dst, PreprocessSpec())  # 427 * 0.5 -> 214 px
    assert t.scale_x == pytest.approx(214 / 427) and t.scale_y == pytest.approx(0.5) and t.pad_x == 53
