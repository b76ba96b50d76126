"""Soak, short (90 s, sampled every 2 s: CI time; the long run is `python -m tools.soak --minutes 30`): 4 real-time
streams with reload churn every 6 s; memory, file descriptors, threads, processes and shared-memory rings stay flat after warm-up."""

from __future__ import annotations

import pytest

from tools.soak import MAX_GROWTH, run

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_ninety_seconds_of_reload_churn_leave_resources_flat(tmp_path) -> None:
    result = run(1.5, tmp_path / "soak", churn_s=6.0, sample_s=2.0)
    assert result["exit_code"] == 0
    assert result["reloads_applied"] >= result["edits"] - 1, result  # the last edit may still be applying
    grew = {k: g for k, g in result["growth"].items() if g["growth"] >= MAX_GROWTH}
    assert not grew, f"grew by {MAX_GROWTH:.0%} or more after warm-up: {grew}"
    assert (tmp_path / "soak" / "soak.png").stat().st_size > 10_000
