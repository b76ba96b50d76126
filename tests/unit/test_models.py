"""streamd.config.models: pure pydantic validation (no files)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streamd.config.models import DaemonConfig, LineConfig, PipelineConfig, StreamConfig, ZmqSinkConfig, source_kind


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("rtsp://h/x", "rtsp"),
        ("RTSPS://h/x", "rtsp"),
        ("/dev/video0", "v4l2"),
        ("v4l2:///dev/video2", "v4l2"),
        ("clip.mp4", "file"),
        ("/srv/a.mkv", "file"),
        ("http://h/x.mp4", "file"),
    ],
)
def test_source_kind(url: str, kind: str) -> None:
    assert source_kind(url) == kind


@pytest.mark.parametrize(
    ("url", "realtime", "loop", "is_realtime", "is_finite"),
    [
        ("a.mp4", None, False, False, True),
        ("a.mp4", True, False, True, True),
        ("a.mp4", None, True, False, False),
        ("rtsp://h/x", None, False, True, False),
        ("/dev/video0", True, False, True, False),
    ],
)
def test_stream_policy_properties(url: str, realtime: bool | None, loop: bool, is_realtime: bool,
                                  is_finite: bool) -> None:
    s = StreamConfig(name="s", url=url, pipeline="p", realtime=realtime, loop=loop)
    assert s.is_realtime is is_realtime
    assert s.is_finite is is_finite


@pytest.mark.parametrize("name", ["", "-lead", "has space", "x" * 49, "ünï"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError):
        StreamConfig(name=name, url="a.mp4", pipeline="p")


@pytest.mark.parametrize("extra", [{"loop": True}, {"realtime": False}])
def test_loop_and_non_realtime_apply_to_files_only(extra: dict) -> None:
    with pytest.raises(ValidationError, match="apply to files only"):
        DaemonConfig(streams=[{"name": "c", "url": "rtsp://h/x", "pipeline": "p", **extra}],
                     pipelines={"p": {"model": "m.onnx"}})


def test_line_points_must_differ_and_names_be_unique() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        LineConfig(name="l", points=((1, 2), (1, 2)))
    with pytest.raises(ValidationError, match="repeated: a"):
        PipelineConfig(model="m.onnx", lines=[{"name": "a", "points": [[0, 0], [1, 0]]},
                                               {"name": "a", "points": [[0, 1], [1, 1]]}])


@pytest.mark.parametrize(("endpoint", "ok"), [("tcp://*:5560", True), ("ipc:///tmp/x", True), ("udp://h:1", False)])
def test_zmq_endpoint(endpoint: str, ok: bool) -> None:
    if ok:
        assert ZmqSinkConfig(type="zmq", endpoint=endpoint).endpoint == endpoint
    else:
        with pytest.raises(ValidationError, match="tcp:// or ipc://"):
            ZmqSinkConfig(type="zmq", endpoint=endpoint)


def test_configs_are_frozen() -> None:
    s = StreamConfig(name="s", url="a.mp4", pipeline="p")
    with pytest.raises(ValidationError):
        s.ring_slots = 4  # type: ignore[misc]


def test_active_streams_skip_disabled() -> None:
    cfg = DaemonConfig(streams=[{"name": "a", "url": "a.mp4", "pipeline": "p"},
                                {"name": "b", "url": "b.mp4", "pipeline": "p", "enabled": False}],
                       pipelines={"p": {"model": "m.onnx"}})
    assert [s.name for s in cfg.active_streams] == ["a"]
