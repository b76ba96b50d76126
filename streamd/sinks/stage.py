"""Sinks process: fans events out to every configured sink, measures end-to-end latency, reports drains."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import msgspec
import numpy as np
import zmq

from streamd.config.models import JsonlSinkConfig, ZmqSinkConfig
from streamd.ipc import sockets
from streamd.ipc.messages import StreamCounters, StreamEnd, TrackedFrame, pipeline_decoder
from streamd.runtime.stage import EXIT_OK, Stage
from streamd.sinks.base import EVENT_TYPES, SINK_MESSAGE_TYPES, Sink
from streamd.sinks.jsonl import JsonlSink
from streamd.sinks.zmq_pub import ZmqPubSink

LATENCY_WINDOW = 1000  # frames per stream kept for the p50/p99 report


class SinksStage(Stage):
    """params: sinks (list of sink configs)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.sinks: list[Sink] = []
        for config in self.spec.params["sinks"]:
            if isinstance(config, JsonlSinkConfig):
                self.sinks.append(JsonlSink(config))
            elif isinstance(config, ZmqSinkConfig):
                self.sinks.append(ZmqPubSink(config, self.ctx))
        self.inbox = sockets.pull(self.ctx, self.spec.endpoints.sinks, hwm=10_000)
        self._json = msgspec.json.Encoder()
        self._latency_ms: dict[str, deque[float]] = {}
        self._events: dict[str, int] = {}
        self._drained: set[str] = set()

    def counters(self) -> dict[str, StreamCounters]:
        out = {}
        for stream, window in self._latency_ms.items():
            values = np.fromiter(window, float, len(window))
            out[stream] = StreamCounters(
                latency_p50_ms=round(float(np.percentile(values, 50)), 2),
                latency_p99_ms=round(float(np.percentile(values, 99)), 2),
                events_written=self._events.get(stream, 0),
                drained=stream in self._drained or None,
            )
        for stream in self._drained - out.keys():
            out[stream] = StreamCounters(drained=True, events_written=self._events.get(stream, 0))
        return out

    def run(self) -> int:
        try:
            while True:
                got = self.inbox.poll(0 if self.stop.is_set() else 200, zmq.POLLIN)
                if not got:
                    if self.stop.is_set():
                        return EXIT_OK
                    self.beat()
                    continue
                while True:  # handle everything queued, then flush once
                    try:
                        raw = self.inbox.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(pipeline_decoder.decode(raw))
                for sink in self.sinks:
                    sink.flush()
                self.beat()
        finally:
            for sink in self.sinks:
                sink.close()

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, StreamEnd):
            for sink in self.sinks:
                sink.flush()
            self._drained.add(msg.stream)
            self.beat(force=True)
            return
        if not isinstance(msg, SINK_MESSAGE_TYPES):
            return
        self._drained.discard(msg.stream)
        payload = self._json.encode(msg)
        for sink in self.sinks:
            sink.write(msg, payload)
        if isinstance(msg, EVENT_TYPES):
            self._events[msg.stream] = self._events.get(msg.stream, 0) + 1
        elif isinstance(msg, TrackedFrame):
            window = self._latency_ms.setdefault(msg.stream, deque(maxlen=LATENCY_WINDOW))
            window.append((time.monotonic_ns() - msg.t_decoded_ns) / 1e6)
