"""Hostile and corrupt config files (issue 19 items 1-3, 5-7): every one is a ConfigError with file:line and
what to do, in `load_config` (so a reload keeps running) and in the real `streamd validate` (exit 1, no
traceback), within bounded time and memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from streamd.config.checks import PathProblem, check_paths, path_problem
from streamd.config.loader import MAX_CONFIG_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, load_config
from streamd.errors import ConfigError
from tests.conftest import REPO

GOOD = """\
streams:
  - {name: cam, url: rtsp://cam.local/live, pipeline: p}
pipelines:
  p:
    model: m.onnx
"""


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, env: dict[str, str] | None = None, **kwargs: bool) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env, **kwargs)
    return info.value.problems


def validate(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `streamd validate` (it loads the model too: a config that passes the loader fails there)."""
    return subprocess.run([sys.executable, "-m", "streamd", "validate", str(path)], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={**os.environ, **(env or {})})


def assert_one_clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


# --- item 1: a bad byte is a ConfigError naming the file, line and byte --------------------------------------


@pytest.mark.parametrize(
    ("tail", "line", "needle"),
    [
        (b"# S\xfcd\n", 6, "byte 0xfc at byte offset"),  # Latin-1 text appended by an editor
        (b"x: 1\0\n", 6, "NUL byte at byte offset"),
        (b"# a\x01b\n", 6, "U+0001"),  # a control character: valid UTF-8, not valid YAML
        (b"# \xed\xa0\x80\n", 6, "is not UTF-8"),  # an encoded surrogate
        (b"# \xc3", 6, "is not UTF-8"),  # a file cut inside a character
    ],
)
def test_a_bad_byte_is_a_config_error_with_file_and_line(tmp_path: Path, tail: bytes, line: int,
                                                         needle: str) -> None:
    cfg = write(tmp_path / "c.yaml", GOOD.encode() + tail)
    (problem,) = problems_of(cfg)
    assert problem.startswith(f"{cfg}:{line}: ") and needle in problem, problem
    assert "remove" in problem  # and what to do


def test_validate_answers_a_bad_byte_with_one_error_and_no_traceback(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", GOOD.encode() + b"# S\xfcd\n")
    assert_one_clean_error(validate(cfg), f"{cfg}:6:", "not UTF-8")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("x: 2024-13-45\n", ":6: this value cannot be read: month must be in 1..12"),
        ("x: " + "9" * 5000 + "\n", ":6: this value cannot be read"),
        ("x: !!python/object:os.system ls\n", ":6: YAML syntax error"),
        ("x: *nowhere\n", ":6: YAML syntax error: found undefined alias"),
    ],
)
def test_values_yaml_cannot_build_are_config_errors(tmp_path: Path, text: str, needle: str) -> None:
    cfg = write(tmp_path / "c.yaml", GOOD + text)
    (problem,) = problems_of(cfg)
    assert needle in problem, problem


def test_a_folder_or_device_as_the_config_is_a_config_error(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path)
    assert str(tmp_path) in problem and "not a regular file" in problem
    (problem,) = problems_of(Path("/dev/zero"))  # would otherwise be read forever
    assert "not a regular file" in problem


# --- item 2: alias bombs, huge and deep files are refused quickly, in bounded memory ------------------------


def alias_bomb(levels: int = 7, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 40) -> str:
    lines = ["m0: &m0 {a: 1}"]
    lines += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (GOOD + alias_bomb(), f"expands to more than {MAX_YAML_NODES} values"),  # 9**7 = 4.8 million
        (alias_bomb() + GOOD.replace("streams:\n", "streams: *a6\nx:\n", 1), f"more than {MAX_YAML_NODES}"),
        (GOOD + merge_bomb(), f"expands to more than {MAX_YAML_NODES} values"),  # 2**40 merged keys
        (GOOD + "r: &r [1, *r]\n", "recursive"),
        (GOOD + "deep: " + "[" * 5000 + "]" * 5000 + "\n", f"deeper than {MAX_YAML_DEPTH} levels"),
        (GOOD + "deep:\n" + "".join("  " * i + "k:\n" for i in range(1, 300)) + "  " * 300 + "v\n", "deeper than"),
        (GOOD + "big: [" + ", ".join(["0"] * (MAX_YAML_NODES + 10)) + "]\n", f"more than {MAX_YAML_NODES}"),
        (GOOD + "#" * MAX_CONFIG_BYTES, f"larger than {MAX_CONFIG_BYTES >> 10} KiB"),
    ],
    ids=["alias-bomb", "alias-bomb-as-streams", "merge-bomb", "recursive-alias", "deep-flow", "deep-block",
         "huge-list", "oversize"],
)
def test_expansion_and_size_limits(tmp_path: Path, text: str, needle: str) -> None:
    cfg = write(tmp_path / "c.yaml", text)
    tracemalloc.start()
    try:
        started = time.process_time()
        (problem,) = problems_of(cfg)
        cpu = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problem.startswith(f"{cfg}") and needle in problem, problem
    assert peak < 64 << 20, f"peak {peak >> 20} MiB"  # the 397-byte bomb took 3.4 GB before
    assert cpu < 10, cpu  # generous (about 0.1 s here); the bomb took 55 s before


