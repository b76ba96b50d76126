"""The daemon package type-checks clean under mypy ([tool.mypy] in pyproject.toml): a wrong type in a message,
config or adapter fails here rather than in a stage process at run time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, require

pytestmark = pytest.mark.timeout(600)  # a cold mypy cache takes a while


def test_streamd_type_checks_clean() -> None:
    probe = subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True, text=True)
    require(probe.returncode == 0, "mypy is not installed (pip install -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", "mypy", "streamd"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

