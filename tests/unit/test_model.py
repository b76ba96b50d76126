"""streamd.infer.model + adapters + postprocess on tiny ONNX graphs built here, and on the real YOLOX-nano."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamd.errors import ModelError
from streamd.infer.adapters import ADAPTERS, UltralyticsAdapter, YoloxAdapter
from streamd.infer.model import load_model
from streamd.infer.postprocess import PostprocessParams, finish
from streamd.infer.preprocess import letterbox_into, to_tensor

# Ultralytics layout [4 + nc, N] in model-input pixels (64x64 input), nc = 2 (names 'a', 'b').
# Columns: cx, cy, w, h, score_a, score_b
KNOWN = np.array(
    [
        [32, 32, 16, 16, 0.90, 0.00],  # A: class a
        [33, 32, 16, 16, 0.80, 0.05],  # B: class a, IoU 0.88 with A -> suppressed
        [32, 33, 16, 16, 0.02, 0.70],  # C: class b, IoU 0.88 with A -> kept unless class-agnostic
        [12, 52, 8, 8, 0.00, 0.60],  # D: class b, far away
        [50, 10, 6, 6, 0.10, 0.00],  # E: below the confidence threshold
        [0, 0, 0, 0, 0.0, 0.0],  # padding anchors (a real head has thousands)
        [0, 0, 0, 0, 0.0, 0.0],
        [0, 0, 0, 0, 0.0, 0.0],
    ],
    np.float32,
).T  # -> [6, 8]
# Expected in the 128x96 source (letterbox ratio 0.5, centre padding: 8 rows on top).
SRC_A = [48, 32, 80, 64]
SRC_C = [48, 34, 80, 66]
SRC_D = [16, 80, 32, 96]
ULTRA_META = {"names": "{0: 'a', 1: 'b'}", "imgsz": "[64, 64]", "task": "detect"}


def constant_model(path: Path, const: np.ndarray, batch: int | str = "b", hw: tuple = (64, 64),
                   mean_weight: float = 0.0, metadata: dict[str, str] | None = None,
                   out_shape: list | None = None, input_shape: list | None = None) -> Path:
    """A graph whose output is ``const`` (+ mean of each input image * mean_weight), batch dim following the input.
    ``input_shape`` replaces the [batch, 3, *hw] image input (for layouts streamd must refuse)."""
    const = np.asarray(const, np.float32)
    rank = const.ndim + 1
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, input_shape or [batch, 3, *hw])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT,
                                           out_shape or [batch, *const.shape])
    inits = [
        numpy_helper.from_array(const[None], "const"),
        numpy_helper.from_array(np.array([-1] + [1] * (rank - 1), np.int64), "shape"),
        numpy_helper.from_array(np.array(mean_weight, np.float32), "weight"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["mean_r"]),
        helper.make_node("Mul", ["mean_r", "weight"], ["scaled"]),
        helper.make_node("Add", ["scaled", "const"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [images], [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="streamd-tests")
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def ultra_path(tmp_path: Path) -> Path:
    return constant_model(tmp_path / "ultra.onnx", KNOWN, metadata=ULTRA_META)


def source_frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (96, 128, 3), np.uint8)  # H=96, W=128


def detect(model, frames: list[np.ndarray], params: PostprocessParams):
    h, w = model.input_hw
    spec = model.adapter.preprocess
    pixels = np.zeros((len(frames), h, w, 3), np.uint8)
    transforms = [letterbox_into(f, pixels[i], spec) for i, f in enumerate(frames)]
    tensor = to_tensor(pixels, spec, np.zeros((len(frames), 3, h, w), np.float32))
    outputs = model.run(tensor)
    return [
        finish(model.adapter.decode(outputs, i, params.confidence), params, t, f.shape[1], f.shape[0])
        for i, (f, t) in enumerate(zip(frames, transforms))
    ]


# --- (a) ultralytics-style model: auto-detection, names, mapping back, NMS ----------------------


def test_ultralytics_model_is_detected_with_metadata_names(ultra_path: Path) -> None:
    model = load_model(str(ultra_path))
    assert isinstance(model.adapter, UltralyticsAdapter)
    assert model.names == ["a", "b"]
    assert model.input_hw == (64, 64)
    assert model.adapter.num_classes == 2
    assert model.info.static_batch is None
    assert model.info.input_name == "images"
    assert model.info.output_shapes == [(None, 6, 8)]
    assert "CPUExecutionProvider" in model.providers


def test_boxes_map_back_to_source_pixels_with_class_aware_nms(ultra_path: Path) -> None:
    model = load_model(str(ultra_path))
    (dets,) = detect(model, [source_frame()], PostprocessParams(confidence=0.25, iou=0.45))
    np.testing.assert_allclose(dets.xyxy, [SRC_A, SRC_C, SRC_D], atol=1e-4)
    np.testing.assert_allclose(dets.confidence, [0.9, 0.7, 0.6], atol=1e-6)
    assert [model.names[c] for c in dets.class_id] == ["a", "b", "b"]
    assert dets.xyxy.dtype == np.float32 and dets.class_id.dtype == np.int32


def test_class_agnostic_nms_removes_the_overlapping_box_of_another_class(ultra_path: Path) -> None:
    model = load_model(str(ultra_path))
    (dets,) = detect(model, [source_frame()], PostprocessParams(confidence=0.25, iou=0.45, class_agnostic=True))
    np.testing.assert_allclose(dets.xyxy, [SRC_A, SRC_D], atol=1e-4)
    assert dets.class_id.tolist() == [0, 1]


def test_dynamic_batch_runs_in_one_call(ultra_path: Path) -> None:
    model = load_model(str(ultra_path))
    results = detect(model, [source_frame(), source_frame()[:, :96]], PostprocessParams())
    assert len(results[0].confidence) == 3
    # a 96x96 frame is letterboxed with ratio 2/3 and no padding
    np.testing.assert_allclose(results[1].xyxy[0], np.array([24, 24, 40, 40]) * 1.5, atol=1e-4)


def test_decode_applies_min_confidence(ultra_path: Path) -> None:
    model = load_model(str(ultra_path))
    outputs = model.run(np.zeros((1, 3, 64, 64), np.float32))
    assert outputs[0].shape == (1, 6, 8)
    assert len(model.adapter.decode(outputs, 0, 0.05).confidence) == 5
    cands = model.adapter.decode(outputs, 0, 0.75)
    assert cands.class_id.tolist() == [0, 0]
    np.testing.assert_allclose(cands.xyxy, [[24, 24, 40, 40], [25, 24, 41, 40]])


def test_ultralytics_without_metadata_matches_on_the_anchor_count(tmp_path: Path) -> None:
    const = np.zeros((6, 84), np.float32)  # 64x64 input: 8x8 + 4x4 + 2x2 ... = 64 + 16 + 4 anchors
    const[:, 0] = [32, 32, 16, 16, 0.9, 0.0]
    path = constant_model(tmp_path / "plain.onnx", const)
    model = load_model(str(path))
    assert isinstance(model.adapter, UltralyticsAdapter)
    assert model.names == ["class_0", "class_1"]


# --- (b) static batch axis ---------------------------------------------------------------------


@pytest.mark.parametrize(("static", "n"), [(1, 3), (1, 1), (2, 3), (2, 1), (2, 4), (3, 7)])
def test_static_batch_is_looped_padded_and_concatenated(tmp_path: Path, static: int, n: int) -> None:
    path = constant_model(tmp_path / "static.onnx", KNOWN, batch=static, mean_weight=1.0, metadata=ULTRA_META)
    model = load_model(str(path))
    assert model.info.static_batch == static
    batch = np.stack([np.full((3, 64, 64), float(i), np.float32) for i in range(n)])
    (out,) = model.run(batch)
    assert out.shape == (n, 6, 8)
    for i in range(n):  # item i's output is the constant plus its mean: order is preserved
        np.testing.assert_allclose(out[i], KNOWN + i, atol=1e-5)


def test_static_batch_of_one_end_to_end(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "static1.onnx", KNOWN, batch=1, metadata=ULTRA_META)
    model = load_model(str(path))
    results = detect(model, [source_frame()] * 3, PostprocessParams())
    assert [len(r.confidence) for r in results] == [3, 3, 3]
    for r in results:
        np.testing.assert_allclose(r.xyxy[0], SRC_A, atol=1e-4)


# --- input layout (issue 19 item 4): refused when loaded, not when the first frame arrives ------------


@pytest.mark.parametrize(
    ("shape", "says"),
    [
        (["b", 1, 64, 64], "['b', 1, 64, 64], 1 channels"),
        ([1, 4, 64, 64], "[1, 4, 64, 64], 4 channels"),
        ([1, 64, 64, 3], "looks channels-last (NHWC"),
        (["b", 1, 3, 64, 64], "(rank 5)"),
    ],
    ids=["grey", "rgba", "nhwc", "rank5"],
)
def test_input_without_three_channels_is_refused_at_load(tmp_path: Path, shape: list, says: str) -> None:
    path = constant_model(tmp_path / "odd.onnx", KNOWN, metadata=ULTRA_META, input_shape=shape)
    with pytest.raises(ModelError) as info:
        load_model(str(path))
    message = str(info.value)
    assert str(path) in message and "image input images" in message, message
    assert says in message, message
    assert "[batch, 3, height, width]" in message, message


def test_dynamic_channel_axis_is_accepted(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "dyn.onnx", KNOWN, metadata=ULTRA_META, input_shape=["b", "c", 64, 64])
    model = load_model(str(path))
    assert isinstance(model.adapter, UltralyticsAdapter)
    assert model.run(np.zeros((1, 3, 64, 64), np.float32))[0].shape == (1, 6, 8)


def test_inspect_reports_a_one_channel_model_as_an_error(tmp_path: Path, capsys) -> None:
    from streamd.cli import main

    path = constant_model(tmp_path / "grey.onnx", KNOWN, metadata=ULTRA_META, input_shape=["b", 1, 64, 64])
    assert main(["model", "inspect", str(path), "--runs", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model ") and "1 channels" in err and "Traceback" not in err


def test_validate_refuses_a_pipeline_whose_model_takes_one_channel(tmp_path: Path, capsys) -> None:
    from streamd.cli import main

    path = constant_model(tmp_path / "grey.onnx", KNOWN, metadata=ULTRA_META, input_shape=["b", 1, 64, 64])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"pipelines:\n  p:\n    model: {path}\nstreams:\n  - name: cam\n    url: {tmp_path}/x.mp4\n"
                   f"    pipeline: p\n")
    assert main(["validate", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "1 channels" in err and str(path) in err and "Traceback" not in err


# --- adapter selection and its errors ---------------------------------------------------------


def test_output_that_fits_no_adapter_lists_the_adapters(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "cls.onnx", np.zeros(10, np.float32))
    with pytest.raises(ModelError) as info:
        load_model(str(path))
    message = str(info.value)
    assert str(path) in message and "no adapter reads outputs output0 [None, 10]" in message
    assert "ultralytics, ultralytics_e2e, rtdetr, yolox, fastestdet, rfdetr, torchvision" in message
    assert "`adapter:`" in message


def test_output_that_fits_several_adapters_asks_for_one(tmp_path: Path) -> None:
    # YOLOX rows for a 64x64 input (84) with names metadata: both layouts are plausible
    path = constant_model(tmp_path / "both.onnx", np.zeros((84, 85), np.float32),
                          metadata={"names": str({i: f"c{i}" for i in range(80)})})
    with pytest.raises(ModelError, match=r"fit several adapters: ultralytics \(.*\); yolox \(.*\); set `adapter:`"):
        load_model(str(path))
    model = load_model(str(path), adapter="yolox")  # the explicit choice wins
    assert isinstance(model.adapter, YoloxAdapter) and model.adapter.num_classes == 80


def test_streamd_adapter_metadata_wins(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "declared.onnx", np.zeros((84, 85), np.float32),
                          metadata={"streamd_adapter": "yolox"})
    assert isinstance(load_model(str(path)).adapter, YoloxAdapter)


def test_dynamic_input_size_comes_from_config_then_metadata(tmp_path: Path) -> None:
    meta = {**ULTRA_META, "imgsz": "[32, 48]"}
    path = constant_model(tmp_path / "dyn.onnx", KNOWN, hw=("h", "w"), metadata=meta)
    assert load_model(str(path)).input_hw == (32, 48)
    assert load_model(str(path), input_size=(64, 96)).input_hw == (64, 96)


def test_configured_input_size_conflicting_with_a_fixed_input(ultra_path: Path) -> None:
    with pytest.raises(ModelError, match=r"fixed input of 64x64; remove input_size \[32, 32\]"):
        load_model(str(ultra_path), input_size=(32, 32))


def test_missing_model_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "nope.onnx"
    with pytest.raises(ModelError, match="does not exist") as info:
        load_model(str(missing))
    assert str(missing) in str(info.value)


def test_corrupt_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelError, match="is truncated or not an ONNX file") as info:
        load_model(str(bad))
    assert str(bad) in str(info.value)
    with pytest.raises(ModelError, match="is a directory, not an ONNX file"):
        load_model(str(tmp_path))


def test_unavailable_provider_falls_back_to_cpu(ultra_path: Path) -> None:
    model = load_model(str(ultra_path), providers=["NoSuchExecutionProvider"])
    assert model.providers == ["CPUExecutionProvider"]


# --- class names ------------------------------------------------------------------------------


def test_labels_file_with_too_few_names(tmp_path: Path, ultra_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("only-one\n\n")
    with pytest.raises(ModelError) as info:
        load_model(str(ultra_path), labels=str(labels))
    assert str(labels) in str(info.value) and "has 1 names" in str(info.value) and "predicts 2 classes" in str(info.value)


def test_labels_file_overrides_metadata_and_missing_labels_file_errors(tmp_path: Path, ultra_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("person\n  car \n")
    assert load_model(str(ultra_path), labels=str(labels)).names == ["person", "car"]
    with pytest.raises(ModelError, match="cannot be read"):
        load_model(str(ultra_path), labels=str(tmp_path / "missing.txt"))


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ("{0: 'a', 1: 'b'}", ["a", "b"]),
        ("{1: 'b', 0: 'a'}", ["a", "b"]),
        ('["x", "y"]', ["x", "y"]),
    ],
)
def test_names_metadata_formats(tmp_path: Path, raw: str, names: list[str]) -> None:
    path = constant_model(tmp_path / "n.onnx", KNOWN, metadata={**ULTRA_META, "names": raw})
    assert load_model(str(path)).names == names


def test_unreadable_names_metadata(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "n.onnx", KNOWN, metadata={**ULTRA_META, "names": "{0: 'a',"})
    with pytest.raises(ModelError, match="metadata `names` is unreadable"):
        load_model(str(path))


def test_adapter_registry() -> None:
    assert list(ADAPTERS) == ["ultralytics", "ultralytics_e2e", "rtdetr", "yolox", "fastestdet", "rfdetr",
                              "torchvision"]
    assert ADAPTERS["ultralytics"] is UltralyticsAdapter and ADAPTERS["yolox"] is YoloxAdapter
    assert YoloxAdapter.preprocess.pad_position == "top_left" and not YoloxAdapter.preprocess.rgb
    assert YoloxAdapter.preprocess.scale == 1.0
    assert UltralyticsAdapter.preprocess.pad_position == "center" and UltralyticsAdapter.preprocess.rgb


# --- YOLOX decode on a synthetic head ---------------------------------------------------------


def test_yolox_decode_grid_and_stride() -> None:
    adapter = YoloxAdapter((64, 64), num_classes=2)
    raw = np.zeros((1, 84, 7), np.float32)
    raw[0, :, 2:4] = -10  # tiny boxes everywhere, zero scores
    # row 9 = stride 8, cell (x=1, y=1): centre ((0.5 + 1) * 8, (0.25 + 1) * 8), size exp(0) * 8
    raw[0, 9] = [0.5, 0.25, 0, 0, 0.9, 0.1, 1.0]
    # row 64 + 5 = stride 16, cell (x=1, y=1): centre 16, 16, size exp(log 2) * 16 = 32
    raw[0, 69] = [0.0, 0.0, np.log(2), np.log(2), 0.8, 1.0, 0.0]
    cands = adapter.decode([raw], 0, 0.5)
    order = np.argsort(-cands.confidence)
    np.testing.assert_allclose(cands.confidence[order], [0.9, 0.8], atol=1e-6)
    assert cands.class_id[order].tolist() == [1, 0]
    np.testing.assert_allclose(cands.xyxy[order], [[8, 6, 16, 14], [0, 0, 32, 32]], atol=1e-4)


def test_yolox_decode_rejects_a_wrong_row_count() -> None:
    with pytest.raises(ValueError, match="expected 84"):
        YoloxAdapter((64, 64), 2).decode([np.zeros((1, 10, 7), np.float32)], 0, 0.5)


# --- (c) the real YOLOX-nano on a Traffic.mp4 frame -------------------------------------------


def traffic_frame(media: Path, index: int = 30) -> np.ndarray:
    with av.open(str(media / "videos" / "Traffic.mp4")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="bgr24")
    raise AssertionError("Traffic.mp4 is shorter than expected")


def test_real_yolox_nano_detects_cars_on_traffic(media: Path) -> None:
    model_path = media / "models" / "yolox-nano" / "yolox_nano.onnx"
    model = load_model(str(model_path), labels=str(media / "models" / "coco.names"))
    assert isinstance(model.adapter, YoloxAdapter)
    assert model.input_hw == (416, 416) and model.info.static_batch == 1
    assert len(model.names) == 80 and model.names[2] == "car"
    frame = traffic_frame(media)
    assert frame.shape == (540, 960, 3)
    (dets,) = detect(model, [frame, frame], PostprocessParams(confidence=0.3, iou=0.45))[:1]
    cars = [(c, box) for c, cid, box in zip(dets.confidence, dets.class_id, dets.xyxy) if model.names[cid] == "car"]
    assert any(c > 0.5 for c, _ in cars), dets
    for _, (x1, y1, x2, y2) in cars:
        assert 0 <= x1 < x2 <= 960 and 0 <= y1 < y2 <= 540
        assert 4 < x2 - x1 < 500 and 4 < y2 - y1 < 400


def test_real_yolox_all_boxes_are_clipped_to_the_frame(media: Path) -> None:
    model = load_model(str(media / "models" / "yolox-nano" / "yolox_nano.onnx"),
                       labels=str(media / "models" / "coco.names"))
    (dets,) = detect(model, [traffic_frame(media)], PostprocessParams(confidence=0.3))
    assert len(dets.confidence) > 0
    assert (dets.xyxy[:, [0, 2]] >= 0).all() and (dets.xyxy[:, [0, 2]] <= 960).all()
    assert (dets.xyxy[:, [1, 3]] >= 0).all() and (dets.xyxy[:, [1, 3]] <= 540).all()
