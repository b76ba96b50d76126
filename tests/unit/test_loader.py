"""streamd.config.loader: YAML -> DaemonConfig with ${ENV}, pipeline files, paths and file:line errors."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from streamd.config.loader import load_config
from streamd.errors import ConfigError

VALID = """\
# Like streamd/data/default.yaml, but every path is relative to this file.
streams:
  - name: highway
    url: videos/Traffic.mp4
    pipeline: traffic
    realtime: true
  - name: gate
    url: rtsp://cam.local/live
    pipeline: traffic
pipelines:
  traffic:
    model: models/yolox_nano.onnx
    labels: models/coco.names
    classes: [car, truck, bus, motorcycle]
    lines:
      - name: south
        points: [[0, 380], [960, 380]]
sinks:
  - type: jsonl
    path: out/events.jsonl
  - type: zmq
    endpoint: tcp://127.0.0.1:5599
supervisor:
  stats_interval_s: 2
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    assert str(info.value).startswith("invalid configuration:")
    return info.value.problems


def only_problem(path: Path, env: dict[str, str] | None = None) -> str:
    problems = problems_of(path, env)
    assert len(problems) == 1, problems
    return problems[0]


# --- the valid example ---------------------------------------------------------------------------


def test_valid_example_loads_with_paths_resolved_against_the_config_dir(tmp_path: Path) -> None:
    cfg_path = write(tmp_path / "conf" / "streamd.yaml", VALID)
    loaded = load_config(cfg_path, env={})
    cfg = loaded.config
    base = tmp_path / "conf"
    assert loaded.path == cfg_path
    assert [s.name for s in cfg.streams] == ["highway", "gate"]
    assert cfg.streams[0].url == str(base / "videos" / "Traffic.mp4")
    assert cfg.streams[0].kind == "file" and cfg.streams[0].is_realtime and cfg.streams[0].is_finite
    assert cfg.streams[1].url == "rtsp://cam.local/live"  # URLs are never treated as paths
    assert cfg.streams[1].kind == "rtsp" and cfg.streams[1].is_live and cfg.streams[1].is_realtime
    pipe = cfg.pipelines["traffic"]
    assert pipe.model == str(base / "models" / "yolox_nano.onnx")
    assert pipe.labels == str(base / "models" / "coco.names")
    assert pipe.classes == ["car", "truck", "bus", "motorcycle"]
    assert pipe.lines[0].name == "south" and pipe.lines[0].points == ((0.0, 380.0), (960.0, 380.0))
    assert pipe.lines[0].anchor == "bottom_center"
    assert cfg.sinks[0].type == "jsonl" and cfg.sinks[0].path == str(base / "out" / "events.jsonl")
    assert cfg.sinks[1].type == "zmq" and cfg.sinks[1].endpoint == "tcp://127.0.0.1:5599"
    assert cfg.supervisor.stats_interval_s == 2
    # defaults
    assert cfg.streams[0].ring_slots == 8 and cfg.inference.max_batch == 4 and cfg.log_level == "info"
    assert [s.name for s in cfg.active_streams] == ["highway", "gate"]


def test_relative_paths_do_not_depend_on_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    cfg_path = write(tmp_path / "a" / "b" / "streamd.yaml", VALID)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("a/b/streamd.yaml"), env={}).config
    assert cfg.streams[0].url == str(tmp_path / "a" / "b" / "videos" / "Traffic.mp4")
    assert cfg.pipelines["traffic"].model == str(cfg_path.parent / "models" / "yolox_nano.onnx")


def test_absolute_and_home_paths_are_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg_path = write(tmp_path / "streamd.yaml", """\
        streams:
          - name: a
            url: /srv/video/a.mp4
            pipeline: p
          - name: b
            url: ~/b.mp4
            pipeline: p
        pipelines:
          p:
            model: /opt/models/m.onnx
        """)
    cfg = load_config(cfg_path, env={}).config
    assert cfg.streams[0].url == "/srv/video/a.mp4"
    assert cfg.streams[1].url == str(tmp_path / "home" / "b.mp4")
    assert cfg.pipelines["p"].model == "/opt/models/m.onnx"


# --- errors carry file:line and the dotted field --------------------------------------------------

BASE_STREAM = """\
streams:
  - name: cam
    url: clip.mp4
    pipeline: p
{extra}pipelines:
  p:
    model: m.onnx
"""


