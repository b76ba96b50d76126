"""kill -9 of analytics, or of the whole daemon then a restart: counts stay exact (short tools.durability)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.demo import ensure_scene
from streamd.ipc.ring import remove_orphaned_rings
from streamd.synth import CLASSES
from tools.durability import one_run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode, kill_at_frame", [("analytics", 200), ("daemon", 320)])
def test_counts_are_exact_through_kill_9(mode: str, kill_at_frame: int, tmp_path: Path) -> None:
    video, truth_file = ensure_scene(3)
    truth = {name: truth_file.counts[name] for name in CLASSES}
    result = one_run(1, tmp_path, video, mode, kill_at_frame)
    remove_orphaned_rings()
    log = (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]
    assert result.exit_code == 0, log
    assert result.restored, f"the restarted analytics stage did not restore the stream's state:\n{log}"
    assert result.counted == truth, f"killed after frame {result.kill_frame}: counted {result.counted}, truth {truth}"
