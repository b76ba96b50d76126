"""MQTT sink (paho-mqtt 2.x): events at QoS 1 through a durable outbox, retained counts, availability.

Topics (``<p>`` = ``topic_prefix``, see docs/events.md):

- ``<p>/<stream>/events/<type>``: line_crossing and zone_event JSON, QoS 1, not retained;
- ``<p>/<stream>/counts/<line or zone>/<class>/<direction>``: count_update JSON, QoS 1, retained
  (a new subscriber gets every current total at once);
- ``<p>/<stream>/tracks``: tracks JSON, only with ``include_tracks``;
- ``<p>/status``: ``online`` / ``offline``, retained; ``offline`` is also the last will, published by the
  broker when the daemon vanishes without a clean disconnect.

A row leaves the outbox only after its PUBACK. paho keeps an unacknowledged QoS 1 message and re-sends
it (DUP) after a reconnect, so the deliverer remembers what it already handed to paho and never
publishes the same row twice on one connection object; a consumer may still see a duplicate after an
outage (a PUBACK lost with the connection), which the event id in the payload lets it drop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from streamd.config.models import MqttSinkConfig
from streamd.ipc.messages import CountUpdate, TrackedFrame
from streamd.sinks.base import SinkMessage, type_of
from streamd.sinks.outbox import DeliveryResult, Outbox, OutboxRow, OutboxSink

_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})
ONLINE, OFFLINE = b"online", b"offline"


def topic_level(value: str) -> str:
    """One topic level from free text (class names may hold '/', '+' or '#')."""
    return value.translate(_TOPIC_UNSAFE) or "_"


def default_client_id(config: MqttSinkConfig) -> str:
    return config.client_id or f"streamd-{socket.gethostname()}-{config.name}"[:128]


class MqttDeliverer:
    """One paho client, its network thread (paho's own reconnect loop) and the PUBACK bookkeeping."""

    def __init__(self, config: MqttSinkConfig):
        self.config = config
        self.status_topic = f"{config.topic_prefix}/status"
        self.log = structlog.get_logger().bind(sink=config.name, broker=f"{config.host}:{config.port}")
        self.on_ready: list = []  # callables run (on paho's thread) after each successful connect
        self._connected = threading.Event()
        self._ever_connected = False
        self._inflight: dict[int, mqtt.MQTTMessageInfo] = {}  # outbox seq -> handed to paho, PUBACK pending
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=default_client_id(config), clean_session=True,
                             protocol=mqtt.MQTTv311)
        if config.username is not None:
            client.username_pw_set(config.username,
                                   config.password.get_secret_value() if config.password is not None else None)
        if config.tls:
            client.tls_set(ca_certs=config.ca_file)
        client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        retry = config.outbox.retry
        client.reconnect_delay_set(min_delay=max(1, int(retry.initial_s)), max_delay=max(1, int(round(retry.max_s))))
        client.max_inflight_messages_set(config.outbox.batch)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self.client = client
        self._down_logged = False
        client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        client.loop_start()

    # paho callbacks: run on paho's network thread
    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode,
                    _props: object = None) -> None:
        if reason.is_failure:
            self._log_down(f"connection refused: {reason}")
            return
        client.publish(self.status_topic, ONLINE, qos=1, retain=True)
        self._connected.set()
        self._down_logged = False
        self.log.info("mqtt_connected", client_id=default_client_id(self.config),
                      reconnect=self._ever_connected)
        self._ever_connected = True
        for callback in self.on_ready:
            callback()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode,
                       _props: object = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            self.log.warning("mqtt_disconnected", reason=str(reason), action="reconnecting; events wait in the outbox")

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        self._log_down("cannot connect")

    def _log_down(self, error: str) -> None:
        if not self._down_logged:  # once per outage; the outbox logs the ongoing failure with its backlog
            self.log.warning("mqtt_unreachable", error=error, action="retrying with backoff")
            self._down_logged = True

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def deliver(self, rows: Sequence[OutboxRow], stop: threading.Event) -> DeliveryResult:
        if not self._connected.wait(0.5):
            return DeliveryResult(error=f"not connected to {self.config.host}:{self.config.port}")
        for row in rows:
            if row.seq not in self._inflight:
                self._inflight[row.seq] = self.client.publish(row.topic, row.payload, qos=1, retain=row.retain)
        deadline = time.monotonic() + self.config.ack_timeout_s
        waiting = list(rows)
        while waiting and not stop.is_set() and time.monotonic() < deadline:
            info = self._inflight[waiting[0].seq]
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS or _published(info):
                waiting.pop(0)
                continue
            try:
                info.wait_for_publish(0.05)
            except (RuntimeError, ValueError):
                pass  # rc turned into an error meanwhile: handled below
        result = DeliveryResult()
        for row in rows:
            info = self._inflight[row.seq]
            if _published(info):
                result.acked.append(row.seq)
                del self._inflight[row.seq]
            elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # paho did not take it (race with a disconnect): publish it again next round
                del self._inflight[row.seq]
        if len(result.acked) < len(rows):
            state = "connected" if self.connected else "disconnected"
            result.error = f"no PUBACK for {len(rows) - len(result.acked)} of {len(rows)} within " \
                           f"{self.config.ack_timeout_s:g} s ({state})"
        return result

    def close(self) -> None:
        if self._connected.is_set():
            info = self.client.publish(self.status_topic, OFFLINE, qos=1, retain=True)
            deadline = time.monotonic() + 2.0
            while not _published(info) and time.monotonic() < deadline and self._connected.is_set():
                time.sleep(0.01)
        self.client.disconnect()
        self.client.loop_stop()


def _published(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # paho refused the message (rc set): not published
        return False


class MqttSink(OutboxSink):
    """Sink protocol around an outbox whose deliverer is one MQTT client."""

    def __init__(self, config: MqttSinkConfig, outbox_path: Path):
        self.prefix = config.topic_prefix
        self.deliverer = MqttDeliverer(config)
        try:
            outbox = Outbox(config.name, outbox_path, config.outbox, self.deliverer)
        except BaseException:
            self.deliverer.close()  # its network thread runs already: a sink that failed to open holds nothing
            raise
        super().__init__(config, outbox)
        self.deliverer.on_ready.append(self.outbox.target_ready)
        self.outbox.start()

    def topic_of(self, message: SinkMessage) -> str:
        if isinstance(message, CountUpdate):
            return (f"{self.prefix}/{message.stream}/counts/{topic_level(message.line)}/"
                    f"{topic_level(message.class_name)}/{topic_level(message.direction)}")
        if isinstance(message, TrackedFrame):
            return f"{self.prefix}/{message.stream}/tracks"
        return f"{self.prefix}/{message.stream}/events/{type_of(message)}"

    def route(self, message: SinkMessage) -> tuple[str, bool]:
        return self.topic_of(message), isinstance(message, CountUpdate)  # counts are retained
