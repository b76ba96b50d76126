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


# --- issue 19: sinks that would collide, values that cannot work --------------------------------------------


def daemon(sinks: list[dict], **extra: object) -> DaemonConfig:
    return DaemonConfig(streams=[{"name": "a", "url": "a.mp4", "pipeline": "p"}], pipelines={"p": {"model": "m.onnx"}},
                        sinks=sinks, **extra)


@pytest.mark.parametrize(
    ("sinks", "match"),
    [
        ([{"type": "mqtt"}, {"type": "mqtt", "host": "other"}], r"sinks\[1\]: sink name 'mqtt' is already used by sinks\[0\]"),
        ([{"type": "mqtt", "name": "x"}, {"type": "webhook", "name": "x", "url": "https://h/x"}],
         r"sinks\[1\]: sink name 'x' is already used"),  # one outbox-x.db for both
        ([{"type": "jsonl", "path": "/o/e.jsonl"}, {"type": "zmq"}, {"type": "jsonl", "path": "/o/./e.jsonl"}],
         r"sinks\[2\]\.path: /o/e.jsonl is already used by sinks\[0\]\.path"),
        ([{"type": "mqtt", "outbox": {"path": "/o/q.db"}}, {"type": "webhook", "url": "https://h/", "outbox": {"path": "/o/q.db"}}],
         r"sinks\[1\]\.outbox\.path: /o/q.db is already used by sinks\[0\]\.outbox\.path"),
        ([{"type": "zmq"}, {"type": "zmq"}], r"sinks\[1\]\.endpoint: tcp://127.0.0.1:5560 is already bound by sinks\[0\]"),
        ([{"type": "zmq", "endpoint": "tcp://*:6000"}, {"type": "zmq", "endpoint": "tcp://127.0.0.1:6000"}],
         r"sinks\[1\]\.endpoint: .* already bound by sinks\[0\]"),
        ([{"type": "zmq", "endpoint": "tcp://10.0.0.1:6000"}, {"type": "zmq", "endpoint": "tcp://0.0.0.0:6000"}],
         r"sinks\[1\]\.endpoint: .* already bound by sinks\[0\]"),
        ([{"type": "zmq", "endpoint": "ipc:///tmp/s"}, {"type": "zmq", "endpoint": "ipc:///tmp/s"}], "already bound"),
    ],
)
def test_sinks_that_would_collide_are_rejected(sinks: list[dict], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        daemon(sinks)


def test_distinct_sinks_pass() -> None:
    cfg = daemon([{"type": "mqtt"}, {"type": "mqtt", "name": "backup"}, {"type": "webhook", "url": "https://h/"},
                  {"type": "jsonl", "path": "/o/a.jsonl"}, {"type": "jsonl", "path": "/o/b.jsonl"},
                  {"type": "zmq", "endpoint": "tcp://127.0.0.1:5560"}, {"type": "zmq", "endpoint": "tcp://127.0.0.2:5560"},
                  {"type": "zmq", "endpoint": "tcp://*:5561"}])
    assert len(cfg.sinks) == 8


@pytest.mark.parametrize(("zone", "ok"), [("UTC", True), ("Europe/Berlin", True), ("America/Argentina/Salta", True),
                                          ("Mars/Olympus", False), ("", False), ("/etc/localtime", False),
                                          ("../../etc/passwd", False), ("Europe/Berlin\0", False)])
def test_counts_timezone_must_be_an_iana_zone(zone: str, ok: bool) -> None:
    if ok:
        assert daemon([], counts={"timezone": zone}).counts.timezone == zone
    else:
        with pytest.raises(ValidationError, match="is not an IANA time zone"):
            daemon([], counts={"timezone": zone})


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), 1e7])
def test_coordinates_must_be_finite_and_bounded(bad: float) -> None:
    with pytest.raises(ValidationError, match=r"points\.0\.1|finite|less than or equal|greater than or equal"):
        LineConfig(name="l", points=((0, bad), (10, 10)))
    with pytest.raises(ValidationError):
        PipelineConfig(model="m.onnx", zones=[{"name": "z", "polygon": [[0, 0], [bad, 0], [10, 10]]}])
    if bad != 1e7:
        with pytest.raises(ValidationError, match="finite"):
            PipelineConfig(model="m.onnx", preprocess={"scale": bad})


def test_every_secret_field_is_listed() -> None:
    # the loader hides the value of these names in its errors: a new SecretStr field must join the list
    from pydantic import BaseModel

    from streamd.config import models

    found = set()
    for obj in vars(models).values():
        if isinstance(obj, type) and issubclass(obj, BaseModel):
            for name, field in obj.model_fields.items():
                # repr=False URL fields carry their password inside the URL, which redact() hides in errors
                if "SecretStr" in str(field.annotation) or (field.repr is False and not name.endswith("url")):
                    found.add(name)
    assert found and found <= models.SECRET_FIELDS, found - models.SECRET_FIELDS


def test_hundred_thousand_streams_validate_with_duplicates_found() -> None:
    streams = [{"name": f"c{i}", "url": f"rtsp://h/{i}", "pipeline": "p"} for i in range(100_000)]
    streams.append({"name": "c99", "url": "x.mp4", "pipeline": "p"})
    with pytest.raises(ValidationError, match=r"repeated: c99 \["):
        DaemonConfig(streams=streams, pipelines={"p": {"model": "m.onnx"}})
