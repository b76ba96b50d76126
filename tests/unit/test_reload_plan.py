"""The reload plan tells a stream handed to another fleet node apart from one the operator removed: only the
first keeps its stored tracker state (its new owner continues from it)."""

from __future__ import annotations

from pathlib import Path

from streamd.config import load_config
from streamd.control.fleet import owned_view
from streamd.control.reload import prepare
from tests.conftest import write_config
from tests.unit.test_model import KNOWN, ULTRA_META, constant_model


def fleet_config(tmp: Path, streams: list[str]) -> Path:
    model = constant_model(tmp / "tiny.onnx", KNOWN, metadata=ULTRA_META)
    return write_config(tmp / "streamd.yaml", {
        "streams": [{"name": s, "url": str(tmp / f"{s}.mp4"), "pipeline": "p"} for s in streams],
        "pipelines": {"p": {"model": str(model)}},
        "counts": {"path": str(tmp / "counts.db"), "url": "postgresql://streamd@127.0.0.1/streamd"},
        "fleet": {"enabled": True, "node_id": "node-1"},
    })


def test_a_stream_whose_lease_moved_is_handed_over_and_one_removed_from_the_file_is_not(tmp_path: Path) -> None:
    path = fleet_config(tmp_path, ["a", "b", "c"])
    held = {"a": 1, "b": 1, "c": 1}
    running = owned_view(load_config(path).config, held)
    plan = prepare(path, running, usable={"p"}, streams_running=set(held), streams_finished=set(),
                   owned={"a": 1, "c": 1}, running_owned=held)
    assert plan.stop == ["b"] and plan.handed_over == ("b",)

    fleet_config(tmp_path, ["a", "b"])  # the operator deletes c; b stays here
    plan = prepare(path, running, usable={"p"}, streams_running=set(held), streams_finished=set(),
                   owned={"a": 1, "b": 1}, running_owned=held)
    assert plan.stop == ["c"] and plan.handed_over == ()


def test_outside_a_fleet_nothing_is_handed_over(tmp_path: Path) -> None:
    path = fleet_config(tmp_path, ["a", "b"])
    running = load_config(path).config
    fleet_config(tmp_path, ["a"])
    plan = prepare(path, running, usable={"p"}, streams_running={"a", "b"}, streams_finished=set())
    assert plan.stop == ["b"] and plan.handed_over == ()
