"""JSON Lines file sink: one event object per line, appended, with optional size-based rotation.

Rotation follows logging.handlers.RotatingFileHandler: before a line would take the file past
``max_bytes``, the file is closed and renamed ``<path>.1`` (older ones shift to ``.2`` ... ``.N``, the
oldest beyond ``keep_files`` is deleted) and a new file starts. A line is never split between files; a
single line longer than ``max_bytes`` gets a file of its own.

Failures (disk full, file removed, folder not writable) raise from ``write``/``flush``; the stage's guard
then calls :meth:`JsonlSink.discard`, which cuts the file back to what the last successful flush made
durable, so the file never holds a torn line and the loss is exactly the events written since (counted).
A torn last line left by a crash of the process is cut off when the file is opened again.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from streamd.config.models import JsonlSinkConfig
from streamd.ipc.messages import TrackedFrame
from streamd.sinks.base import SinkMessage

BUFFER_BYTES = 1 << 16  # written out once this much is buffered, else at each flush
_TAIL_CHUNK = 1 << 16


class JsonlSink:
    def __init__(self, config: JsonlSinkConfig):
        self.config = config
        self.path = Path(config.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._buffer = bytearray()
        self._fd = -1
        self._size = 0  # bytes in the file, written out (not counting the buffer)
        self._durable = 0  # file size at the last successful flush (or open/rotation)
        self._unflushed = 0  # events accepted since then
        self._open()
        self.written = 0
        self.rotations = 0

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            whole = _whole_lines(self.path, size)
            if whole < size:
                os.truncate(self.path, whole)
                structlog.get_logger().warning("jsonl_torn_line_removed", path=str(self.path), bytes=size - whole,
                                               reason="the file ended inside a line (an earlier crash or full disk)")
                size = whole
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size, self._durable = fd, size, size

    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        if isinstance(message, TrackedFrame) and not self.config.include_tracks:
            return
        # everything that can fail happens before the line is accepted: a write that raises took nothing
        line = payload_json + b"\n"
        limit = self.config.max_bytes
        if limit is not None:
            size = self._size + len(self._buffer)
            if size > 0 and size + len(line) > limit:
                self._rotate()
        if len(self._buffer) >= BUFFER_BYTES:
            self._write_out()
        self._buffer += line
        self._unflushed += 1
        self.written += 1

    def rotated_paths(self) -> list[Path]:
        return [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.config.keep_files + 1)]

    def _write_out(self) -> None:
        view = memoryview(self._buffer)
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        finally:
            view.release()
            del self._buffer[:done]
            self._size += done

    def _rotate(self) -> None:
        self._close_file()
        self._unflushed = 0  # everything before is durable in the file about to be rotated
        names = self.rotated_paths()
        for older, newer in zip(reversed(names[:-1]), reversed(names[1:])):
            if older.exists():
                os.replace(older, newer)  # the last one is overwritten: it was the oldest kept
        os.replace(self.path, names[0])
        self._open()
        self.rotations += 1
        structlog.get_logger().info("jsonl_rotated", path=str(self.path), kept=self.config.keep_files)

    def _close_file(self) -> None:
        self._write_out()
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

    def flush(self) -> None:
        self._write_out()
        self._durable = self._size
        self._unflushed = 0

    def close(self) -> None:
        self._close_file()
        self._unflushed = 0

    def discard(self) -> int:
        """After a failure: drop the buffer, cut the file back to its last flushed size, close it; the events lost."""
        lost, self._unflushed = self._unflushed, 0
        self._buffer.clear()
        if self._fd >= 0:
            try:
                if self._size > self._durable:
                    os.ftruncate(self._fd, self._durable)
            except OSError:
                pass  # the file is gone or read-only: a torn tail is cut when it is opened again
            os.close(self._fd)
            self._fd = -1
        return lost


def _whole_lines(path: Path, size: int) -> int:
    """Length of the file's prefix that ends with a complete line (``size`` when it ends with a newline)."""
    if size == 0:
        return 0
    with open(path, "rb") as f:
        end = size
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            f.seek(start)
            chunk = f.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return size
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            end = start
    return 0
