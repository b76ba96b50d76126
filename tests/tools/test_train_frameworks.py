"""tools.train trains one epoch offline with every framework on a tiny synthetic dataset, writes the same
run folder (metrics.json, results.csv, weights/best.*) whose best weights load back with the class
names, resumes, and refuses bad input by naming it. Runs in the train interpreter (STREAMD_TRAIN_PYTHON)
with the network blocked by a dead proxy."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamd.synth import CLASSES
from tests.conftest import REPO, require
from tests.integration.test_tools_train import train_python

pytestmark = pytest.mark.integration

OFFLINE = {"PYTHONPATH": str(REPO), "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
IMGSZ = 96  # small for speed; a multiple of 32, as RF-DETR needs
MAP50_95 = "metrics/mAP50-95(B)"
BEST = {"yolo": "best.pt", "rtdetr": "best.pt", "rfdetr": "best.pth", "torchvision": "best.pt"}


def run(python: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", *args], cwd=REPO, env={**os.environ, **OFFLINE}, capture_output=True,
                          text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def can_import(python: str, modules: str) -> bool:
    return subprocess.run([python, "-c", f"import {modules}"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def python() -> str:
    return train_python()


@pytest.fixture(scope="module")
def data(python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train-data") / "data"
    ok(run(python, "tools.synth", "dataset", "--out", str(out), "--train", "100-101", "--val", "102",
           "--test", "103", "--every", "40"))
    return out / "data.yaml"


@pytest.fixture(scope="module")
def runs(python: str, data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """train(framework) -> run folder, one 1-epoch run per framework shared by the tests below."""
    root = tmp_path_factory.mktemp("train-runs")
    done: dict[str, Path] = {}

    def train(framework: str) -> Path:
        if framework == "rfdetr":
            require(can_import(python, "rfdetr, pytorch_lightning"),
                    f"{python} cannot import rfdetr's trainer (pip install 'rfdetr[train]')")
        if framework not in done:
            ok(run(python, "tools.train", "--framework", framework, "--data", str(data), "--epochs", "1",
                   "--imgsz", str(IMGSZ), "--batch", "4", "--workers", "0", "--project", str(root),
                   "--name", framework))
            done[framework] = root / framework
        return done[framework]

    return train


def rows(results_csv: Path) -> list[dict[str, str]]:
    with results_csv.open(newline="") as f:
        return [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]


@pytest.mark.parametrize("framework", ["yolo", "rtdetr", "rfdetr", "torchvision"])
def test_one_epoch_offline_writes_the_common_run_folder(framework: str, runs, python: str) -> None:  # type: ignore[no-untyped-def]
    run_dir = runs(framework)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["framework"] == framework
    assert summary["epochs_done"] == 1 and summary["best_epoch"] == 1
    assert 0.0 <= summary["mAP50_95"] <= summary["mAP50"] <= 1.0
    assert summary["names"] == list(CLASSES)
    best = run_dir / summary["best_weights"]
    assert best == run_dir / "weights" / BEST[framework] and best.is_file()
    table = rows(run_dir / "results.csv")
    assert [r["epoch"] for r in table] == ["1"] and table[0][MAP50_95] != ""
    saved = json.loads((run_dir / "streamd_train.json").read_text())
    assert saved["framework"] == framework and saved["epochs"] == 1 and saved["imgsz"] == IMGSZ
    # the best weights rebuild into a model that knows the classes (what tools.export starts from)
    names = {"yolo": "list(m.names.values())", "rtdetr": "list(m.names.values())", "rfdetr": "m.class_names",
             "torchvision": "m.names"}[framework]
    code = (f"from pathlib import Path; from tools.train.load import load_trained; "  # framework read from the run
            f"m = load_trained(None, Path({str(best)!r})); print('NAMES', {names})")
    proc = subprocess.run([python, "-c", code], cwd=REPO, env={**os.environ, **OFFLINE}, capture_output=True,
                          text=True, timeout=300)
    assert f"NAMES {list(CLASSES)}" in proc.stdout, proc.stderr[-3000:]


def test_torchvision_resume_continues_from_the_checkpoint(runs, python: str) -> None:  # type: ignore[no-untyped-def]
    run_dir = runs("torchvision")
    first = rows(run_dir / "results.csv")[0]
    # the run finished its epochs: resuming without more epochs is refused, naming the way on
    refused = run(python, "tools.train", "--resume", str(run_dir))
    assert refused.returncode == 1 and "give --epochs N with N > 1" in refused.stderr
    ok(run(python, "tools.train", "--resume", str(run_dir / "weights" / "last.pt"), "--epochs", "2"))
    table = rows(run_dir / "results.csv")
    assert [r["epoch"] for r in table] == ["1", "2"]
    assert table[0] == first  # epoch 1 was not trained again
    assert float(table[1]["train/loss"]) < float(first["train/loss"])  # trained on from epoch 1's weights
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["epochs_done"] == 2
    code = f"import torch; c = torch.load({str(run_dir / 'weights' / 'last.pt')!r}, weights_only=False); " \
           "print('EPOCH', c['epoch'], len(c['optimizer']['state']) > 0)"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    assert "EPOCH 2 True" in proc.stdout, proc.stderr[-2000:]


def test_rfdetr_resume_continues_from_last_ckpt(runs, python: str) -> None:  # type: ignore[no-untyped-def]
    run_dir = runs("rfdetr")
    assert (run_dir / "last.ckpt").is_file()
    assert not list(run_dir.glob("checkpoint_*.ckpt"))  # no 480 MB archive per run
    assert (run_dir / "dataset" / "valid" / "_annotations.coco.json").is_file()  # converted by tools.dataset
    ok(run(python, "tools.train", "--resume", str(run_dir), "--epochs", "2"))
    assert [r["epoch"] for r in rows(run_dir / "results.csv")] == ["1", "2"]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_done"] == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "{tmp}/missing/data.yaml"], "--data {tmp}/missing/data.yaml does not exist"),
    (["--framework", "mmdet", "--data", "{data}"], "invalid choice: 'mmdet'"),
    (["--framework", "rfdetr", "--data", "{data}", "--imgsz", "100"], "use 96 or 128"),
    (["--framework", "torchvision", "--data", "{data}", "--model", "resnet9"], "choose one of fasterrcnn_"),
    (["--data", "{data}", "--weights", "{tmp}/none.pt"], "--weights {tmp}/none.pt does not exist"),
    (["--resume", "{tmp}/no-run"], "--resume {tmp}/no-run does not exist"),
])
def test_bad_input_is_refused_by_name(args: list[str], message: str, python: str, data: Path,
                                      tmp_path: Path) -> None:
    fill = {"tmp": str(tmp_path), "data": str(data)}
    proc = run(python, "tools.train", *(a.format(**fill) for a in args), "--project", str(tmp_path))
    assert proc.returncode != 0
    assert message.format(**fill) in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few synthetic images per split, written in-process (no train interpreter needed)."""
    from tools.synth.dataset import write_dataset

    out = tmp_path_factory.mktemp("weights-data") / "data"
    write_dataset(out, {"train": [100], "val": [102]}, every=120)
    return out / "data.yaml"


