from __future__ import annotations

from typing import Protocol

from streamd.ipc.messages import CountUpdate, LineCrossing, TrackedFrame

SinkMessage = LineCrossing | TrackedFrame | CountUpdate


class Sink(Protocol):
    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        """Accept one message; ``payload_json`` is its documented JSON form (encoded once for all sinks)."""

    def flush(self) -> None:
        """Make everything written so far durable or delivered."""

    def close(self) -> None: ...
