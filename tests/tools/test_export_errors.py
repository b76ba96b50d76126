"""tools.export on bad input: one line naming the option and what to do, exit status 2, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tools.export.__main__ import main as export
from tools.synth.dataset import write_dataset

FP32 = REPO / "streamd" / "models" / "conveyor.onnx"


@pytest.fixture(scope="module")
def val_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, {"val": [140]}, every=40)
    return out


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("content", [FP32.read_bytes()[:20000], b"not a model\n", b""],
                         ids=["truncated", "text", "empty"])
def test_a_file_that_is_not_onnx(content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    assert export(["--onnx", str(bad), "--out", str(tmp_path / "x.onnx"), "--fp16"]) == 2
    assert f"--onnx {bad} is truncated or not an ONNX file" in one_error(capsys)
    assert not (tmp_path / "x.onnx").exists()


def test_an_unknown_val_split(val_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export(["--onnx", str(FP32), "--out", str(tmp_path / "x.onnx"), "--fp16",
                   "--val-data", str(val_set / "data.yaml"), "--val-split", "bogus"]) == 2
    line = one_error(capsys)
    assert "--val-split bogus" in line and "bogus" in line.split(":", 2)[-1]
    assert not (tmp_path / "x.fp16.onnx").exists()  # checked before any work


def test_weights_without_the_train_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """As in the daemon's .venv: the training loaders cannot import torch."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ModuleNotFoundError(name="torch")
    monkeypatch.delitem(sys.modules, "tools.train.ultralytics_runner", raising=False)
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"\0")
    assert export(["--weights", str(weights), "--out", str(tmp_path / "x.onnx")]) == 2
    line = one_error(capsys)
    assert "torch is not installed" in line and ".venv-train/bin/python" in line and "pip install -e '.[train]'" in line


def test_an_onnx_file_given_as_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export(["--weights", str(FP32), "--out", str(tmp_path / "x.onnx")]) == 2
    assert f"give it as --onnx {FP32}" in one_error(capsys)


@pytest.mark.parametrize("case", ["missing", "file", "no-images", "omitted"])
def test_calibration_folder(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "cal"
    if case == "file":
        folder.write_text("x")
    elif case == "no-images":
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "a.jpg").write_bytes(b"")
        (folder / "notes.txt").write_text("x")
    args = ["--onnx", str(FP32), "--out", str(tmp_path / "x.onnx"), "--int8"]
    if case != "omitted":
        args += ["--calibration", str(folder)]
    assert export(args) == 2
    expected = {"missing": f"--calibration {folder} does not exist",
                "file": f"--calibration {folder} is not a folder",
                "no-images": f"--calibration {folder} has no .jpg/.png images",
                "omitted": "--int8 needs --calibration FOLDER"}[case]
    assert expected in one_error(capsys)