@pytest.mark.parametrize(("framework", "name", "content", "message"), [
    ("yolo", "text.onnx", b"hello", "--framework yolo starts from .pt files, not .onnx (an .onnx is an export"),
    ("rtdetr", "best.pth", b"PK\x03\x04", "--framework rtdetr starts from .pt files, not .pth"),
    ("torchvision", "model.onnx", b"hello", "--framework torchvision starts from .pt or .pth files, not .onnx"),
    ("rfdetr", "weights", b"PK\x03\x04", "--framework rfdetr starts from .pth or .pt files, not a file without"),
    ("yolo", "notes.pt", b"just text", "is not a PyTorch checkpoint"),
    ("yolo", "missing.pt", None, "missing.pt does not exist"),
    ("torchvision", "run", "folder", "is a folder; give the weights file itself"),
])
def test_unusable_weights_are_refused_before_any_framework_code(
        framework: str, name: str, content: bytes | str | None, message: str, small_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """In the daemon's interpreter, which has no torch: an import of framework code would fail differently."""
    from tools.train.__main__ import main

    weights = tmp_path / name
    if content == "folder":
        weights.mkdir()
    elif isinstance(content, bytes):
        weights.write_bytes(content)
    assert main(["--framework", framework, "--data", str(small_data), "--weights", str(weights),
                 "--project", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --weights {weights}") and message in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_rfdetr_missing_is_named_with_the_install_command(data: Path, tmp_path: Path) -> None:
    """The daemon's own interpreter has no rfdetr: the error says which package and how to install it."""
    require(not can_import(sys.executable, "rfdetr, pytorch_lightning"), f"{sys.executable} has rfdetr installed")
    proc = run(sys.executable, "tools.train", "--framework", "rfdetr", "--data", str(data), "--project", str(tmp_path))
    assert proc.returncode == 1
    assert "pip install 'rfdetr[train]" in proc.stderr and "Traceback" not in proc.stderr


ADAPTER = {"yolo": "ultralytics", "rtdetr": "rtdetr", "rfdetr": "rfdetr", "torchvision": "torchvision"}


@pytest.mark.parametrize("framework", ["yolo", "rtdetr", "rfdetr", "torchvision"])
def test_trained_weights_export_to_a_model_the_daemon_configures_itself_from(
        framework: str, runs, python: str, data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import cv2

    from streamd.infer.model import load_model
    from streamd.infer.postprocess import PostprocessParams
    from tools.evaluate.runner import Detector

    best = runs(framework) / "weights" / BEST[framework]
    out = tmp_path / f"{framework}.onnx"
    prune = ["--prune", "0.3"] if framework == "torchvision" else []  # pruning works on any torch detector
    ok(run(python, "tools.export", "--weights", str(best), "--imgsz", str(IMGSZ), "--out", str(out), *prune))
    model = load_model(str(out))  # adapter, input size and names all from the file's metadata
    assert model.adapter.name == ADAPTER[framework] and model.input_hw == (IMGSZ, IMGSZ)
    offset = 1 if framework == "torchvision" else 0  # torchvision's label 0 is the background
    assert model.names[offset : offset + len(CLASSES)] == list(CLASSES)
    image = cv2.imread(str(next((data.parent / "images" / "val").glob("*"))))
    (found,) = Detector(model, PostprocessParams(confidence=0.0, iou=0.7, max_detections=50)).detect([image])
    h, w = image.shape[:2]  # one epoch finds little, but whatever it finds is mapped into the source frame
    assert len(found.confidence) <= 50
    assert ((found.xyxy >= 0) & (found.xyxy <= [w, h, w, h])).all()
    if prune:
        from tools.export.prune import onnx_sparsity

        pruned = out.with_name(f"{framework}.pruned.onnx")
        assert onnx_sparsity(str(pruned)) >= 0.25 > onnx_sparsity(str(out))
        assert load_model(str(pruned)).info.metadata["streamd_precision"] == "fp32-pruned"
