"""tools.train and tools.export run offline end to end on a tiny dataset (one epoch), and the daemon
configures itself from the exported file. Needs ultralytics: the interpreter in STREAMD_TRAIN_PYTHON
(CI installs the `train` extra in its own venv) or this one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamd.infer.model import load_model
from streamd.synth import CLASSES
from tests.conftest import REPO, require

pytestmark = pytest.mark.integration


def train_python() -> str:
    python = os.environ.get("STREAMD_TRAIN_PYTHON", sys.executable)
    ok = subprocess.run([python, "-c", "import ultralytics, onnx"], capture_output=True).returncode == 0
    require(ok, f"{python} cannot import ultralytics (install the train extra; set STREAMD_TRAIN_PYTHON)")
    return python


def test_train_and_export_offline(tmp_path: Path) -> None:
    python = train_python()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}

    def run(*args: str, ok: tuple[int, ...] = (0,)) -> int:
        proc = subprocess.run([python, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode in ok, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.returncode

    data = tmp_path / "data"
    run("tools.synth", "dataset", "--out", str(data), "--train", "100-101", "--val", "102", "--test", "103",
        "--every", "40")
    run("tools.train", "--data", str(data / "data.yaml"), "--epochs", "1", "--imgsz", "96", "--batch", "8",
        "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "smoke")
    best = tmp_path / "runs" / "smoke" / "weights" / "best.pt"
    assert best.is_file()
    out = tmp_path / "model.onnx"
    # One epoch at 96 px may score ~0 mAP: the gate then marks the variants unchecked and exits 4 (not 3).
    code = run("tools.export", "--weights", str(best), "--imgsz", "96", "--out", str(out), "--int8",
               "--calibration", str(data / "images" / "val"), "--calibration-count", "8", "--prune", "0.3",
               "--val-data", str(data / "data.yaml"), "--val-split", "val", "--max-map50-drop", "1", "--runs", "3",
               ok=(0, 4))
    from tools.export.prune import onnx_sparsity

    pruned = out.with_name("model.pruned.onnx")
    assert onnx_sparsity(str(pruned)) >= 0.25 > onnx_sparsity(str(out))
    report = (tmp_path / "model.report.md").read_text()
    assert "| fp32-pruned |" in report and "| int8-qdq |" in report
    assert ("unchecked" in report) == (code == 4), report
    for path in (out, out.with_name("model.int8.onnx"), pruned):
        model = load_model(str(path))  # no adapter, labels or input size given: all read from the file
        assert model.adapter.name == "ultralytics"
        assert model.names == list(CLASSES)
        assert model.input_hw == (96, 96)
        assert model.info.metadata.get("streamd_precision") in ("fp32", "int8-qdq", "fp32-pruned")
