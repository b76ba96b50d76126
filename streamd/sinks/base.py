from __future__ import annotations

from typing import Protocol

from streamd.ipc.messages import CountUpdate, LineCrossing, TrackedFrame, ZoneEvent

SinkMessage = LineCrossing | ZoneEvent | TrackedFrame | CountUpdate
SINK_MESSAGE_TYPES = (LineCrossing, ZoneEvent, TrackedFrame, CountUpdate)
EVENT_TYPES = (LineCrossing, ZoneEvent)  # events with a stable id


class Sink(Protocol):
    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        """Accept one message; ``payload_json`` is its documented JSON form (encoded once for all sinks)."""

    def flush(self) -> None:
        """Make everything written so far durable or delivered."""

    def close(self) -> None: ...
