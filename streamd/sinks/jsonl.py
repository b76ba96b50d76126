"""JSON Lines file sink: one event object per line, appended, with optional size-based rotation.

Rotation follows logging.handlers.RotatingFileHandler: before a line would take the file past
``max_bytes``, the file is closed and renamed ``<path>.1`` (older ones shift to ``.2`` ... ``.N``, the
oldest beyond ``keep_files`` is deleted) and a new file starts. A line is never split between files; a
single line longer than ``max_bytes`` gets a file of its own.
"""

from __future__ import annotations

import os
from typing import BinaryIO
from pathlib import Path

import structlog

from streamd.config.models import JsonlSinkConfig
from streamd.ipc.messages import TrackedFrame
from streamd.sinks.base import SinkMessage


class JsonlSink:
    def __init__(self, config: JsonlSinkConfig):
        self.config = config
        self.path = Path(config.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._open()
        self.written = 0
        self.rotations = 0

    def _open(self) -> BinaryIO:
        return open(self.path, "ab", buffering=1 << 16)

    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        if isinstance(message, TrackedFrame) and not self.config.include_tracks:
            return
        line = payload_json + b"\n"
        limit = self.config.max_bytes
        if limit is not None:
            size = self._file.tell()  # includes what is still buffered
            if size > 0 and size + len(line) > limit:
                self._rotate()
        self._file.write(line)
        self.written += 1

    def rotated_paths(self) -> list[Path]:
        return [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.config.keep_files + 1)]

    def _rotate(self) -> None:
        self._close_file()
        names = self.rotated_paths()
        for older, newer in zip(reversed(names[:-1]), reversed(names[1:])):
            if older.exists():
                os.replace(older, newer)  # the last one is overwritten: it was the oldest kept
        os.replace(self.path, names[0])
        self._file = self._open()
        self.rotations += 1
        structlog.get_logger().info("jsonl_rotated", path=str(self.path), kept=self.config.keep_files)

    def _close_file(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._close_file()
