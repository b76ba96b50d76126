"""streamd.api.server access rules: where ?token= is accepted, cross-site refusal of state-changing requests,
the loopback Host check, and what /api/config and /api/streams hide."""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from streamd.api.server import build_app, cross_site_reason, is_loopback_host, is_secret_key, redacted_config
from streamd.config.models import DaemonConfig

TOKEN = "unit-test-token-0123456789"
SECRET = "S3cr-Et"


class FakeView:
    """What build_app needs from the daemon: a config, a snapshot and request_reload."""

    def __init__(self, config: DaemonConfig, snapshot: dict[str, Any] | None = None):
        self.config = config
        self.reloads: list[str] = []
        self._reload: dict[str, Any] = {"at": None}
        self._snapshot = snapshot

    @property
    def snapshot(self) -> dict[str, Any]:
        if self._snapshot is not None:
            return self._snapshot
        return {"t": time.time(), "ready": True, "streams": {}, "stages": {}, "reload": self._reload,
                "counters": {}, "heartbeats": {}}

    def request_reload(self, reason: str = "signal") -> None:
        self.reloads.append(reason)
        self._reload = {"at": time.time(), "reason": reason, "ok": True}


def make_config(host: str = "127.0.0.1", token: str | None = None, **extra: Any) -> DaemonConfig:
    api: dict[str, Any] = {"host": host, "port": 0}
    if token:
        api["token"] = token
    return DaemonConfig.model_validate({
        "streams": [{"name": "cam", "url": "/srv/cam.mp4", "pipeline": "p"}],
        "pipelines": {"p": {"model": "m.onnx"}},
        "api": api, **extra,
    })


def client(config: DaemonConfig, base_url: str = "http://127.0.0.1:8080") -> tuple[TestClient, FakeView]:
    view = FakeView(config)
    app = build_app(view, hub=None, token=config.api.token)  # type: ignore[arg-type]  # no preview hub needed
    return TestClient(app, base_url=base_url), view


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("method", "path", "how", "status"),
    [
        # the header works everywhere
        ("GET", "/api/streams", "header", 200),
        ("GET", "/api/config", "header", 200),
        ("GET", "/metrics", "header", 200),
        ("GET", "/", "header", 200),
        ("GET", "/preview/nope.jpg", "header", 404),  # 404: past auth, no such stream
        ("POST", "/api/reload", "header", 200),
        # ?token= only for GET of the page and the preview images
        ("GET", "/", "query", 200),
        ("GET", "/preview/nope.jpg", "query", 404),
        ("GET", "/preview/nope.mjpg", "query", 404),
        ("GET", "/api/streams", "query", 401),
        ("GET", "/api/config", "query", 401),
        ("GET", "/api/counts", "query", 401),
        ("GET", "/metrics", "query", 401),
        ("POST", "/api/reload", "query", 401),
        ("HEAD", "/preview/nope.jpg", "query", 401),
        ("GET", "/preview/a/b.jpg", "query", 401),
        ("GET", "/preview/nope.png", "query", 401),
        # nothing, or a wrong token
        ("GET", "/api/streams", "none", 401),
        ("GET", "/preview/nope.jpg", "none", 401),
        ("GET", "/", "none", 401),
        ("POST", "/api/reload", "none", 401),
        ("GET", "/api/streams", "wrong-header", 401),
        ("GET", "/preview/nope.jpg", "wrong-query", 401),
        # health checks stay open
        ("GET", "/healthz", "none", 200),
        ("GET", "/readyz", "none", 200),
    ],
)
def test_where_the_token_is_accepted(method: str, path: str, how: str, status: int) -> None:
    http, view = client(make_config(host="0.0.0.0", token=TOKEN))
    headers, params = {}, {}
    if how == "header":
        headers = BEARER
    elif how == "query":
        params = {"token": TOKEN}
    elif how == "wrong-header":
        headers = {"Authorization": "Bearer not-the-token-0123456789"}
    elif how == "wrong-query":
        params = {"token": "not-the-token-0123456789"}
    response = http.request(method, path, headers=headers, params=params)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in response.text
    if how == "query" and method == "POST":
        assert view.reloads == []


