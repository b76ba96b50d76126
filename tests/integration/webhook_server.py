"""A real HTTP endpoint on loopback for webhook tests (stdlib http.server in a thread).

It can answer 500 for a while (an outage), checks the HMAC signature of every request it accepts and
records what arrived, duplicates included.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass(frozen=True)
class Delivery:
    event_id: str
    event_type: str
    body: dict
    signature_ok: bool | None  # None: no secret configured on the server
    authorization: str | None
    t: float


class WebhookServer:
    def __init__(self, secret: bytes | None = None):
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self.failures = 0  # requests answered with 500
        self.fail_until = 0.0  # time.monotonic() until which every request gets 500
        self.reject_ids: set[str] = set()  # answered 422
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                event_id = self.headers.get("X-Streamd-Event-Id", "")
                if time.monotonic() < server.fail_until:
                    with server._lock:
                        server.failures += 1
                    self._answer(500, b"down for maintenance")
                    return
                if event_id in server.reject_ids:
                    self._answer(422, b"unprocessable")
                    return
                ok = None
                if server.secret is not None:
                    expected = "sha256=" + hmac.new(server.secret, body, hashlib.sha256).hexdigest()
                    ok = hmac.compare_digest(expected, self.headers.get("X-Streamd-Signature", ""))
                with server._lock:
                    server.deliveries.append(Delivery(event_id, self.headers.get("X-Streamd-Event-Type", ""),
                                                      json.loads(body), ok, self.headers.get("Authorization"),
                                                      time.monotonic()))
                self._answer(200 if ok is not False else 401, b"ok")

            def _answer(self, status: int, text: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def fail_for(self, seconds: float) -> None:
        self.fail_until = time.monotonic() + seconds

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    server = WebhookServer(secret=b"hmac-test-secret")
    yield server
    server.close()