def test_validate_refuses_the_alias_bomb(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", GOOD + alias_bomb())
    assert_one_clean_error(validate(cfg), f"{cfg}:", "expands to more than")


def test_aliases_within_the_limits_still_work(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", """\
        streams:
          - &cam {name: a, url: a.mp4, pipeline: p, realtime: true}
          - {<<: *cam, name: b}
          - {<<: *cam, name: c, url: c.mp4}
        pipelines:
          p: {model: m.onnx}
        """)
    streams = load_config(cfg, env={}).config.streams
    assert [(s.name, s.realtime, Path(s.url).name) for s in streams] == [
        ("a", True, "a.mp4"), ("b", True, "a.mp4"), ("c", True, "c.mp4")]


def test_many_problems_are_capped(tmp_path: Path) -> None:
    streams = "".join(f"  - {{name: 'bad name {i}', url: x, pipeline: p}}\n" for i in range(300))
    cfg = write(tmp_path / "c.yaml", f"streams:\n{streams}pipelines:\n  p: {{model: m.onnx}}\n")
    problems = problems_of(cfg)
    assert len(problems) == 51 and problems[-1] == "... and 250 more problem(s)"


# --- item 3: validation is linear in the number of streams ------------------------------------------------

LINEAR = """
import time
from streamd.config.loader import load_config
from streamd.config.models import DaemonConfig

n = 100_000
data = {"streams": [{"name": f"cam{i}", "url": f"rtsp://h/{i}", "pipeline": "p"} for i in range(n)],
        "pipelines": {"p": {"model": "m.onnx", "lines": [{"name": f"l{i}", "points": [[0, i], [9, i]]}
                                                         for i in range(5000)]}}}
assert len(DaemonConfig.model_validate(data).streams) == n
data["streams"].append({"name": "cam7", "url": "x", "pipeline": "p"})
try:
    DaemonConfig.model_validate(data)
except ValueError as exc:
    assert "repeated: cam7" in str(exc)
else:
    raise AssertionError("duplicate not found")
# a file of the largest size the loader takes: about 18k streams
path = PATH
with open(path, "w") as f:
    f.write("pipelines:\\n  p: {model: m.onnx}\\nstreams:\\n")
    for i in range(18_000):
        f.write(f"  - {{name: cam{i}, url: rtsp://h/{i}, pipeline: p}}\\n")
assert len(load_config(path, env={}).config.streams) == 18_000
print("ok")
"""


def test_validation_is_linear_in_the_number_of_streams(tmp_path: Path) -> None:
    # quadratic (list.count per stream) took over 5 minutes for 100k streams; linear takes a few seconds.
    # The timeout is the only clock here, and a generous one.
    script = LINEAR.replace("PATH", repr(str(tmp_path / "big.yaml")))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


# --- item 5: paths that cannot work -----------------------------------------------------------------------


def with_sinks(tmp_path: Path, extra: str) -> Path:
    return write(tmp_path / "c.yaml", GOOD + textwrap.dedent(extra))


def test_counts_path_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cfg = with_sinks(tmp_path, "counts:\n  path: afile/state/counts.db\n")
    (problem,) = problems_of(cfg)
    assert problem.startswith(f"{cfg}:7: counts.path: {tmp_path}/afile/state/counts.db cannot be created: "
                              f"{tmp_path}/afile is a file, not a folder"), problem
    # the real validate says the same, in one line, with no mkdir traceback
    assert_one_clean_error(validate(cfg), f"{cfg}:7: counts.path:", "is a file, not a folder")


def test_counts_path_in_proc(tmp_path: Path) -> None:
    cfg = with_sinks(tmp_path, "counts:\n  path: /proc/streamd/counts.db\n")
    (problem,) = problems_of(cfg)
    assert problem.startswith(f"{cfg}:7: counts.path: /proc/streamd/counts.db is on a kernel file system"), problem
    # with a PostgreSQL store too: analytics records locally first and the replicator ships the rows
    cfg.write_text(cfg.read_text() + "  url: postgresql://u:pw@db/counts\n")
    assert any(p.startswith(f"{cfg}:7: counts.path:") for p in problems_of(cfg))


@pytest.mark.parametrize(
    ("sinks", "field", "needle"),
    [
        ("  - {type: jsonl, path: afile/events.jsonl}\n", "sinks[0].path", "is a file, not a folder"),
        ("  - {type: zmq}\n  - {type: jsonl, path: adir}\n", "sinks[1].path", "is a folder"),
        ("  - {type: jsonl, path: /sys/events.jsonl}\n", "sinks[0].path", "kernel file system"),
        ("  - {type: mqtt, outbox: {path: afile/outbox.db}}\n", "sinks[0].outbox.path", "is a file, not a folder"),
        ("  - {type: webhook, url: 'https://h/x', outbox: {path: /proc/1/o.db}}\n", "sinks[0].outbox.path",
         "kernel file system"),
        ("  - {type: mqtt, tls: true, ca_file: missing.pem}\n", "sinks[0].ca_file", "does not exist"),
    ],
)
def test_sink_paths_that_cannot_work(tmp_path: Path, sinks: str, field: str, needle: str) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cfg = with_sinks(tmp_path, "sinks:\n" + sinks)
    (problem,) = problems_of(cfg)
    assert f": {field}: " in problem and needle in problem, problem
    assert problems_of(cfg, check_paths=True) == [problem]
    load_config(cfg, env={}, check_paths=False)  # the pure validation has nothing against it


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_sink_in_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        cfg = with_sinks(tmp_path, "sinks:\n  - {type: jsonl, path: ro/sub/events.jsonl}\n")
        (problem,) = problems_of(cfg)
        assert ": sinks[0].path: " in problem and f"the folder {folder} is not writable" in problem, problem
    finally:
        folder.chmod(0o755)


def test_usable_paths_pass(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("")
    assert path_problem(str(tmp_path / "events.jsonl")) is None  # an existing file
    assert path_problem(str(tmp_path / "new" / "deeper" / "events.jsonl")) is None  # folders are created
    assert path_problem("/dev/null") is None  # appending to a device works
    assert path_problem("/dev/null", "sqlite") is not None  # a database does not
    assert path_problem("a\0b") is not None
    cfg = load_config(with_sinks(tmp_path, "sinks:\n  - {type: jsonl, path: out/e.jsonl}\n"), env={}).config
    assert check_paths(cfg) == []
    assert str(PathProblem(("sinks", 1, "outbox", "path"), "why")) == "sinks[1].outbox.path: why"


# --- item 6: values that cannot work ----------------------------------------------------------------------


def test_unknown_time_zone_is_refused_with_a_hint(tmp_path: Path) -> None:
    cfg = with_sinks(tmp_path, "counts:\n  timezone: Mars/Olympus\n")
    (problem,) = problems_of(cfg)
    assert problem.startswith(f"{cfg}:7: counts.timezone: ") and "not an IANA time zone" in problem
    assert "Europe/Berlin" in problem  # the hint
    cfg.write_text(cfg.read_text().replace("Mars/Olympus", "europe/berlin"))
    assert "did you mean Europe/Berlin" in problems_of(cfg)[0]


@pytest.mark.parametrize(
    ("pipeline", "field"),
    [
        ("lines: [{name: l, points: [[0, .inf], [9, 9]]}]", "pipelines.p.lines[0].points[0][1]"),
        ("lines: [{name: l, points: [[.nan, 0], [9, 9]]}]", "pipelines.p.lines[0].points[0][0]"),
        ("lines: [{name: l, points: [[0, 0], [-.inf, 9]]}]", "pipelines.p.lines[0].points[1][0]"),
        ("zones: [{name: z, polygon: [[0, 0], [.inf, 0], [9, 9]]}]", "pipelines.p.zones[0].polygon[1][0]"),
        ("zones: [{name: z, polygon: [[0, 0], [2.0e+300, 0], [9, 9]]}]", "pipelines.p.zones[0].polygon[1][0]"),
        ("preprocess: {scale: .inf}", "pipelines.p.preprocess.scale"),
        ("preprocess: {mean: [0, .nan, 0]}", "pipelines.p.preprocess.mean[1]"),
    ],
)
def test_non_finite_coordinates_are_refused_with_the_field(tmp_path: Path, pipeline: str, field: str) -> None:
    cfg = write(tmp_path / "c.yaml", GOOD + f"    {pipeline}\n")
    (problem,) = problems_of(cfg)
    assert problem.startswith(f"{cfg}:6: {field}: "), problem


# --- item 7: validation errors never echo a secret --------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "secret"),
    [
        ("sinks:\n  - {type: mqtt, password: 987654321}\n", "987654321"),  # a number is not a string
        ("sinks:\n  - {type: mqtt, password: [s3cretPW]}\n", "s3cretPW"),
        ("sinks:\n  - {type: webhook, url: 'https://h/x', secret: 31337}\n", "31337"),
        ("sinks:\n  - {type: webhook, url: 'https://h/x', bearer_token: 4242424242}\n", "4242424242"),
        ("api: {token: shortTOKzz}\n", "shortTOK"),  # too short: pydantic would echo it
        ("sinks:\n  - {type: webhook, url: 'ftp://h/x?api_key=K3YK3Y&sig=S1GS1G'}\n", "K3YK3Y"),
        ("sinks:\n  - {type: webhook, url: 'ftp://h/x?api_key=K3YK3Y&sig=S1GS1G'}\n", "S1GS1G"),
    ],
)
def test_validation_errors_hide_secret_values(tmp_path: Path, block: str, secret: str) -> None:
    cfg = with_sinks(tmp_path, block)
    problems = problems_of(cfg)
    assert problems and all(secret not in p for p in problems), problems
    if "token" in block or "password" in block or "secret" in block:
        assert any("(value hidden)" in p for p in problems), problems
    proc = validate(cfg)
    assert proc.returncode == 1 and secret not in proc.stderr + proc.stdout, proc.stderr


# --- the shipped configs still validate ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_pass_the_path_checks(name: str) -> None:
    env = {**os.environ, "CONVEYOR_VIDEO": "/dev/null"}
    cfg = load_config(REPO / "configs" / name, env=env).config  # check_paths=True is the default
    assert check_paths(cfg) == []


@pytest.mark.parametrize("value", ["${a:-" * 150_000, "}" + "${a:-" * 150_000])
def test_env_substitution_is_linear_in_hostile_values(tmp_path: Path, value: str) -> None:
    cfg = write(tmp_path / "c.yaml", GOOD + f"x: '{value}'\n")
    started = time.process_time()
    problems_of(cfg)
    assert time.process_time() - started < 10  # generous: well under a second; quadratic took minutes


# --- every field given every wrong type: a ConfigError naming it, never another exception -------------------

FULL = {
    "streams": [{"name": "cam", "url": "clip.mp4", "pipeline": "p", "realtime": True, "options": {"rtsp_transport": "tcp"},
                 "retry": {"initial_s": 1}}, {"name": "cam2", "url": "rtsp://u:Pw9Secret@h/x", "pipeline": "p"}],
    "pipelines": {"p": {"model": "m.onnx", "labels": "l.txt", "preprocess": {"mean": [0, 0, 0]}, "input_size": [32, 32],
                        "classes": ["car"], "tracker": {"lost_track_s": 1},
                        "lines": [{"name": "l", "points": [[0, 0], [9, 9]], "classes": ["car"]}],
                        "zones": [{"name": "z", "polygon": [[0, 0], [9, 0], [9, 9]]}]}},
    "sinks": [{"type": "jsonl", "path": "out/e.jsonl"}, {"type": "zmq", "endpoint": "tcp://127.0.0.1:5999"},
              {"type": "mqtt", "password": "Pw9Secret", "ca_file": "ca.pem", "outbox": {"path": "o.db", "retry": {"max_s": 2}}},
              {"type": "webhook", "url": "https://h/x", "secret": "s", "bearer_token": "t"}],
    "inference": {"providers": ["CPUExecutionProvider"]},
    "supervisor": {"restart": {"initial_s": 1}},
    "counts": {"path": "state/c.db", "timezone": "UTC", "shifts": ["06:00"]},
    "api": {"token": "0123456789abcdef", "host": "127.0.0.1"},
    "watch_config": True,
}
WRONG = [5, -1.5, True, None, "s", "", [], {}, [1, [2]], {"a": {"b": 1}}, "${UNSET_VAR_X}", "../" * 30 + "x\0y"]


def _locs(node: object, loc: tuple = ()) -> list[tuple]:
    out = [loc] if loc else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _locs(value, loc + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _locs(value, loc + (i,))
    return out


def _replaced(node: object, loc: tuple, value: object) -> object:
    import copy

    out = copy.deepcopy(node)
    target = out
    for part in loc[:-1]:
        target = target[part]  # type: ignore[index]
    target[loc[-1]] = value  # type: ignore[index]
    return out


def test_every_field_with_every_wrong_type_is_a_config_error(tmp_path: Path) -> None:
    import yaml

    cfg = tmp_path / "c.yaml"
    (tmp_path / "ca.pem").write_text("x")
    cfg.write_text(yaml.safe_dump(FULL))
    load_config(cfg, env={})  # the unmutated config is valid
    tried = 0
    for loc in _locs(FULL):
        for value in WRONG:
            cfg.write_text(yaml.safe_dump(_replaced(FULL, loc, value)))
            try:
                load_config(cfg, env={})
            except ConfigError as exc:
                assert not any("a streamd bug" in p for p in exc.problems), (loc, value, exc.problems)
                assert all(p.startswith(str(cfg)) for p in exc.problems), (loc, value, exc.problems)
                assert "Pw9Secret" not in str(exc), (loc, value, exc.problems)
            tried += 1
    assert tried > 500