def test_query_token_refusal_says_where_the_token_goes() -> None:
    http, _ = client(make_config(host="0.0.0.0", token=TOKEN))
    response = http.get("/api/config", params={"token": TOKEN})
    assert response.status_code == 401 and "Authorization: Bearer" in response.json()["error"]


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, True),  # curl, scripts: no Origin, no Sec-Fetch-Site
        ({"Origin": "http://127.0.0.1:8080"}, True),
        ({"Origin": "http://127.0.0.1:8080", "Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "none"}, True),  # typed by the user
        ({"Origin": "https://evil.example"}, False),
        ({"Origin": "http://127.0.0.1:9999"}, False),  # another port is another origin
        ({"Origin": "https://127.0.0.1:8080"}, False),  # and another scheme
        ({"Origin": "null"}, False),  # sandboxed frames, file:// pages
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),  # another port of this host
        ({"Origin": "http://127.0.0.1:8080", "Sec-Fetch-Site": "cross-site"}, False),
    ],
)
def test_state_changing_requests_refuse_other_sites(headers: dict[str, str], allowed: bool,
                                                     token: str | None) -> None:
    http, view = client(make_config(token=token))
    auth = BEARER if token else {}
    response = http.post("/api/reload", headers={**auth, **headers})
    if allowed:
        assert response.status_code == 200, response.text
        assert view.reloads == ["api"]
    else:
        assert response.status_code == 403 and "cross-site" in response.json()["error"], response.text
        assert view.reloads == []


def test_reads_are_not_refused_for_their_origin() -> None:
    http, _ = client(make_config())
    assert http.get("/api/streams", headers={"Origin": "https://evil.example",
                                             "Sec-Fetch-Site": "cross-site"}).status_code == 200


@pytest.mark.parametrize(
    ("base_url", "status"),
    [("http://127.0.0.1:8080", 200), ("http://localhost:8080", 200), ("http://[::1]:8080", 200),
     ("http://127.0.0.2:8080", 200), ("http://rebound.evil.example:8080", 403), ("http://10.0.0.5:8080", 403)],
)
def test_loopback_without_token_checks_the_host_header(base_url: str, status: int) -> None:
    """A DNS-rebinding page (evil name -> 127.0.0.1) is same-origin with itself; its Host header gives it away."""
    http, view = client(make_config(), base_url=base_url)
    assert http.get("/api/streams").status_code == status
    assert http.post("/api/reload").status_code == status
    assert http.get("/healthz").status_code == 200
    assert view.reloads == (["api"] if status == 200 else [])


def test_with_a_token_any_host_name_works() -> None:
    http, _ = client(make_config(host="0.0.0.0", token=TOKEN), base_url="http://camera-box.lan:8080")
    assert http.get("/api/streams", headers=BEARER).status_code == 200


def test_helpers() -> None:
    assert is_loopback_host("localhost") and is_loopback_host("127.0.0.1") and is_loopback_host("::1")
    assert not is_loopback_host("example.com") and not is_loopback_host("")
    assert cross_site_reason("GET", {"origin": "https://evil.example"}, "http") is None
    assert cross_site_reason("DELETE", {"origin": "https://evil.example", "host": "h"}, "http")
    assert cross_site_reason("POST", {"origin": "http://h", "host": "h:80"}, "http") is None  # default port
    for key in ("password", "bearer_token", "secret", "api_key", "signature", "token", "MQTT_PASSWORD", "passwd"):
        assert is_secret_key(key), key
    for key in ("name", "url", "username", "keep_files", "keepalive_s", "path", "pipeline"):
        assert not is_secret_key(key), key


