"""`streamd model inspect`: adapter and where it came from, input, batch axis, precision, classes, latency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from streamd.cli import main
from streamd.infer.inspect import inspect_model, precision
from tests.conftest import REPO
from tests.unit.test_adapters import ULTRA_E2E_META, graph_model
from tests.unit.test_model import KNOWN, ULTRA_META, constant_model


def test_report_of_an_ultralytics_model(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "u.onnx", KNOWN, metadata=ULTRA_META)
    report = inspect_model(path, runs=3, warmup=1)
    assert report.adapter == "ultralytics" and report.adapter_source.startswith("ultralytics metadata")
    assert report.input_hw == (64, 64) and report.batch_axis == "dynamic" and report.precision == "fp32"
    assert report.classes == ["a", "b"] and report.num_classes == 2
    assert report.outputs == ["output0 ['?', 6, 8]"]
    assert report.latency_ms["runs"] == 3 and 0 < report.latency_ms["min"] <= report.latency_ms["p90"]
    text = report.to_text()
    assert "adapter:    ultralytics (from ultralytics metadata" in text and "batch axis: dynamic" in text


def test_static_batch_fp16_and_shape_detection(tmp_path: Path) -> None:
    anchors = np.zeros((1, 6, 84), np.float32)  # 64x64 input: 64 + 16 + 4 anchors, no metadata
    path = graph_model(tmp_path / "h.onnx", {"output0": anchors}, [2, 3, 64, 64], input_type=TensorProto.FLOAT16)
    report = inspect_model(path, runs=0, labels=None)
    assert report.batch_axis == "static 2" and report.precision == "fp16" and report.latency_ms == {}
    assert report.adapter_source == "output names and shapes"


def test_e2e_report_and_json_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = np.zeros((1, 300, 6), np.float32)
    path = graph_model(tmp_path / "e.onnx", {"output0": rows}, [1, 3, 64, 64], metadata=ULTRA_E2E_META)
    assert main(["model", "inspect", str(path), "--json", "--runs", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["adapter"] == "ultralytics_e2e" and report["batch_axis"] == "static 1"
    assert report["adapter_candidates"] == ["ultralytics_e2e"]  # the metadata rules RT-DETR out


def test_cli_error_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    proc = subprocess.run([sys.executable, "-m", "streamd", "model", "inspect", str(missing)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 1 and str(missing) in proc.stderr and "does not exist" in proc.stderr


def test_precision_of_the_shipped_int8_model() -> None:
    int8 = REPO / "streamd" / "models" / "conveyor.int8.onnx"
    assert precision(str(int8), "tensor(float)") == "int8 (QDQ)"
    assert precision(str(REPO / "streamd" / "models" / "conveyor.onnx"), "tensor(float)") == "fp32"


def test_fp16_weights_with_fp32_inputs(tmp_path: Path) -> None:
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float16), "w")
    nodes = [helper.make_node("Cast", ["images"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Conv", ["h", "w"], ["c"]),
             helper.make_node("Cast", ["c"], ["out"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 8, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert precision(str(tmp_path / "m.onnx"), "tensor(float)") == "fp16 (fp32 inputs)"


def test_torchvision_layout_without_names_is_identified_and_asks_for_labels(tmp_path: Path) -> None:
    """A user's own torchvision export: no metadata, so no class count; inspect still names the adapter."""
    outputs = {"boxes": np.zeros((5, 4), np.float32), "scores": np.zeros(5, np.float32),
               "labels": np.zeros(5, np.int64)}
    path = graph_model(tmp_path / "tv.onnx", outputs, [1, 3, 64, 64])
    report = inspect_model(path, runs=0)
    assert report.adapter == "torchvision" and report.adapter_source == "output names and shapes"
    assert report.num_classes == 0 and report.classes == []
    assert "classes:    unknown" in report.to_text() and "--labels FILE" in report.to_text()
    names = tmp_path / "names.txt"
    names.write_text("background\nbox\nbottle\n")
    assert inspect_model(path, runs=0, labels=str(names)).classes == ["background", "box", "bottle"]
    from streamd.errors import ModelError
    from streamd.infer.model import load_model

    with pytest.raises(ModelError, match=r"give a class-names file.*`labels:` in the pipeline, --labels"):
        load_model(str(path))  # the daemon needs the names


def test_square_output_at_the_anchor_count_is_reported_as_ambiguous(tmp_path: Path) -> None:
    """[1, 84, 84] at 64x64 reads as ultralytics (4+80 x 84 anchors) or YOLOX (84 rows x 5+79): ask, not guess."""
    path = graph_model(tmp_path / "sq.onnx", {"output0": np.zeros((1, 84, 84), np.float32)}, [1, 3, 64, 64])
    proc = subprocess.run([sys.executable, "-m", "streamd", "model", "inspect", str(path), "--runs", "0"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "fit several adapters: ultralytics" in proc.stderr and "yolox" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert inspect_model(path, adapter="yolox", runs=0).num_classes == 79
