"""tools.export variants (FP16, dynamic INT8, static INT8 QDQ) of the bundled conveyor model, each measured
against FP32 on a tools.synth val set; a variant that breaks accuracy is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from streamd.infer.model import load_model
from tests.conftest import REPO
from tests.tools import needs
from tools.export.__main__ import main as export
from tools.export.quantize import depthwise_nodes, dynamic_float_nodes, float_nodes, head_nodes, stem_nodes
from tools.export.variants import VariantReport, refusal
from tools.synth.dataset import write_dataset

FP32 = REPO / "streamd" / "models" / "conveyor.onnx"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def val_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, {"val": [140, 141]}, every=40)
    return out


def assert_batch_axis_kept(path: Path) -> None:
    """The variant keeps the FP32 export's dynamic batch axis: a batch of 4 gives each image's batch-of-1 output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = np.random.default_rng(0).random((4, 3, 320, 320), dtype=np.float32)
    together = session.run(None, {name: batch})[0]
    assert together.shape[0] == 4, f"{path.name}: batch axis lost"
    for i in (0, 3):
        alone = session.run(None, {name: batch[i : i + 1]})[0][0]
        np.testing.assert_allclose(together[i], alone, atol=1e-2 * max(1.0, float(np.abs(alone).max())))


def test_variants_are_measured_and_shipped(val_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needs("pycocotools")
    out = tmp_path / "conveyor.onnx"
    assert export(["--onnx", str(FP32), "--out", str(out), "--fp16", "--int8-dynamic", "--int8",
                   "--calibration", str(val_set / "images" / "val"), "--calibration-count", "8",
                   "--val-data", str(val_set / "data.yaml"), "--val-split", "val", "--runs", "5"]) == 0
    report = {r["name"]: r for r in json.loads((tmp_path / "conveyor.report.json").read_text())}
    assert list(report) == ["fp32", "fp16", "int8-dynamic", "int8-qdq"]
    for name, suffix in (("fp16", ".fp16.onnx"), ("int8-dynamic", ".int8dyn.onnx"), ("int8-qdq", ".int8.onnx")):
        path = tmp_path / ("conveyor" + suffix)
        assert report[name]["accepted"] and report[name]["status"] == "shipped" and Path(report[name]["path"]) == path
        assert report[name]["size_mb"] < report["fp32"]["size_mb"]
        assert report[name]["map50_drop"] <= 0.02
        assert report[name]["median_ms"] > 0
        model = load_model(str(path))  # the daemon configures itself from each variant's file
        assert model.adapter.name == "ultralytics" and model.names == ["box", "bottle", "can"]
        assert model.info.metadata["streamd_precision"] == name
        if name != "int8-dynamic":  # its per-tensor activation scale spans the batch (the daemon warns)
            assert_batch_axis_kept(path)
    assert report["fp32"]["map50"] > 0.9
    table = (tmp_path / "conveyor.report.md").read_text()
    assert table.count("| yes |") == 4
    kept = report["int8-qdq"]["kept_float"]
    head = [n for n in kept if n.startswith("/model.22/")]  # the ultralytics head, by name, and the input stem
    assert head and all(n.startswith(("/model.22/", "/model.0/", "/model.1/", "/model.2/")) for n in kept)
    assert f"int8-qdq keeps {len(kept)} nodes in float: {kept[0]}, " in table
    out = capsys.readouterr().out
    assert "| int8-qdq |" in out and "Average Precision" not in out  # the table, not 4 pycocotools summaries


def test_a_variant_that_breaks_accuracy_is_refused(val_set: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    needs("pycocotools")
    black = tmp_path / "black"  # calibrating on the wrong images: activation ranges all wrong
    black.mkdir()
    for i in range(4):
        cv2.imwrite(str(black / f"{i}.png"), np.zeros((320, 320, 3), np.uint8))
    out = tmp_path / "conveyor.onnx"
    assert export(["--onnx", str(FP32), "--out", str(out), "--int8", "--calibration", str(black),
                   "--val-data", str(val_set / "data.yaml"), "--val-split", "val", "--runs", "3", "--verbose"]) == 3
    captured = capsys.readouterr()
    assert "REFUSED: int8-qdq" in captured.err and "--calibration images" in captured.err
    assert captured.out.count("Average Precision  (AP) @[ IoU=0.50      |") == 2  # --verbose: fp32 and int8-qdq
    assert not (tmp_path / "conveyor.int8.onnx").exists()
    assert (tmp_path / "conveyor.int8.rejected.onnx").is_file()
    assert "**REFUSED**" in (tmp_path / "conveyor.report.md").read_text()


def test_head_is_found_automatically(media: Path) -> None:
    ultralytics = head_nodes(onnx.load(str(FP32)))
    assert ultralytics and all(n.startswith("/model.22/") for n in ultralytics)
    yolox = onnx.load(str(media / "models" / "yolox-nano" / "yolox_nano.onnx"))
    found = head_nodes(yolox)
    last = [n.name for n in yolox.graph.node if yolox.graph.output[0].name in n.output][0]
    assert last in found
    convs = [n for n in yolox.graph.node if n.name in found and n.op_type == "Conv"]
    assert 3 <= len(convs) < 20  # the prediction convolutions, not the backbone


def test_the_input_stem_is_found(media: Path) -> None:
    """Everything before the third convolution from the input, and that convolution; nothing after it."""
    yolox = onnx.load(str(media / "models" / "yolox-nano" / "yolox_nano.onnx"))
    stem = stem_nodes(yolox)
    assert [n for n in stem if n.startswith("Conv")] == ["Conv_41", "Conv_44", "Conv_47"]
    assert {"Slice_4", "Concat_40", "Mul_43", "Mul_46"} <= set(stem) and not {"Sigmoid_48", "Conv_50"} & set(stem)
    conveyor = stem_nodes(onnx.load(str(FP32)))
    assert [n for n in conveyor if n.endswith("/conv/Conv")] == [f"/model.{i}/conv/Conv" for i in range(2)] + \
        ["/model.2/cv1/conv/Conv"]


def test_dynamic_int8_keeps_what_one_weight_scale_cannot_hold_in_float(media: Path) -> None:
    """YOLOX-Nano: every depthwise convolution and the pointwise one whose channels' weight ranges are ~20x apart
    (Conv_56) stay float besides head and stem; the conveyor model has neither, so its set is head and stem only."""
    yolox = onnx.load(str(media / "models" / "yolox-nano" / "yolox_nano.onnx"))
    kept = set(dynamic_float_nodes(yolox))
    depthwise = depthwise_nodes(yolox)
    assert len(depthwise) == 30 and set(depthwise) <= kept and set(float_nodes(yolox)) <= kept
    assert "Conv_56" in kept and "Conv_73" not in kept  # 56% of its channels under 8 levels; Conv_73 none
    assert sum(1 for n in yolox.graph.node if n.op_type == "Conv" and n.name not in kept) >= 60  # most still INT8
    conveyor = onnx.load(str(FP32))
    assert depthwise_nodes(conveyor) == [] and dynamic_float_nodes(conveyor) == float_nodes(conveyor)


def test_int8_keeps_yolox_accurate(media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """YOLOX-Nano (no ultralytics node names, depthwise stem): static INT8 stays within 0.03 mAP@0.5 of FP32
    on 40 coco128 images, calibrated on 60 others (head only in float, it lost ~0.29 on coco128)."""
    needs("pycocotools")
    coco = media / "datasets" / "coco128"
    images = sorted((coco / "images").glob("*.jpg"))
    val, cal = tmp_path / "val", tmp_path / "cal"
    for sub in ("images", "labels"):
        (val / sub).mkdir(parents=True)
    cal.mkdir()
    shutil.copy(coco / "coco.names", val / "coco.names")
    for image in images[:40]:
        shutil.copy(image, val / "images" / image.name)
        label = coco / "labels" / (image.stem + ".txt")
        if label.is_file():
            shutil.copy(label, val / "labels" / label.name)
    for image in images[-60:]:
        shutil.copy(image, cal / image.name)
    out = tmp_path / "yolox.onnx"
    export(["--onnx", str(media / "models" / "yolox-nano" / "yolox_nano.onnx"), "--labels",
            str(media / "models" / "coco.names"), "--out", str(out), "--int8", "--calibration", str(cal),
            "--val-data", str(val), "--runs", "3", "--max-map50-drop", "0.03"])
    report = {r["name"]: r for r in json.loads((tmp_path / "yolox.report.json").read_text())}
    assert report["fp32"]["map50"] > 0.4
    assert report["int8-qdq"]["map50_drop"] <= 0.03, capsys.readouterr().err
    assert report["int8-qdq"]["status"] == "shipped"
    assert {"Conv_41", "Conv_44", "Conv_47"} <= set(report["int8-qdq"]["kept_float"])


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export(["--onnx", str(tmp_path / "x.onnx"), "--out", str(tmp_path / "y.onnx")]) == 2
    assert "x.onnx does not exist" in capsys.readouterr().err
    assert export(["--onnx", str(FP32), "--out", str(tmp_path / "y.onnx"), "--int8"]) == 2
    assert "--int8 needs --calibration" in capsys.readouterr().err


def test_the_gate_does_not_judge_when_fp32_scores_zero(val_set: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Labels that lie about every class (a wrong val set): FP32 scores ~0, so a ~0 variant proves nothing."""
    needs("pycocotools")
    wrong = tmp_path / "wrong"
    shutil.copytree(val_set, wrong)
    yaml = wrong / "data.yaml"
    yaml.write_text(yaml.read_text().replace(str(val_set), str(wrong)))
    for label in (wrong / "labels" / "val").glob("*.txt"):
        lines = [ln.split() for ln in label.read_text().splitlines() if ln.strip()]
        label.write_text("".join(f"{(int(c) + 1) % 3} {' '.join(rest)}\n" for c, *rest in lines))
    out = tmp_path / "conveyor.onnx"
    assert export(["--onnx", str(FP32), "--out", str(out), "--fp16", "--val-data", str(wrong / "data.yaml"),
                   "--val-split", "val", "--runs", "3"]) == 4
    err = capsys.readouterr().err
    assert "the gate CANNOT judge" in err and "untrained" in err and "class names" in err and "--val-data" in err
    report = {r["name"]: r for r in json.loads((tmp_path / "conveyor.report.json").read_text())}
    assert report["fp32"]["map50"] < 0.01
    assert report["fp16"]["status"] == "unchecked" and not report["fp16"]["accepted"]
    assert (tmp_path / "conveyor.fp16.onnx").is_file()  # not known to be broken: not renamed
    md = (tmp_path / "conveyor.report.md").read_text()
    assert "| yes |" not in md and "**unchecked**" in md and "CANNOT judge" in md


def test_refusal_advice_fits_the_variant(tmp_path: Path) -> None:
    def advice(name: str) -> str:
        r = VariantReport(name, tmp_path / f"m.{name}.rejected.onnx", 1.0, 1.0, 1.0, map50=0.1, map50_drop=0.4)
        return refusal(r, 0.02).split("Do not deploy it: ")[1]

    dynamic = advice("int8-dynamic")
    assert "calibration images" not in dynamic and "--int8 (static QDQ" in dynamic and "--fp16" in dynamic
    assert "--calibration images" in advice("int8-qdq") and "--keep-float" in advice("int8-qdq")
