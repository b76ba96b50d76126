"""tools.bench_models on the bundled conveyor models (fp32 and int8), with tools.evaluate summaries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.tools import needs
from tools.bench_models.__main__ import main as bench
from tools.evaluate.__main__ import main as evaluate
from tools.synth.dataset import write_dataset

MODELS = REPO / "streamd" / "models"


def test_benchmark_table_and_speed_vs_accuracy_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needs("pycocotools")
    needs("matplotlib")
    write_dataset(tmp_path / "data", {"val": [140]}, every=60)
    fp32, int8 = MODELS / "conveyor.onnx", MODELS / "conveyor.int8.onnx"
    for model, name in ((fp32, "fp32"), (int8, "int8")):
        assert evaluate(["--model", str(model), "--data", str(tmp_path / "data" / "data.yaml"), "--split", "val",
                         "--out", str(tmp_path / name), "--no-plots", "--threads", "1"]) == 0
    out = tmp_path / "bench"
    assert bench(["--model", str(fp32), "--model", str(int8), "--batch", "1", "2", "--threads", "1", "--runs", "5",
                  "--warmup", "1", "--images", str(tmp_path / "data" / "images" / "val"),
                  "--provider", "CPUExecutionProvider", "NoSuchExecutionProvider",
                  "--eval", str(tmp_path / "fp32" / "summary.json"), "--eval", str(tmp_path / "int8" / "summary.json"),
                  "--out", str(out)]) == 0
    assert "NoSuchExecutionProvider is not available" in capsys.readouterr().err
    with (out / "bench.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(Path(r["model"]).name, r["precision"], r["batch"]) for r in rows] == [
        ("conveyor.onnx", "fp32", "1"), ("conveyor.onnx", "fp32", "2"),
        ("conveyor.int8.onnx", "int8-qdq", "1"), ("conveyor.int8.onnx", "int8-qdq", "2")]
    for r in rows:
        assert 0 < float(r["model_median_ms"]) <= float(r["median_ms"]) <= float(r["p90_ms"]) <= float(r["p99_ms"])
        assert float(r["images_per_s"]) > 0 and r["provider"] == "CPUExecutionProvider"
    assert (out / "bench.md").read_text().count("| CPUExecutionProvider | 1 |") == 4
    assert (out / "speed_vs_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_model_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench(["--model", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "o")]) == 2
    assert "--model " + str(tmp_path / "nope.onnx") + " does not exist" in capsys.readouterr().err


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The run's stderr holds exactly one line and it starts with `error:` (no traceback, no progress bar)."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_options_fail_before_any_model_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(MODELS / "conveyor.onnx"), "--out", str(tmp_path / "o"), "--threads", "1"]
    assert bench([*model, "--images", str(tmp_path / "nope")]) == 2
    assert "--images " + str(tmp_path / "nope") + " is not a folder" in one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert bench([*model, "--images", str(tmp_path / "empty")]) == 2
    assert "has no images" in one_error_line(capsys)
    (tmp_path / "c40.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert bench([*model, "--eval", str(tmp_path / "c40.json")]) == 2
    line = one_error_line(capsys)
    assert "--eval " + str(tmp_path / "c40.json") + " is not a tools.evaluate summary" in line
    assert "python -m tools.evaluate" in line
    (tmp_path / "broken.json").write_text('{"model": ')
    assert bench([*model, "--eval", str(tmp_path / "broken.json")]) == 2
    assert "broken.json:1 is not JSON" in one_error_line(capsys)
    with pytest.raises(SystemExit) as exited:
        bench([*model, "--batch", "0"])
    assert exited.value.code == 2
    assert "argument --batch: must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_model_error_starts_its_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The error is printed after the progress bar ends, not appended to the bar's line (off a terminal there is
    no bar: the error is the only line)."""
    (tmp_path / "text.onnx").write_text("not a model")
    assert bench(["--model", str(tmp_path / "text.onnx"), "--out", str(tmp_path / "o"), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and (err.startswith("error: ") or "\nerror: " in err), err
    assert err.count(str(tmp_path / "text.onnx")) == 1  # named once, not "text.onnx: model text.onnx ..."
