"""Sinks process: fans events out to every configured sink, measures end-to-end latency, reports drains.

"Drained" (reported per stream after its StreamEnd) means every event of the stream was handed to every
sink durably: written to the JSONL file, published on ZeroMQ, or committed to the on-disk outbox of an
MQTT/webhook sink. It does not wait for the broker or endpoint: a finite file may finish while a target
is down; the daemon then keeps delivering for ``outbox.shutdown_grace_s`` on exit, and whatever is still
queued is sent first on the next start (see docs/events.md, "Outbox").

Each sink is isolated (streamd/sinks/guard.py): one that cannot be opened or fails at a write, flush or close
is marked down in the heartbeat (``sinks``), retried with backoff and counts the events it drops; the other
sinks go on. A down sink does not hold up "drained": its loss is counted instead.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import zmq

from streamd.config.models import JsonlSinkConfig, MqttSinkConfig, SinkConfig, WebhookSinkConfig, ZmqSinkConfig
from streamd.ipc import sockets
from streamd.evidence.writer import EvidenceShared, EvidenceSink, evidence_accepts
from streamd.ipc.messages import OutboxCounters, StreamCounters, StreamEnd, StreamRemoved, TrackedFrame, pipeline_decoder
from streamd.runtime.histogram import Histogram
from streamd.runtime.params import SinksParams, expect
from streamd.redact import redact
from streamd.runtime.stage import EXIT_OK, Stage
from streamd.sinks.base import EVENT_TYPES, SINK_MESSAGE_TYPES, Sink, accepts
from streamd.sinks.guard import DEFAULT_RETRY, GuardedSink
from streamd.sinks.jsonl import JsonlSink
from streamd.sinks.mqtt import MqttSink
from streamd.sinks.outbox import OutboxSink
from streamd.sinks.webhook import WebhookSink
from streamd.sinks.zmq_pub import ZmqPubSink

LATENCY_WINDOW = 1000  # frames per stream kept for the p50/p99 report


def state_dir(params: SinksParams) -> Path:
    """Where outboxes live unless a sink names its own file: the daemon's state directory.

    ``params.state_dir`` when the supervisor passes one, else systemd's $STATE_DIRECTORY (first entry),
    else ./state (the daemon's working directory).
    """
    if params.state_dir:
        return Path(params.state_dir)
    systemd_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(systemd_dir) if systemd_dir else Path("state")


def outbox_path(config: MqttSinkConfig | WebhookSinkConfig, params: SinksParams) -> Path:
    if config.outbox.path:
        return Path(config.outbox.path)
    return state_dir(params) / f"outbox-{config.name}.db"


def sink_names(configs: Sequence[SinkConfig]) -> list[str]:
    """Stable display names, in config order: mqtt/webhook ``name``, ``jsonl:<path>``, ``zmq:<endpoint>``;
    a name taken by an earlier sink gets ``[<index>]`` appended (index in the sinks list)."""
    names: list[str] = []
    for index, config in enumerate(configs):
        if isinstance(config, JsonlSinkConfig):
            base = f"jsonl:{config.path}"
        elif isinstance(config, ZmqSinkConfig):
            base = f"zmq:{config.endpoint}"
        else:
            base = config.name
        base = redact(base)
        names.append(base if base not in names else f"{base}[{index}]")
    return names


class SinksStage(Stage):
    """params: SinksParams (streamd/runtime/params.py)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.sinks: list[GuardedSink] = []  # each sink fails, is retried and reports health on its own
        self.outboxes: dict[str, GuardedSink] = {}  # sink name -> the guard of an mqtt/webhook sink
        params = expect(self.spec.params, SinksParams)
        configs = params.sinks
        self._owners: dict[str, str] = {}  # outbox file or zmq endpoint -> the name of the sink that uses it
        for name, config in zip(sink_names(configs), configs):
            network = isinstance(config, (MqttSinkConfig, WebhookSinkConfig))
            retry = config.outbox.retry if isinstance(config, (MqttSinkConfig, WebhookSinkConfig)) else DEFAULT_RETRY
            guard = GuardedSink(name, self._factory(name, config, params), partial(accepts, config), retry=retry)
            self.sinks.append(guard)
            if network:
                self.outboxes[name] = guard
        self.evidence: EvidenceShared | None = None  # snapshots and clips (streamd/evidence/), a sink like the others
        self._evidence_guard: GuardedSink | None = None
        if params.evidence:
            self.evidence = EvidenceShared()
            root = Path(params.evidence_dir) if params.evidence_dir else state_dir(params) / "evidence"
            self._evidence_guard = GuardedSink("evidence", partial(EvidenceSink, root, params.evidence, self.evidence),
                                               evidence_accepts)
            self.sinks.append(self._evidence_guard)
        self.inbox = sockets.pull(self.ctx, self.spec.endpoints.sinks, hwm=10_000)
        self._json = msgspec.json.Encoder()
        self._latency_ms: dict[str, deque[float]] = {}
        self._latency_hist: dict[str, Histogram] = {}
        self._events: dict[str, int] = {}
        self._drained: set[str] = set()

    def _factory(self, name: str, config: SinkConfig, params: SinksParams) -> Callable[[], Sink]:
        """What (re)creates the sink; an exception from it leaves the sink down until the next retry."""
        if isinstance(config, JsonlSinkConfig):
            return partial(JsonlSink, config)
        if isinstance(config, ZmqSinkConfig):
            zmq_config = config

            def zmq_sink() -> Sink:
                # a second bind of an ipc:// endpoint would silently take it over from the first sink
                self._claim(f"endpoint {zmq_config.endpoint}", zmq_config.endpoint, name,
                            "give each zmq sink its own `endpoint:`")
                return ZmqPubSink(zmq_config, self.ctx)

            return zmq_sink

        def network_sink() -> Sink:
            path = outbox_path(config, params)
            self._claim(f"outbox file {path}", str(path.resolve()), name,
                        "give each mqtt/webhook sink its own `name:` or `outbox.path:`")
            if isinstance(config, MqttSinkConfig):
                return MqttSink(config, path)
            return WebhookSink(config, path)

        return network_sink

    def _claim(self, what: str, key: str, name: str, fix: str) -> None:
        """The first sink to open ``key`` owns it for the stage's life; another one stays down with this error."""
        owner = self._owners.setdefault(key, name)
        if owner != name:
            raise ValueError(f"{what} is already used by sink {owner!r}; {fix}")

    def counters(self) -> dict[str, StreamCounters]:
        out = {}
        for stream, window in self._latency_ms.items():
            values = np.fromiter(window, float, len(window))
            out[stream] = StreamCounters(
                latency_p50_ms=round(float(np.percentile(values, 50)), 2),
                latency_p99_ms=round(float(np.percentile(values, 99)), 2),
                events_written=self._events.get(stream, 0),
                drained=stream in self._drained or None,
                latency_hist=self._latency_hist[stream].snapshot() if stream in self._latency_hist else None,
            )
        for stream in self._drained - out.keys():
            out[stream] = StreamCounters(drained=True, events_written=self._events.get(stream, 0))
        for stream, numbers in (self.evidence.snapshot() if self.evidence else {}).items():
            out.setdefault(stream, StreamCounters()).evidence = numbers
        return out

    def heartbeat_extra(self) -> dict[str, Any]:
        outboxes: dict[str, OutboxCounters] = {name: guard.sink.counters() for name, guard in self.outboxes.items()
                                                if isinstance(guard.sink, OutboxSink)}  # a down sink has none
        extra: dict[str, Any] = {"outboxes": outboxes} if outboxes else {}
        if self.sinks:
            extra["sinks"] = {guard.name: guard.health() for guard in self.sinks}
        return extra

    def run(self) -> int:
        try:
            while True:
                got = self.inbox.poll(0 if self.stop.is_set() else 200, zmq.POLLIN)
                if not got:
                    if self.stop.is_set():
                        return EXIT_OK
                    self._maintain()
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
                self._maintain()
                self.beat()
        finally:
            self._close_sinks()

    def _maintain(self) -> None:
        """Re-open the sinks that are down and due for a retry."""
        for sink in self.sinks:
            sink.maintain()
        self._publish_evidence()

    def _publish_evidence(self) -> None:
        """Hand the evidence writer's records (files written for an event) to the other sinks."""
        records = self.evidence.take_records() if self.evidence else []
        others = [sink for sink in self.sinks if sink is not self._evidence_guard]
        for record in records:
            payload = self._json.encode(record)
            for sink in others:
                sink.write(record, payload)
        if records:
            for sink in others:
                sink.flush()

    def _close_sinks(self) -> None:
        """Close every sink; network sinks in parallel, as each may deliver for its shutdown grace time."""
        if self._evidence_guard is not None:  # first: what it finishes on close still reaches the other sinks
            self._evidence_guard.close()
            self._publish_evidence()
        closers = [threading.Thread(target=sink.close, name=f"close-{name}") for name, sink in self.outboxes.items()]
        for thread in closers:
            thread.start()
        for sink in self.sinks:
            if sink not in self.outboxes.values():
                sink.close()
        for thread in closers:
            while thread.is_alive():
                thread.join(0.5)
                self.beat()

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, StreamRemoved):  # a reload removed or restarted the stream: its numbers start over
            for table in (self._latency_ms, self._latency_hist, self._events):
                table.pop(msg.stream, None)
            self._drained.discard(msg.stream)
            return
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
            latency_ms = (time.monotonic_ns() - msg.t_decoded_ns) / 1e6
            self._latency_ms.setdefault(msg.stream, deque(maxlen=LATENCY_WINDOW)).append(latency_ms)
            self._latency_hist.setdefault(msg.stream, Histogram()).observe(latency_ms)
