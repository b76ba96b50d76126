"""tools.fuzz_config: a short fuzz run of the real `streamd validate` (a new seed each run, printed), and
the fuzzer's own checks (a traceback, a bad exit status, a CPU hog and a hang are each reported)."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tools.fuzz_config import MUTATIONS, Limits, fuzz, main, make_case

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_short_fuzz_run_of_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = secrets.randbelow(1 << 32)
    print(f"fuzz seed {seed} (repeat: python -m tools.fuzz_config --seed {seed} --cases 25)")
    lines: list[str] = []
    failures = fuzz(CONFIGS, 25, seed, tmp_path / "failures", jobs=2, log=lines.append)
    assert not failures, f"seed {seed}:\n" + "\n".join(lines)
    assert "25 case(s), 0 failure(s)" in lines[-1]


def test_cases_repeat_from_the_seed() -> None:
    first = [make_case(42, i, CONFIGS) for i in range(30)]
    again = [make_case(42, i, CONFIGS) for i in range(30)]
    assert first == again
    assert len({c.data for c in first}) == 30  # and differ from each other
    assert {m for c in first for m in c.mutations} <= set(MUTATIONS)


@pytest.mark.parametrize(
    ("script", "limits", "problem"),
    [
        ("import sys; print('Traceback (most recent call last):', file=sys.stderr); sys.exit(1)", Limits(),
         "printed a traceback"),
        ("import sys; sys.exit(2)", Limits(), "exit status 2"),
        ("import sys; print('error: x (a streamd bug: please report it)'); sys.exit(1)", Limits(), "last-resort"),
        ("while True: pass", Limits(cpu_s=0.3, wall_s=60), "of CPU"),  # RLIMIT_CPU stops it after 1 s
        ("import time; time.sleep(60)", Limits(wall_s=1.5), "a hang"),
    ],
    ids=["traceback", "exit-2", "bug-handler", "cpu", "hang"],
)
def test_the_fuzzer_reports_each_kind_of_failure(tmp_path: Path, script: str, limits: Limits, problem: str) -> None:
    if script.startswith("while"):
        script = "import resource; resource.setrlimit(resource.RLIMIT_CPU, (1, 2))\n" + script
    lines: list[str] = []
    failures = fuzz(CONFIGS[:1], 1, 7, tmp_path / "failures", limits=limits, log=lines.append,
                    command=lambda path: [sys.executable, "-c", script, str(path)])
    assert len(failures) == 1 and problem in lines[0], lines
    saved = list((tmp_path / "failures").iterdir())
    assert len(saved) == 1 and saved[0].read_bytes() == failures[0].case.data  # the failing file is kept


def test_command_line_prints_the_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cases", "2", "--seed", "5", "--jobs", "2", "--out", str(tmp_path), str(CONFIGS[0])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fuzz_config: seed 5 (2 cases over {CONFIGS[0].name})")
    assert main(["--cases", "1", str(tmp_path / "missing.yaml")]) == 2
