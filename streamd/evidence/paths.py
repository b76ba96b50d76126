"""Where evidence lives: ``<state dir>/evidence`` (the state dir holds the count store and the outboxes)."""

from __future__ import annotations

import os
from pathlib import Path

from streamd.config.models import DaemonConfig

INDEX_FILE = "index.db"
SEGMENTS_DIR = "segments"


def evidence_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "evidence"


def state_dir_of(config: DaemonConfig) -> Path:
    """The daemon's state directory as the supervisor picks it: $STATE_DIRECTORY, else beside the count store."""
    return Path(os.environ.get("STATE_DIRECTORY") or Path(config.counts.path).parent)


def evidence_dir_of(config: DaemonConfig) -> Path:
    return evidence_dir(state_dir_of(config))


def segments_dir(root: Path, stream: str) -> Path:
    return root / SEGMENTS_DIR / stream
