"""Webhook sink against a real HTTP server on loopback: headers, HMAC, bearer token, 500s for a while
(every event later delivered exactly once by id), permanent refusals, and a refused connection."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from streamd.config.models import BackoffConfig, OutboxConfig, WebhookSinkConfig
from streamd.ipc.messages import CountUpdate
from streamd.sinks.webhook import WebhookSink, signature
from tests.integration.mqtt_broker import free_port
from tests.integration.webhook_server import WebhookServer, webhook_server  # noqa: F401 (fixture)
from tests.sink_helpers import crossing, wait_until

pytestmark = pytest.mark.integration
SECRET = "hmac-test-secret"



def sink_config(url: str, tmp_path: Path, **overrides: object) -> WebhookSinkConfig:
    base: dict[str, object] = {
        "type": "webhook", "url": url, "secret": SECRET, "timeout_s": 2.0,
        "outbox": OutboxConfig(path=str(tmp_path / "outbox.db"), retry=BackoffConfig(initial_s=0.2, max_s=1.0)),
    }
    base.update(overrides)
    return WebhookSinkConfig(**base)  # type: ignore[arg-type]



def test_headers_signature_and_bearer_token(webhook_server: WebhookServer, tmp_path: Path) -> None:
    sink = WebhookSink(sink_config(webhook_server.url, tmp_path, bearer_token="tok-123"), tmp_path / "o.db")
    event = crossing(7)
    update = CountUpdate(stream="cam", line="exit", class_name="box", direction="in", total=7, ts=event.ts)
    sink.write(event, msgspec.json.encode(event))
    sink.write(update, msgspec.json.encode(update))
    sink.flush()
    wait_until(lambda: len(webhook_server.snapshot()) == 2, what="two deliveries")
    sink.close()
    first, second = webhook_server.snapshot()
    assert (first.event_id, first.event_type, first.body["id"]) == (event.id, "line_crossing", event.id)
    assert (second.event_id, second.event_type, second.body["total"]) == ("cam/count/exit/box/in/7", "count_update", 7)
    assert first.signature_ok and second.signature_ok
    assert first.authorization == "Bearer tok-123"
    # the published HMAC-SHA256 test vector (key "key"), so receivers in any language can check their code
    assert signature(b"key", b"The quick brown fox jumps over the lazy dog") == \
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


def test_500s_for_a_while_lose_nothing_and_each_event_arrives_once(webhook_server: WebhookServer,
                                                                  tmp_path: Path) -> None:
    """Events flow at 20/s; the endpoint answers 500 for 5 s in the middle."""
    sink = WebhookSink(sink_config(webhook_server.url, tmp_path), tmp_path / "o.db")
    produced: list[str] = []
    done = threading.Event()

    def produce() -> None:
        i = 0
        while not done.is_set():
            event = crossing(i)
            sink.write(event, msgspec.json.encode(event))
            sink.flush()
            produced.append(event.id)
            i += 1
            time.sleep(0.05)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(2.0)
    webhook_server.fail_for(5.0)
    time.sleep(5.0)
    recovered = time.monotonic()
    during = list(produced)
    time.sleep(2.0)
    done.set()
    producer.join()
    wait_until(lambda: sink.counters().depth == 0, timeout=30, what="outbox empty")
    sink.close()
    got = webhook_server.snapshot()
    ids = [d.event_id for d in got]
    assert set(ids) == set(produced) and len(ids) == len(produced), "lost or duplicated events"
    assert all(d.signature_ok for d in got)
    assert ids == produced, "delivery order changed"
    lag = max(d.t for d in got if d.event_id in set(during)) - recovered
    counters = sink.counters()
    print(f"\nwebhook 500s for 5 s: events={len(produced)} raw_duplicates={len(ids) - len(set(ids))} lost=0 "
          f"failed_requests={webhook_server.failures} retries={counters.retries} "
          f"backlog_delivered_s_after_recovery={lag:.2f}")
    assert webhook_server.failures >= 1 and counters.retries >= 1


def test_a_permanently_refused_event_is_dropped_logged_and_the_rest_flows(webhook_server: WebhookServer,
                                                                         tmp_path: Path) -> None:
    events = [crossing(i) for i in range(3)]
    webhook_server.reject_ids = {events[1].id}
    sink = WebhookSink(sink_config(webhook_server.url, tmp_path), tmp_path / "o.db")
    with capture_logs() as logs:
        for event in events:
            sink.write(event, msgspec.json.encode(event))
        sink.flush()
        wait_until(lambda: sink.counters().depth == 0, what="outbox empty")
        sink.close()
    assert [d.event_id for d in webhook_server.snapshot()] == [events[0].id, events[2].id]
    assert sink.counters().rejected == 1
    assert any(e["event"] == "outbox_events_rejected" and "HTTP 422" in e["error"] for e in logs)


def test_refused_connection_keeps_events_until_the_endpoint_exists(tmp_path: Path) -> None:
    port = free_port()
    sink = WebhookSink(sink_config(f"http://127.0.0.1:{port}/hook", tmp_path), tmp_path / "o.db")
    sink.write(crossing(1), msgspec.json.encode(crossing(1)))
    sink.flush()
    wait_until(lambda: sink.counters().retries >= 2, what="retries")
    c = sink.counters()
    assert c.depth == 1 and c.target_up is False and "Connection" in (c.last_error or "")
    assert SECRET not in (c.last_error or "")
    sink.close()
