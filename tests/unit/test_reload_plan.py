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


def test_a_stream_held_again_after_another_node_held_it_is_stopped_then_taken_over_anew(tmp_path: Path) -> None:
    """Epoch 1 here, 2 on another node (this one was cut off), 3 here again: what runs here is behind the
    fleet. One reload stops it (its state kept for the import); the next starts it from the fleet's checkpoint."""
    path = fleet_config(tmp_path, ["a", "b"])
    held = {"a": 1, "b": 1}
    running = owned_view(load_config(path).config, held)
    imported: list[str] = []
    plan = prepare(path, running, usable={"p"}, streams_running=set(held), streams_finished=set(),
                   owned={"a": 1, "b": 3}, import_stream=imported.append, running_owned=held)
    assert plan.regained == ("b",) and plan.stop == ["b"] and plan.start == [] and plan.handed_over == ("b",)
    assert plan.owned == {"a": 1} and imported == []
    after = plan.config
    again = prepare(path, after, usable={"p"}, streams_running={"a"}, streams_finished=set(),
                    owned={"a": 1, "b": 3}, import_stream=imported.append, running_owned=plan.owned)
    assert again.start == ["b"] and imported == ["b"] and again.regained == ()


def test_a_lease_renewed_with_the_next_epoch_keeps_the_stream_running(tmp_path: Path) -> None:
    """Epoch 1, then 2, both here (the lease expired in an outage and nobody else took it): nothing restarts."""
    path = fleet_config(tmp_path, ["a"])
    running = owned_view(load_config(path).config, {"a": 1})
    plan = prepare(path, running, usable={"p"}, streams_running={"a"}, streams_finished=set(),
                   owned={"a": 2}, import_stream=lambda s: None, running_owned={"a": 1})
    assert plan.regained == () and plan.stop == [] and plan.start == [] and plan.owned == {"a": 2}


def two_pipeline_config(tmp: Path, q_model: Path | None = None, standby: bool = True) -> Path:
    """Stream a on pipeline p, stream b on pipeline q (another model)."""
    p_model = constant_model(tmp / "p.onnx", KNOWN, metadata=ULTRA_META)
    if q_model is None:
        q_model = constant_model(tmp / "q.onnx", KNOWN, metadata=ULTRA_META)
    return write_config(tmp / "streamd.yaml", {
        "streams": [{"name": "a", "url": str(tmp / "a.mp4"), "pipeline": "p"},
                    {"name": "b", "url": str(tmp / "b.mp4"), "pipeline": "q"}],
        "pipelines": {"p": {"model": str(p_model)}, "q": {"model": str(q_model), "confidence": 0.4}},
        "counts": {"path": str(tmp / "counts.db"), "url": "postgresql://streamd@127.0.0.1/streamd"},
        "fleet": {"enabled": True, "node_id": "node-1", "standby_models": standby},
    })


def test_the_model_of_a_stream_another_node_runs_is_kept_loaded_here(tmp_path: Path) -> None:
    """fleet.standby_models: a stream moved here finds its inference stage warm. Loaded once, loaded again when
    its pipeline changes, and a standby model that does not load rejects nothing (no stream runs it here)."""
    path = two_pipeline_config(tmp_path)
    held = {"a": 1}
    running = owned_view(load_config(path).config, held)
    plan = prepare(path, running, usable={"p"}, streams_running={"a"}, streams_finished=set(), owned=held,
                   running_owned=held)
    assert plan.standby == ("q",) and set(plan.resolved) == {"q"} and plan.start == [] and not plan.empty

    plan = prepare(path, running, usable={"p", "q"}, streams_running={"a"}, streams_finished=set(), owned=held,
                   running_owned=held)
    assert plan.standby == ("q",) and plan.resolved == {} and plan.empty  # loaded already and unchanged

    edited = load_config(path).config
    write_config(path, {**_raw(path), "pipelines": {**_raw(path)["pipelines"],
                                                     "q": {**_raw(path)["pipelines"]["q"], "confidence": 0.6}}})
    plan = prepare(path, owned_view(edited, held), usable={"p", "q"}, streams_running={"a"},
                   streams_finished=set(), owned=held, running_owned=held)
    assert set(plan.resolved) == {"q"} and plan.resolved["q"].config.confidence == 0.6

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    path = two_pipeline_config(tmp_path, q_model=broken)
    plan = prepare(path, running, usable={"p"}, streams_running={"a"}, streams_finished=set(), owned=held,
                   running_owned=held)
    assert plan.standby == () and "q" not in plan.resolved and plan.still_failing == {}


def test_no_standby_models_when_switched_off_or_outside_a_fleet(tmp_path: Path) -> None:
    path = two_pipeline_config(tmp_path, standby=False)
    held = {"a": 1}
    running = owned_view(load_config(path).config, held)
    plan = prepare(path, running, usable={"p"}, streams_running={"a"}, streams_finished=set(), owned=held,
                   running_owned=held)
    assert plan.standby == () and plan.resolved == {}
    path = two_pipeline_config(tmp_path)
    plan = prepare(path, load_config(path).config, usable={"p", "q"}, streams_running={"a", "b"},
                   streams_finished=set())
    assert plan.standby == ()


def _raw(path: Path) -> dict:
    import yaml
    return yaml.safe_load(path.read_text())