@pytest.mark.parametrize(
    ("extra", "line", "field", "needle"),
    [
        ("    colour: red\n", 5, "streams[0].colour", "unknown key; remove it or check its spelling"),
        ("    ring_slots: many\n", 5, "streams[0].ring_slots", "valid integer"),
        ("    ring_slots: 2\n", 5, "streams[0].ring_slots", "greater than or equal to 3 (got 2)"),
        ("    ring_slots: 257\n", 5, "streams[0].ring_slots", "less than or equal to 256 (got 257)"),
        ("    realtime: sometimes\n", 5, "streams[0].realtime", "valid boolean"),
        ("    retry:\n      jitter: 2\n", 6, "streams[0].retry.jitter", "less than or equal to 1"),
        ("    options: [a, b]\n", 5, "streams[0].options", "valid dictionary"),
    ],
)
def test_stream_field_errors_name_file_line_and_field(tmp_path: Path, extra: str, line: int, field: str,
                                                      needle: str) -> None:
    cfg = write(tmp_path / "streamd.yaml", BASE_STREAM.format(extra=extra))
    problem = only_problem(cfg)
    assert problem.startswith(f"{cfg}:{line}: {field}: "), problem
    assert needle in problem


@pytest.mark.parametrize("slots", [3, 8, 256])
def test_ring_slots_bounds_accept_the_limits(tmp_path: Path, slots: int) -> None:
    cfg = write(tmp_path / "streamd.yaml", BASE_STREAM.format(extra=f"    ring_slots: {slots}\n"))
    assert load_config(cfg, env={}).config.streams[0].ring_slots == slots


