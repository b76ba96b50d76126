"""MQTT sink against a real mosquitto: topics, retained counts, availability and last will, credentials,
and a broker outage during which every event is kept and afterwards delivered exactly once by id."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from streamd.config.loader import load_config
from streamd.config.models import BackoffConfig, MqttSinkConfig, OutboxConfig
from streamd.ipc.messages import CountUpdate
from streamd.sinks.mqtt import MqttSink
from tests.conftest import write_config
from tests.integration.mqtt_broker import MosquittoBroker, Subscriber, mosquitto  # noqa: F401 (fixture)
from tests.sink_helpers import crossing, wait_until

pytestmark = pytest.mark.integration



def payload(message: object) -> bytes:
    import msgspec
    return msgspec.json.encode(message)


def sink_config(port: int, tmp_path: Path, **overrides: object) -> MqttSinkConfig:
    base: dict[str, object] = {
        "type": "mqtt", "port": port, "topic_prefix": "test/streamd", "ack_timeout_s": 2.0,
        "outbox": OutboxConfig(path=str(tmp_path / "outbox.db"), retry=BackoffConfig(initial_s=0.2, max_s=1.0),
                               shutdown_grace_s=2.0),
    }
    base.update(overrides)
    return MqttSinkConfig(**base)  # type: ignore[arg-type]



def test_topics_retained_counts_and_availability(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto.port, "test/streamd/#", client_id="sub-a", clean=True)
    sink = MqttSink(sink_config(mosquitto.port, tmp_path), tmp_path / "outbox.db")
    events = [crossing(i) for i in range(3)]
    for i, event in enumerate(events):
        sink.write(event, payload(event))
        update = CountUpdate(stream="cam", line="exit", class_name="box", direction="in", total=i + 1, ts=event.ts)
        sink.write(update, payload(update))
    sink.flush()
    wait_until(lambda: sink.counters().depth == 0 and sink.counters().delivered == 6, what="delivery")
    wait_until(lambda: len([m for m in sub.snapshot() if "/events/" in m.topic]) == 3, what="events at subscriber")
    got = sub.snapshot()
    assert [json.loads(m.payload)["id"] for m in got if m.topic == "test/streamd/cam/events/line_crossing"] == \
        [e.id for e in events]
    assert [json.loads(m.payload)["total"] for m in got if m.topic == "test/streamd/cam/counts/exit/box/in"] == [1, 2, 3]
    assert any(m.topic == "test/streamd/status" and m.payload == b"online" for m in got)

    late = Subscriber(mosquitto.port, "test/streamd/#", client_id="sub-b", clean=True)  # joins afterwards
    wait_until(lambda: len(late.snapshot()) >= 2, what="retained messages")
    retained = {m.topic: m.payload for m in late.snapshot() if m.retain}
    assert json.loads(retained["test/streamd/cam/counts/exit/box/in"])["total"] == 3
    assert retained["test/streamd/status"] == b"online"
    assert not any("/events/" in m.topic for m in late.snapshot()), "events must not be retained"

    sink.close()
    wait_until(lambda: any(m.topic == "test/streamd/status" and m.payload == b"offline" for m in sub.snapshot()),
               what="status offline on close")
    sub.close()
    late.close()


def test_last_will_reports_offline_when_the_process_dies(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto.port, "test/streamd/status", client_id="sub-will", clean=True)
    config = sink_config(mosquitto.port, tmp_path)
    script = (
        "import os, time\n"
        "from streamd.config.models import MqttSinkConfig\n"
        "from streamd.sinks.mqtt import MqttSink\n"
        f"sink = MqttSink(MqttSinkConfig.model_validate_json({config.model_dump_json()!r}), {str(tmp_path / 'o.db')!r})\n"
        "deadline = time.monotonic() + 10\n"
        "while not sink.deliverer.connected and time.monotonic() < deadline: time.sleep(0.05)\n"
        "print('connected', flush=True)\n"
        "os._exit(9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "connected" in done.stdout, done.stderr
    wait_until(lambda: [m.payload for m in sub.snapshot()][-1:] == [b"offline"], what="last will")
    assert b"online" in [m.payload for m in sub.snapshot()]
    sub.close()


def test_credentials_from_env_are_used_and_never_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.mqtt_broker import MOSQUITTO
    from tests.conftest import require
    require(Path(MOSQUITTO).is_file(), "mosquitto not installed (apt-get install mosquitto)")
    secret = "s3cr3t-Pa55!word"
    broker = MosquittoBroker(tmp_path / "broker", users={"streamd": secret})
    broker.start()
    try:
        clip = tmp_path / "clip.mp4"
        clip.touch()
        config_path = write_config(tmp_path / "streamd.yaml", {
            "streams": [{"name": "cam", "url": str(clip), "pipeline": "p"}],
            "pipelines": {"p": {"model": "m.onnx"}},
            "sinks": [{"type": "mqtt", "port": broker.port, "username": "streamd", "password": "${MQTT_PASSWORD}",
                       "topic_prefix": "test/streamd", "outbox": {"path": str(tmp_path / "ok.db")}},
                      {"type": "mqtt", "name": "wrong", "port": broker.port, "username": "streamd",
                       "password": "not-the-password", "topic_prefix": "test/streamd",
                       "outbox": {"path": str(tmp_path / "wrong.db"), "retry": {"initial_s": 0.2, "max_s": 1}}}],
        })
        config = load_config(config_path, env={"MQTT_PASSWORD": secret}).config
        good, bad = config.sinks
        assert secret not in repr(config) and secret not in config.model_dump_json()
        sub = Subscriber(broker.port, "test/streamd/#", client_id="sub-auth", clean=True, auth=("streamd", secret))
        with capture_logs() as logs:
            ok_sink = MqttSink(good, Path(good.outbox.path))  # type: ignore[union-attr, arg-type]
            bad_sink = MqttSink(bad, Path(bad.outbox.path))  # type: ignore[union-attr, arg-type]
            for sink in (ok_sink, bad_sink):
                sink.write(crossing(1), payload(crossing(1)))
                sink.flush()
            wait_until(lambda: ok_sink.counters().delivered == 1, what="delivery with the right password")
            wait_until(lambda: bad_sink.counters().retries >= 2, what="retries with a wrong password")
            assert bad_sink.counters().depth == 1 and bad_sink.counters().delivered == 0
            ok_sink.close()
            bad_sink.close()
        assert any(e["event"] == "mqtt_unreachable" and e.get("sink") == "wrong" for e in logs)
        assert secret not in repr(logs) and "not-the-password" not in repr(logs)
        wait_until(lambda: any("/events/" in m.topic for m in sub.snapshot()), what="event at subscriber")
        sub.close()
    finally:
        broker.stop()


def test_broker_outage_loses_nothing_and_each_event_arrives_once_by_id(mosquitto: MosquittoBroker,
                                                                       tmp_path: Path) -> None:
    """Events are produced steadily (20/s) while the broker is stopped for 5 s and started again."""
    sub = Subscriber(mosquitto.port, "test/streamd/cam/events/#")
    sink = MqttSink(sink_config(mosquitto.port, tmp_path), tmp_path / "outbox.db")
    produced: list[str] = []
    done = threading.Event()

    def produce() -> None:
        i = 0
        while not done.is_set():
            event = crossing(i)
            sink.write(event, payload(event))
            sink.flush()
            produced.append(event.id)
            i += 1
            time.sleep(0.05)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(2.0)
    mosquitto.stop()
    time.sleep(5.0)
    during = len(produced)
    mosquitto.start()
    restarted = time.monotonic()
    time.sleep(2.0)
    done.set()
    producer.join()
    wait_until(lambda: sink.counters().depth == 0, timeout=30, what="outbox empty")
    expected = set(produced)
    wait_until(lambda: {json.loads(m.payload)["id"] for m in sub.snapshot()} >= expected, timeout=15,
               what="every event at the subscriber")
    sink.close()
    got = [json.loads(m.payload)["id"] for m in sub.snapshot()]
    sub.close()
    counters = sink.counters()
    assert set(got) == expected
    duplicates = len(got) - len(set(got))
    backlog = [m.t for m in sub.snapshot() if json.loads(m.payload)["id"] in set(produced[:during])]
    lag = max(backlog) - restarted
    print(f"\nmqtt outage 5 s: events={len(expected)} raw_duplicates={duplicates} lost=0 "
          f"retries={counters.retries} backlog_delivered_s_after_restart={lag:.2f}")
    assert counters.retries >= 1 and counters.delivered == len(expected)
    assert duplicates <= counters.retries * sink.config.outbox.batch  # at most one re-send per failed round


def test_events_queued_while_the_broker_is_down_are_sent_by_the_next_process(mosquitto: MosquittoBroker,
                                                                             tmp_path: Path) -> None:
    """The sinks process stops (restart, reload, daemon exit) during an outage: the next one delivers."""
    sub = Subscriber(mosquitto.port, "test/streamd/cam/events/#", client_id="sub-restart")
    mosquitto.stop()
    first = MqttSink(sink_config(mosquitto.port, tmp_path), tmp_path / "outbox.db")
    events = [crossing(i) for i in range(5)]
    for event in events:
        first.write(event, payload(event))
    first.flush()
    wait_until(lambda: first.counters().retries >= 1, what="a failed round")
    first.close()
    assert first.counters().depth == 5 and first.counters().delivered == 0
    mosquitto.start()
    second = MqttSink(sink_config(mosquitto.port, tmp_path), tmp_path / "outbox.db")
    assert second.counters().depth == 5
    wait_until(lambda: second.counters().depth == 0, what="backlog sent by the second process")
    wait_until(lambda: len(sub.snapshot()) >= 5, what="events at the subscriber")
    second.close()
    assert [json.loads(m.payload)["id"] for m in sub.snapshot()] == [e.id for e in events]
    sub.close()
