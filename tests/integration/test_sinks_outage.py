"""End to end through the real daemon: the MQTT broker is stopped for 20 s and the webhook endpoint answers
500 for 20 s while a conveyor clip is analysed in real time. Every line crossing the daemon wrote to its
JSONL file must reach the MQTT subscriber and the HTTP endpoint exactly once (by id); retained counts end
at the final totals."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from streamd.demo import DEMO_SCENES, package_file
from streamd.synth import render_video
from tests.conftest import write_config
from tests.integration.mqtt_broker import MosquittoBroker, Subscriber, mosquitto  # noqa: F401 (fixture)
from tests.integration.webhook_server import WebhookServer, webhook_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
OUTAGE_S = 20.0
CLIP_S = 45.0


@pytest.fixture(scope="module")
def long_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    video = tmp_path_factory.mktemp("scene") / "conveyor-45s.mp4"
    render_video(replace(DEMO_SCENES[3], seconds=CLIP_S), video)
    return video


def test_broker_and_webhook_outages_lose_nothing_and_deliver_each_event_once(
        long_scene: Path, mosquitto: MosquittoBroker, webhook_server: WebhookServer, tmp_path: Path,
        daemon_factory) -> None:
    retry = {"initial_s": 0.5, "max_s": 2.0}
    config = write_config(tmp_path / "streamd.yaml", {
        "streams": [{"name": "belt", "url": str(long_scene), "pipeline": "conveyor", "realtime": True}],
        "pipelines": {"conveyor": {
            "model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35,
            "tracker": {"lost_track_s": 0.5},
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}],
        }},
        "sinks": [
            {"type": "jsonl", "path": str(tmp_path / "events.jsonl")},
            {"type": "mqtt", "port": mosquitto.port, "topic_prefix": "plant", "ack_timeout_s": 2,
             "outbox": {"retry": retry}},
            {"type": "webhook", "url": webhook_server.url, "secret": "${HOOK_SECRET}", "timeout_s": 2,
             "outbox": {"retry": retry}},
        ],
        "counts": {"path": str(tmp_path / "counts.db")},
        "supervisor": {"stats_interval_s": 1},
    })
    sub = Subscriber(mosquitto.port, "plant/#", client_id="outage-subscriber")
    daemon = daemon_factory(config, env={"HOOK_SECRET": "hmac-test-secret"})
    daemon.wait_for("stream_stats", timeout=90, stream="belt")
    time.sleep(2.0)
    mosquitto.stop()
    webhook_server.fail_for(OUTAGE_S)
    outage_started = time.time()
    time.sleep(OUTAGE_S)
    mosquitto.start()
    recovered_wall, recovered = time.time(), time.monotonic()
    assert daemon.wait(180) == 0, daemon.log_path.read_text()[-3000:]
    time.sleep(1.0)

    truth = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    crossings = [e for e in truth if e["type"] == "line_crossing"]
    expected = {e["id"] for e in crossings}
    during = {e["id"] for e in crossings if outage_started <= e["ts"] <= recovered_wall}
    assert len(expected) >= 20 and len(during) >= 5, f"scene produced {len(expected)} crossings, {len(during)} in the outage"

    mqtt_events = [(json.loads(m.payload)["id"], m.t) for m in sub.snapshot() if m.topic.startswith("plant/belt/events/")]
    mqtt_ids = [i for i, _ in mqtt_events]
    hooks = [d for d in webhook_server.snapshot() if d.event_type == "line_crossing"]
    hook_ids = [d.event_id for d in hooks]
    assert set(mqtt_ids) == expected, f"mqtt: missing {sorted(expected - set(mqtt_ids))[:5]}"
    assert set(hook_ids) == expected, f"webhook: missing {sorted(expected - set(hook_ids))[:5]}"
    assert all(d.signature_ok for d in webhook_server.snapshot())
    assert all(d.body["id"] == d.event_id for d in hooks)

    # retained totals: a subscriber that connects now gets the final count per class
    late = Subscriber(mosquitto.port, "plant/belt/counts/#", client_id="late", clean=True)
    time.sleep(1.0)
    retained = {m.topic: json.loads(m.payload)["total"] for m in late.snapshot() if m.retain}
    late.close()
    sub.close()
    final = Counter((e["class_name"], e["direction"]) for e in crossings)
    assert retained == {f"plant/belt/counts/exit/{cls}/{direction}": n for (cls, direction), n in final.items()}

    mqtt_lag = max(t for i, t in mqtt_events if i in during) - recovered
    hook_lag = max(d.t for d in hooks if d.event_id in during) - recovered
    summary = (f"outage {OUTAGE_S:.0f} s: events={len(expected)} (during outage {len(during)}); "
               f"mqtt raw={len(mqtt_ids)} duplicates={len(mqtt_ids) - len(set(mqtt_ids))} lost=0 "
               f"backlog delivered {mqtt_lag:.2f} s after broker restart; "
               f"webhook raw={len(hook_ids)} duplicates={len(hook_ids) - len(set(hook_ids))} lost=0 "
               f"failed_requests={webhook_server.failures} backlog delivered {hook_lag:.2f} s after recovery")
    print("\n" + summary)
    (tmp_path / "outage-summary.txt").write_text(summary + "\n")
    assert daemon.find("outbox_target_recovered", sink="mqtt") and daemon.find("outbox_target_recovered", sink="webhook")


def test_a_file_finishes_on_time_while_the_broker_is_down_and_the_next_run_delivers(
        mosquitto: MosquittoBroker, tmp_path: Path, daemon_factory) -> None:
    """Drained = accepted into the outbox: the daemon exits after the file although nothing was delivered;
    the next start sends the backlog first."""
    video = tmp_path / "conveyor.mp4"
    render_video(DEMO_SCENES[3], video)
    mosquitto.stop()
    config = write_config(tmp_path / "streamd.yaml", {
        "streams": [{"name": "belt", "url": str(video), "pipeline": "conveyor"}],
        "pipelines": {"conveyor": {
            "model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35,
            "tracker": {"lost_track_s": 0.5},
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}],
        }},
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "events.jsonl")},
                  {"type": "mqtt", "port": mosquitto.port, "topic_prefix": "plant",
                   "outbox": {"retry": {"initial_s": 0.5, "max_s": 1}, "shutdown_grace_s": 1}}],
        "counts": {"path": str(tmp_path / "counts.db")},
    })
    first = daemon_factory(config)
    assert first.wait(120) == 0, first.log_path.read_text()[-3000:]
    ids = [json.loads(line)["id"] for line in (tmp_path / "events.jsonl").read_text().splitlines()
           if '"line_crossing"' in line]
    assert len(ids) >= 10
    left = first.find("outbox_left_for_next_start", sink="mqtt")
    assert left and left[-1]["depth"] == 2 * len(ids)  # each crossing and its count_update
    assert list(tmp_path.rglob("outbox-mqtt.db")), "no outbox file in the state directory"

    mosquitto.start()
    sub = Subscriber(mosquitto.port, "plant/belt/events/#", client_id="next-run-subscriber")
    second = daemon_factory(config)
    second.wait_for("outbox_resumed", timeout=60, sink="mqtt")
    assert second.wait(120) == 0, second.log_path.read_text()[-3000:]
    time.sleep(1.0)
    got = [json.loads(m.payload)["id"] for m in sub.snapshot()]
    sub.close()
    assert set(ids) <= set(got), f"first run's events missing: {sorted(set(ids) - set(got))[:5]}"
    assert all(got.count(i) == 1 for i in ids), "a first-run event arrived twice"
