"""ZeroMQ PUB sink: two-frame messages [topic, JSON]; topic is ``<type>.<stream>`` (see docs/events.md)."""

from __future__ import annotations

import zmq

from streamd.config.models import ZmqSinkConfig
from streamd.ipc import sockets
from streamd.ipc.messages import TrackedFrame
from streamd.sinks.base import SinkMessage

TOPIC_OF = {"LineCrossing": "line_crossing", "ZoneEvent": "zone_event", "TrackedFrame": "tracks",
            "CountUpdate": "count_update", "Evidence": "evidence"}


class ZmqPubSink:
    def __init__(self, config: ZmqSinkConfig, ctx: zmq.Context):
        self.config = config
        self._socket = sockets.publisher(ctx, config.endpoint, hwm=10_000)
        self.written = 0

    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        if isinstance(message, TrackedFrame) and not self.config.include_tracks:
            return
        topic = f"{TOPIC_OF[type(message).__name__]}.{message.stream}".encode()
        try:
            # PUB never blocks: a slow subscriber loses messages at its own high-water mark, not ours
            self._socket.send_multipart([topic, payload_json], zmq.NOBLOCK)
            self.written += 1
        except zmq.Again:
            pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._socket.close(linger=0)

    def discard(self) -> int:
        self._socket.close(linger=0)
        return 0  # PUB hands each message over at once: nothing accepted is held back
