"""Webhook sink: one HTTP POST with a JSON body per event (urllib3), through a durable outbox.

Headers of every request (see docs/events.md):

- ``Content-Type: application/json``;
- ``X-Streamd-Event-Id``: the stable id to dedupe by (also inside the body for line_crossing/zone_event);
- ``X-Streamd-Event-Type``: line_crossing, zone_event, count_update or tracks;
- ``X-Streamd-Signature: sha256=<hex>``: HMAC-SHA256 of the exact body bytes with ``secret``, when set;
- ``Authorization: Bearer <token>`` when ``bearer_token`` is set.

A 2xx answer acknowledges the event. 400, 413, 415 and 422 mean the endpoint will never take this body:
the event is removed, counted as rejected and logged. Anything else (5xx, 401/403/404, 408, 429,
timeouts, refused connections) keeps the event and retries with backoff, in order.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Sequence
from pathlib import Path

import urllib3

from streamd import __version__
from streamd.config.models import WebhookSinkConfig
from streamd.redact import redact
from streamd.sinks.base import SinkMessage, type_of
from streamd.sinks.outbox import DeliveryResult, Outbox, OutboxRow, OutboxSink

PERMANENT_STATUS = frozenset({400, 413, 415, 422})


def signature(secret: bytes, body: bytes) -> str:
    """Value of X-Streamd-Signature: ``sha256=`` + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookDeliverer:
    def __init__(self, config: WebhookSinkConfig):
        self.config = config
        self._secret = config.secret.get_secret_value().encode() if config.secret is not None else None
        self._headers = {"Content-Type": "application/json", "User-Agent": f"streamd/{__version__}"}
        if config.bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {config.bearer_token.get_secret_value()}"
        self._http = urllib3.PoolManager(
            num_pools=1, maxsize=1, retries=False,  # the outbox retries, with backoff and in order
            timeout=urllib3.Timeout(connect=config.timeout_s, read=config.timeout_s),
            cert_reqs="CERT_REQUIRED" if config.verify_tls else "CERT_NONE",
        )

    def headers_for(self, row: OutboxRow) -> dict[str, str]:
        headers = {**self._headers, "X-Streamd-Event-Id": row.event_id, "X-Streamd-Event-Type": row.topic}
        if self._secret is not None:
            headers["X-Streamd-Signature"] = signature(self._secret, row.payload)
        return headers

    def deliver(self, rows: Sequence[OutboxRow], stop: threading.Event) -> DeliveryResult:
        result = DeliveryResult()
        for row in rows:
            if stop.is_set():
                result.error = "stopping"
                break
            try:
                response = self._http.request("POST", self.config.url, body=row.payload, headers=self.headers_for(row),
                                              redirect=False, preload_content=True)
            except urllib3.exceptions.HTTPError as exc:
                result.error = redact(f"{type(exc).__name__}: {exc}")[:300]
                break
            status = response.status
            if 200 <= status < 300:
                result.acked.append(row.seq)
            elif status in PERMANENT_STATUS:
                result.rejected.append(row.seq)
                result.error = f"HTTP {status}: {response.data[:200].decode(errors='replace')}"
            else:
                result.error = f"HTTP {status}"
                break
        return result

    def close(self) -> None:
        self._http.clear()


class WebhookSink(OutboxSink):
    """Sink protocol around an outbox whose deliverer POSTs to one URL."""

    def __init__(self, config: WebhookSinkConfig, outbox_path: Path):
        deliverer = WebhookDeliverer(config)
        try:
            outbox = Outbox(config.name, outbox_path, config.outbox, deliverer)
        except BaseException:
            deliverer.close()
            raise
        super().__init__(config, outbox)
        self.outbox.start()

    def route(self, message: SinkMessage) -> tuple[str, bool]:
        return type_of(message), False