def secret_config() -> DaemonConfig:
    return make_config(
        host="0.0.0.0", token=f"{SECRET}-api-token-0123",
        sinks=[{"type": "webhook", "name": "hook", "url": "https://hooks.example/in",
                "secret": SECRET, "bearer_token": SECRET},
               {"type": "mqtt", "username": "streamd", "password": SECRET}],
        streams=[{"name": "cam", "url": "/srv/cam.mp4", "pipeline": "p",
                  "options": {"password": SECRET, "rtsp_transport": "tcp", "api_key": "12345"}}],
    )


def test_redacted_config_hides_secret_fields_whatever_their_value() -> None:
    data = redacted_config(secret_config())
    hook, mqtt = data["sinks"]
    assert hook["secret"] == hook["bearer_token"] == "***" and mqtt["password"] == "***"
    assert data["api"]["token"] == "***"
    assert data["streams"][0]["options"] == {"password": "***", "rtsp_transport": "tcp", "api_key": "***"}
    assert mqtt["username"] == "streamd" and hook["url"] == "https://hooks.example/in"
    assert SECRET not in repr(data) and "12345" not in repr(data)
    # names that merely contain a secret word are data, not secrets
    assert list(data["pipelines"]) == ["p"]


def test_redacted_config_keeps_a_pipeline_named_like_a_secret() -> None:
    config = DaemonConfig.model_validate({
        "streams": [{"name": "token-gate", "url": "/srv/cam.mp4", "pipeline": "keypad"}],
        "pipelines": {"keypad": {"model": "m.onnx"}},
    })
    data = redacted_config(config)
    assert data["pipelines"]["keypad"]["model"] == "m.onnx" and data["streams"][0]["name"] == "token-gate"


# URL forms: these rely on streamd.redact.redact (userinfo up to the last '@', secret query parameters)
URL_CASES = [
    "rtsp://admin:Pa55@w/rd@127.0.0.1:1/cam",
    f"rtsp://admin:{SECRET}@/:%@127.0.0.1:1/cam",
    "rtsp://admin:S3cr%40Et%2F%3A%25@127.0.0.1:1/cam",
    f"rtsp://admin:{SECRET}:x@127.0.0.1:1/cam",
]


@pytest.mark.parametrize("url", URL_CASES)
def test_redacted_config_hides_url_passwords(url: str) -> None:
    config = make_config(streams=[{"name": "cam", "url": url, "pipeline": "p"}])
    shown = redacted_config(config)["streams"][0]["url"]
    password = url.split("://", 1)[1].split(":", 1)[1].rsplit("@", 1)[0]
    assert password not in shown and shown.startswith("rtsp://admin:***@") and shown.endswith("127.0.0.1:1/cam")


@pytest.mark.parametrize("param", ["api_key", "access_token", "sig", "token", "signature", "apikey", "key"])
def test_redacted_config_hides_secret_query_parameters(param: str) -> None:
    config = make_config(sinks=[{"type": "webhook", "url": f"https://hooks.example/in?site=a&{param}={SECRET}&x=1"}])
    shown = redacted_config(config)["sinks"][0]["url"]
    assert SECRET not in shown and "site=a" in shown and "x=1" in shown


def test_api_streams_redacts_every_string() -> None:
    bad = f"cannot open rtsp://admin:{SECRET}@10.0.0.9/cam"
    snap = {"t": time.time(), "ready": True, "counters": {}, "heartbeats": {},
            "streams": {"cam": {"state": "backing_off", "last_error": bad, "line_counts": {"key/car/in": 2}}},
            "stages": {"decode-cam": {"state": "running", "note": bad}}, "reload": {"error": bad}}
    view = FakeView(make_config(), snap)
    http = TestClient(build_app(view, hub=None, token=None), base_url="http://127.0.0.1:8080")  # type: ignore[arg-type]
    body = http.get("/api/streams").text
    assert SECRET not in body and "admin:***@10.0.0.9" in body and '"key/car/in":2' in body
