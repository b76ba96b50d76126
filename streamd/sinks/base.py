from __future__ import annotations

from typing import Protocol

from streamd.config.models import SinkConfig
from streamd.ipc.messages import CameraHealth, CountUpdate, Evidence, LineCrossing, TrackedFrame, ZoneEvent

SinkMessage = LineCrossing | ZoneEvent | TrackedFrame | CountUpdate | Evidence | CameraHealth  # Evidence: from the evidence writer
SINK_MESSAGE_TYPES = (LineCrossing, ZoneEvent, TrackedFrame, CountUpdate, CameraHealth)
EVENT_TYPES = (LineCrossing, ZoneEvent, CameraHealth)  # events with a stable id


def type_of(message: SinkMessage) -> str:
    """The ``type`` field of the message's JSON form: line_crossing, zone_event, tracks, count_update."""
    return str(type(message).__struct_config__.tag)


def event_id(message: SinkMessage) -> str:
    """A stable id for dedupe downstream: the event's own id, or one derived from what the message states.

    A count_update's id names the total it reports (``<stream>/count/<line>/<class>/<direction>/<total>``):
    the same total is the same fact, so a re-sent update dedupes like an event.
    """
    if isinstance(message, EVENT_TYPES):
        return message.id
    if isinstance(message, CountUpdate):
        return f"{message.stream}/count/{message.line}/{message.class_name}/{message.direction}/{message.total}"
    if isinstance(message, Evidence):  # one record for the snapshot, one for the clip
        return f"{message.stream}/evidence/{message.id}/{'clip' if message.clip else 'snapshot'}"
    return f"{message.stream}/tracks/{message.frame}/{message.t_decoded_ns}"


class Sink(Protocol):
    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        """Accept one message; ``payload_json`` is its documented JSON form (encoded once for all sinks)."""

    def flush(self) -> None:
        """Make everything written so far durable or delivered."""

    def close(self) -> None: ...

    def discard(self) -> int:
        """Give up after a failure: release what the sink holds without delivering it (never raises for what
        is already broken) and return how many events it had accepted that are now lost."""


def accepts(config: SinkConfig, message: SinkMessage) -> bool:
    """Whether a sink with this config takes the message at all (its ``include_tracks``/``include_counts``)."""
    if isinstance(message, TrackedFrame):
        return config.include_tracks
    if isinstance(message, CountUpdate):
        return getattr(config, "include_counts", True)
    return True