def test_missing_key_points_at_its_block(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", """\
        streams:
          - name: ok
            url: a.mp4
            pipeline: p
          - name: nourl
            pipeline: p
        pipelines:
          p:
            model: m.onnx
        """)
    assert only_problem(cfg) == f"{cfg}:5: streams[1].url: required key is missing"


def test_missing_pipeline_model_and_wrong_top_level_type(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", """\
        streams:
          - name: cam
            url: a.mp4
            pipeline: p
        pipelines:
          p:
            confidence: 0.5
        log_level: loud
        """)
    problems = problems_of(cfg)
    # a missing key points at the first line of the block that lacks it
    assert f"{cfg}:7: pipelines.p.model: required key is missing" in problems
    assert any(p.startswith(f"{cfg}:8: log_level: ") and "'loud'" in p for p in problems), problems


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", """\
        streams:
          - name: cam
            url: a.mp4
            pipeline: p
            ring_slots: 1
            max_width: 8
        pipelines:
          p:
            model: m.onnx
            iou: 0
        """)
    problems = problems_of(cfg)
    assert [p.split(": ")[0:2] for p in problems] == [
        [f"{cfg}:5", "streams[0].ring_slots"],
        [f"{cfg}:6", "streams[0].max_width"],
        [f"{cfg}:10", "pipelines.p.iou"],
    ]


def test_unknown_pipeline_key_lists_the_allowed_keys(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", """\
        streams:
          - name: cam
            url: a.mp4
            pipeline: p
        pipelines:
          p:
            model: m.onnx
            treshold: 0.3
        """)
    problem = only_problem(cfg)
    assert problem.startswith(f"{cfg}:8: pipelines.p.treshold: unknown key")
    assert "allowed: model, labels, adapter" in problem and "confidence" in problem


def test_sink_errors_do_not_mention_the_union_tag(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", """\
        streams:
          - name: cam
            url: a.mp4
            pipeline: p
        pipelines:
          p:
            model: m.onnx
        sinks:
          - type: jsonl
            path: out.jsonl
          - type: zmq
            endpoint: udp://x:1
        """)
    problem = only_problem(cfg)
    assert problem.startswith(f"{cfg}:12: sinks[1].endpoint: "), problem
    assert "tcp:// or ipc://" in problem


def test_undefined_pipeline_names_the_stream_line_and_known_pipelines(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", """\
        streams:
          - name: cam
            url: a.mp4
            pipeline: p
          - name: other
            url: b.mp4
            pipeline: no-such-pipeline-xyz
        pipelines:
          p:
            model: m.onnx
        """)
    problem = only_problem(cfg)
    assert problem.startswith(f"{cfg}:7: streams[1].pipeline: pipeline 'no-such-pipeline-xyz' is not defined")
    assert "pipelines/no-such-pipeline-xyz.yaml" in problem and "(known: p)" in problem


def test_duplicate_stream_names_are_rejected_at_the_repeated_entry(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", """\
        streams:
          - name: cam
            url: a.mp4
            pipeline: p
          - name: cam
            url: b.mp4
            pipeline: p
        pipelines:
          p:
            model: m.onnx
        """)
    problem = only_problem(cfg)
    assert problem.startswith(f"{cfg}:5: streams[1].name: "), problem
    assert "stream name 'cam' is already used by streams[0]; stream names must be unique" in problem


def test_yaml_syntax_error_has_the_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", """\
        streams:
          - name: cam
            url: a.mp4
           pipeline: p
        """)
    problem = only_problem(cfg)
    assert problem.startswith(f"{cfg}:4: YAML syntax error: ")
    assert "check indentation and quoting" in problem


def test_duplicate_keys_are_reported_at_the_second_occurrence(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", """\
        streams:
          - name: cam
            url: a.mp4
            pipeline: p
            url: b.mp4
        pipelines:
          p:
            model: m.onnx
        """)
    assert only_problem(cfg) == f"{cfg}:5: key 'url' appears twice in the same block; keep one"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ":1: the file must be a mapping"),
        ("- just\n- a list\n", ":1: the file must be a mapping"),
        ("pipelines: {}\n", ": streams: required key is missing"),
        ("streams: []\n", ": streams: List should have at least 1 item"),
    ],
)
def test_degenerate_documents(tmp_path: Path, text: str, expected: str) -> None:
    cfg = write(tmp_path / "streamd.yaml", text)
    problem = only_problem(cfg)
    assert problem.startswith(str(cfg)) and expected in problem, problem


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    problem = only_problem(missing)
    assert problem.startswith(f"{missing}: cannot read the file")


# --- ${VAR} substitution --------------------------------------------------------------------------

ENV_CONFIG = """\
streams:
  - name: cam
    url: ${URL}
    pipeline: p
    ring_slots: ${SLOTS:-5}
pipelines:
  p:
    model: ${MODELS:-/opt/models}/m.onnx
    confidence: ${CONF:-0.4}
"""


@pytest.mark.parametrize(
    ("env", "url", "slots", "model", "conf"),
    [
        ({"URL": "rtsp://h/a"}, "rtsp://h/a", 5, "/opt/models/m.onnx", 0.4),
        ({"URL": "rtsp://h/b", "SLOTS": "12", "MODELS": "/srv", "CONF": "0.7"}, "rtsp://h/b", 12, "/srv/m.onnx", 0.7),
        ({"URL": "rtsp://h/c", "CONF": ""}, "rtsp://h/c", 5, "/opt/models/m.onnx", None),  # set but empty
    ],
)
def test_env_substitution_and_defaults(tmp_path: Path, env: dict, url: str, slots: int, model: str,
                                       conf: float | None) -> None:
    cfg_path = write(tmp_path / "streamd.yaml", ENV_CONFIG)
    if conf is None:  # an empty value replaces the default: the field is invalid
        problem = only_problem(cfg_path, env)
        assert problem.startswith(f"{cfg_path}:9: pipelines.p.confidence: ")
        return
    cfg = load_config(cfg_path, env=env).config
    assert cfg.streams[0].url == url
    assert cfg.streams[0].ring_slots == slots
    assert cfg.pipelines["p"].model == model
    assert cfg.pipelines["p"].confidence == conf


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STREAMD_TEST_URL", "rtsp://from-environ/x")
    cfg_path = write(tmp_path / "streamd.yaml", ENV_CONFIG.replace("${URL}", "${STREAMD_TEST_URL}"))
    assert load_config(cfg_path).config.streams[0].url == "rtsp://from-environ/x"


def test_unset_env_var_names_file_line_field_and_variable(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", ENV_CONFIG)
    problem = only_problem(cfg, env={})
    assert problem.startswith(f"{cfg}:3: streams[0].url: environment variable URL is not set")
    assert "${URL:-default}" in problem


def test_several_unset_vars_in_one_value_are_each_reported(tmp_path: Path) -> None:
    cfg = write(tmp_path / "streamd.yaml", ENV_CONFIG.replace("${URL}", "rtsp://${HOST}/${PATH_PART}"))
    problems = problems_of(cfg, env={})
    assert len(problems) == 2
    assert all(p.startswith(f"{cfg}:3: streams[0].url: ") for p in problems)
    assert "HOST" in problems[0] and "PATH_PART" in problems[1]


# --- pipelines/<name>.yaml ------------------------------------------------------------------------

MAIN_USING_FILE = """\
streams:
  - name: cam
    url: clip.mp4
    pipeline: traffic
"""


def test_pipeline_from_a_file_next_to_the_config(tmp_path: Path) -> None:
    cfg_path = write(tmp_path / "streamd.yaml", MAIN_USING_FILE)
    write(tmp_path / "pipelines" / "traffic.yaml", """\
        model: ../models/m.onnx
        labels: names.txt
        confidence: ${CONF:-0.3}
        lines:
          - name: l1
            points: [[0, 10], [100, 10]]
        """)
    cfg = load_config(cfg_path, env={"CONF": "0.6"}).config
    pipe = cfg.pipelines["traffic"]
    # paths in a pipeline file resolve against that file's folder
    assert pipe.model == str(tmp_path / "models" / "m.onnx")
    assert pipe.labels == str(tmp_path / "pipelines" / "names.txt")
    assert pipe.confidence == 0.6
    assert pipe.lines[0].name == "l1"


def test_pipeline_file_with_yml_suffix(tmp_path: Path) -> None:
    cfg_path = write(tmp_path / "streamd.yaml", MAIN_USING_FILE)
    write(tmp_path / "pipelines" / "traffic.yml", "model: m.onnx\n")
    assert load_config(cfg_path, env={}).config.pipelines["traffic"].model == str(tmp_path / "pipelines" / "m.onnx")


@pytest.mark.parametrize(
    ("pipeline_text", "line", "field", "needle"),
    [
        ("model: m.onnx\nconfidence: 3\n", 2, "pipelines.traffic.confidence", "less than or equal to 1"),
        ("model: m.onnx\n\nmodle: x.onnx\n", 3, "pipelines.traffic.modle", "unknown key"),
        ("model: m.onnx\nlines:\n  - name: a\n    points: [[1, 1], [1, 1]]\n", 4,
         "pipelines.traffic.lines[0].points", "must differ"),
        ("model: m.onnx\ntracker:\n  min_iou: -1\n", 3, "pipelines.traffic.tracker.min_iou", "greater than or equal"),
    ],
)
def test_errors_in_a_pipeline_file_point_to_that_file(tmp_path: Path, pipeline_text: str, line: int, field: str,
                                                      needle: str) -> None:
    cfg_path = write(tmp_path / "streamd.yaml", MAIN_USING_FILE)
    pipe_path = write(tmp_path / "pipelines" / "traffic.yaml", pipeline_text)
    problem = only_problem(cfg_path)
    assert problem.startswith(f"{pipe_path}:{line}: {field}: "), problem
    assert needle in problem


def test_pipeline_file_problems_before_validation_point_to_that_file(tmp_path: Path) -> None:
    cfg_path = write(tmp_path / "streamd.yaml", MAIN_USING_FILE)
    pipe_path = write(tmp_path / "pipelines" / "traffic.yaml", "model: ${NOPE}\nlabels: a\nlabels: b\n")
    problems = problems_of(cfg_path)
    assert any(p.startswith(f"{pipe_path}:1: model: environment variable NOPE") for p in problems), problems
    assert any(p.startswith(f"{pipe_path}:3: key 'labels' appears twice") for p in problems), problems


def test_yaml_error_in_pipeline_file(tmp_path: Path) -> None:
    cfg_path = write(tmp_path / "streamd.yaml", MAIN_USING_FILE)
    pipe_path = write(tmp_path / "pipelines" / "traffic.yaml", "model: m.onnx\nlines: [\n")
    assert only_problem(cfg_path).startswith(f"{pipe_path}:3: YAML syntax error")


def test_inline_pipeline_wins_over_a_file(tmp_path: Path) -> None:
    cfg_path = write(tmp_path / "streamd.yaml", MAIN_USING_FILE + "pipelines:\n  traffic:\n    model: inline.onnx\n")
    write(tmp_path / "pipelines" / "traffic.yaml", "model: file.onnx\n")
    assert load_config(cfg_path, env={}).config.pipelines["traffic"].model == str(tmp_path / "inline.onnx")


# --- passwords never leak -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stream_block",
    [
        "  - name: cam\n    url: rtsp://u:hunter2@h/x\n    pipeline: p\n    ring_slots: 1\n",
        "  - name: cam\n    url: rtsp://u:hunter2@h/x\n    pipeline: p\n    bogus: 1\n",
        "  - name: cam\n    url: rtsp://u:hunter2@h/x\n    pipeline: p\n    loop: true\n",
        "  - name: cam\n    url: rtsp://u:hunter2@h/x\n    pipeline: undefined-pipe\n",
        "  - name: cam\n    url: rtsp://u:hunter2@h/x\n  - name: cam\n    url: rtsp://u:hunter2@h/y\n    pipeline: p\n",
        "  - name: rtsp://u:hunter2@h/x\n    url: rtsp://u:hunter2@h/x\n    pipeline: p\n",
        "  - name: cam\n    url: rtsp://u:${PW}@h/x\n    pipeline: p\n    ring_slots: 1\n",
        "  - name: cam\n    url: [rtsp://u:hunter2@h/x]\n    pipeline: p\n",
        "  - name: cam\n    url: rtsp://h/x?password=hunter2\n    pipeline: p\n    max_width: 1\n",
        "  - name: cam\n    url: rtsp://u:hunter2@h/x\n    pipeline: p\n    ring_slots: [1\n",
    ],
    ids=["ring_slots", "unknown-key", "loop-live", "undefined-pipeline", "missing-key", "bad-name",
         "env-password", "url-wrong-type", "query-password", "yaml-error"],
)
def test_password_never_appears_in_errors(tmp_path: Path, stream_block: str) -> None:
    cfg = tmp_path / "streamd.yaml"
    cfg.write_text("streams:\n" + stream_block + "pipelines:\n  p:\n    model: m.onnx\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg, env={"PW": "hunter2"})
    text = str(info.value) + repr(info.value) + "\n".join(info.value.problems)
    assert str(cfg) in text  # it is a real, located error ...
    assert "hunter2" not in text  # ... that keeps the secret out


def test_pipeline_file_in_a_pipelines_folder_beside_the_config_folder(tmp_path: Path) -> None:
    cfg_path = write(tmp_path / "configs" / "streamd.yaml", MAIN_USING_FILE)
    write(tmp_path / "pipelines" / "traffic.yaml", "model: m.onnx\n")
    assert load_config(cfg_path, env={}).config.pipelines["traffic"].model == str(tmp_path / "pipelines" / "m.onnx")


@pytest.mark.parametrize(
    ("env", "media"),
    [
        ({"STREAMD_MEDIA": "/m"}, "/m"),
        ({}, None),  # default: ../../shared/media relative to configs/
    ],
)
def test_shipped_traffic_config_loads(env: dict, media: str | None) -> None:
    path = Path(__file__).resolve().parents[2] / "configs" / "traffic.yaml"
    cfg = load_config(path, env=env).config
    media = media or os.path.normpath(path.parent / "../../shared/media")
    assert cfg.streams[0].url == f"{media}/videos/Traffic.mp4"
    assert cfg.pipelines["traffic"].model == f"{media}/models/yolox-nano/yolox_nano.onnx"
    assert cfg.pipelines["traffic"].labels == f"{media}/models/coco.names"
    assert cfg.sinks[0].path == os.path.normpath(path.parent / "../out/events.jsonl")
    assert cfg.pipelines["traffic"].lines[0].points == ((0, 380), (960, 380))


def test_shipped_demo_config_needs_its_video_and_takes_it_from_the_environment() -> None:
    path = Path(__file__).resolve().parents[2] / "streamd" / "data" / "demo.yaml"
    with pytest.raises(ConfigError, match="STREAMD_DEMO_VIDEO is not set"):
        load_config(path, env={})
    cfg = load_config(path, env={"STREAMD_DEMO_VIDEO": "/v.mp4", "STREAMD_DEMO_REALTIME": "false",
                                 "STREAMD_DEMO_STATE": "/s"}, check_paths=False).config
    assert cfg.counts.path == "/s/counts.db"
    assert cfg.streams[0].url == "/v.mp4" and cfg.streams[0].realtime is False
    assert cfg.pipelines["conveyor"].model == os.path.normpath(path.parent / "../models/conveyor.onnx")


@pytest.mark.parametrize("counts", ["", "counts:\n  timezone: Europe/Berlin\n"])
def test_counts_default_to_the_state_directory(tmp_path: Path, counts: str) -> None:
    path = write(tmp_path / "etc" / "streamd.yaml", "streams:\n  - {name: cam, url: rtsp://cam/1, pipeline: p}\n"
                 "pipelines:\n  p: {model: m.onnx}\n" + counts)
    beside = load_config(path, env={}).config.counts.path
    assert beside == str(tmp_path / "etc" / "state" / "counts.db")
    # under systemd (StateDirectory=streamd): the only writable place, whatever the config says otherwise
    # (the folder need not exist here: the path checks are for the machine that runs it)
    systemd = load_config(path, env={"STATE_DIRECTORY": "/var/lib/streamd"}, check_paths=False).config.counts.path
    assert systemd == "/var/lib/streamd/counts.db"
