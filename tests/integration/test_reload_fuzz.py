"""The reconfiguration fuzz (tools/fuzz_reload.py), short: 15 random steps (CI time) against a real daemon with a new seed
each run (printed; a failure prints the seed and its steps). The long version: python -m tools.fuzz_reload."""

from __future__ import annotations

import random

import pytest

from tools.fuzz_reload import run

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_fifteen_random_steps_keep_every_invariant(tmp_path) -> None:
    seed = random.SystemRandom().randrange(1 << 31)
    print(f"reload fuzz seed {seed} (rerun: python -m tools.fuzz_reload --steps 15 --seed {seed})")
    steps = run(15, seed, tmp_path / "fuzz")
    assert len(steps) == 15
