"""JSON Lines file sink: one event object per line, appended."""

from __future__ import annotations

import os
from pathlib import Path

from streamd.config.models import JsonlSinkConfig
from streamd.ipc.messages import TrackedFrame
from streamd.sinks.base import SinkMessage


class JsonlSink:
    def __init__(self, config: JsonlSinkConfig):
        self.config = config
        path = Path(config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab", buffering=1 << 16)
        self.written = 0

    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        if isinstance(message, TrackedFrame) and not self.config.include_tracks:
            return
        self._file.write(payload_json + b"\n")
        self.written += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
