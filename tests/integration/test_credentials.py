"""No credential leaves the daemon (issue 19 item 7), end to end.

Every credential-bearing field and URL form gets its own distinctive secret built from ``@ / : %`` and
alphanumeric fragments: RTSP userinfo passwords (raw and percent-encoded), a token-only userinfo, secret query
parameters of a stream and of a webhook URL (``api_key``, ``access_token``, ``sig``), webhook userinfo, the
webhook ``secret`` and ``bearer_token``, the MQTT password and ``api.token``. A real daemon runs them beside a
healthy file stream; the RTSP sources, the webhook and the MQTT broker point at ports nothing listens on, so
their errors are logged again and again. Then every log line (stdout and stderr), every API answer, the metrics,
the JSONL events, the count store, the outbox SQLite files and the output of ``streamd validate`` on configs with
an invalid value next to the secrets are searched for every fragment of every secret (a fragment catches the
secret whole, cut at one of its special characters, and in its URL-encoded forms).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streamd.demo import package_file
from streamd.synth.conveyor import SceneConfig, render_video
from tests.conftest import write_config
from tests.integration.mqtt_broker import free_port

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Secret:
    """One field's secret: alphanumeric fragments joined by ``seps``; each fragment is a needle."""

    where: str
    tag: str
    seps: str = "@/:%"
    fragments: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        frags = tuple(f"S3cr{self.tag}{i}Et" for i in range(len(self.seps) + 1))
        object.__setattr__(self, "fragments", frags)

    @property
    def value(self) -> str:
        out = self.fragments[0]
        for sep, frag in zip(self.seps, self.fragments[1:]):
            out += sep + frag
        return out

    def needles(self) -> set[str]:
        forms = {self.value, quote(self.value, safe=""), quote_plus(self.value)}
        return set(self.fragments) | forms


# URL userinfo: user:password with every special character, raw (FFmpeg splits at the last '@')
RTSP_RAW = Secret("streams[].url userinfo password (raw @ / : %)", "Ua")
# ... and percent-encoded, as a careful operator writes it
RTSP_ENCODED = Secret("streams[].url userinfo password (percent-encoded)", "Ub")
# token-only userinfo (no ':'): rtsp://<token>@host
RTSP_TOKEN = Secret("streams[].url token-only userinfo", "Uc", seps="-_.")
RTSP_QUERY = Secret("streams[].url ?password=", "Uq", seps="/:@")
HOOK_API_KEY = Secret("webhook url ?api_key=", "Wk", seps="/:@")
HOOK_ACCESS_TOKEN = Secret("webhook url &access_token=", "Wt", seps="/:@")
HOOK_SIG = Secret("webhook url &sig=", "Ws", seps="/:@")
HOOK_USERINFO = Secret("webhook url userinfo password", "Wu")
HOOK_SECRET = Secret("webhook secret (HMAC key)", "Wh")
HOOK_BEARER = Secret("webhook bearer_token", "Wb")
MQTT_PASSWORD = Secret("mqtt password", "Mp")
API_TOKEN = Secret("api.token", "At")
ALL = [RTSP_RAW, RTSP_ENCODED, RTSP_TOKEN, RTSP_QUERY, HOOK_API_KEY, HOOK_ACCESS_TOKEN, HOOK_SIG, HOOK_USERINFO,
       HOOK_SECRET, HOOK_BEARER, MQTT_PASSWORD, API_TOKEN]
# for validate: values of the wrong type or length, which error messages like to echo
NUMERIC_PASSWORD = 733104862951
NUMERIC_TOKEN = 4815162342108016
SHORT_TOKEN = "S3crTkEt"  # 8 characters: too short for api.token


def q(value: str) -> str:
    """A query parameter value as it is written in a URL ('%' must be encoded there, the rest may stay)."""
    return value.replace("%", "%25")


def leaks(text: str | bytes, secrets: list[Secret] = ALL, extra: tuple[str, ...] = ()) -> list[str]:
    """The fields whose secret (or a fragment of it) appears in ``text``."""
    hay = text if isinstance(text, str) else text.decode("latin-1")
    found = [s.where for s in secrets if any(n in hay for n in s.needles())]
    return found + [f"value {e!r}" for e in extra if e in hay]


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    video = tmp_path_factory.mktemp("creds") / "belt.mp4"
    render_video(SceneConfig(seed=7, fps=15, seconds=8.0, belt_speed=12.0, density=1.5), video)
    return video


def secret_config(tmp_path: Path, belt: Path) -> dict[str, Any]:
    dead = free_port()  # nothing listens here: every connection is refused, every error is logged
    retry = {"initial_s": 0.2, "max_s": 1.0, "open_timeout_s": 2.0, "read_timeout_s": 2.0}
    outbox_retry = {"retry": {"initial_s": 0.2, "max_s": 1.0}}
    hook_url = (f"http://hook:{quote(HOOK_USERINFO.value, safe='')}@127.0.0.1:{dead}/in?site=a"
                f"&api_key={q(HOOK_API_KEY.value)}&access_token={q(HOOK_ACCESS_TOKEN.value)}&sig={q(HOOK_SIG.value)}")
    return {
        "streams": [
            {"name": "belt", "url": str(belt), "pipeline": "conveyor", "realtime": True, "loop": True},
            {"name": "cam-raw", "url": f"rtsp://admin:{RTSP_RAW.value}@127.0.0.1:{dead}/cam", "pipeline": "conveyor",
             "retry": retry},
            {"name": "cam-enc", "url": f"rtsp://admin:{quote(RTSP_ENCODED.value, safe='')}@127.0.0.1:{dead}/cam",
             "pipeline": "conveyor", "retry": retry},
            {"name": "cam-tok", "url": f"rtsp://{RTSP_TOKEN.value}@127.0.0.1:{dead}/cam?password={q(RTSP_QUERY.value)}",
             "pipeline": "conveyor", "retry": retry},
        ],
        "pipelines": {"conveyor": {
            "model": str(package_file("models", "conveyor.onnx")), "confidence": 0.35,
            "lines": [{"name": "exit", "points": [[320, 360], [320, 0]], "anchor": "center"}],
        }},
        "sinks": [
            {"type": "jsonl", "path": str(tmp_path / "events.jsonl")},
            {"type": "webhook", "name": "hook", "url": hook_url, "secret": HOOK_SECRET.value,
             "bearer_token": HOOK_BEARER.value, "timeout_s": 2.0, "outbox": outbox_retry},
            {"type": "mqtt", "name": "broker", "host": "127.0.0.1", "port": dead, "username": "streamd",
             "password": MQTT_PASSWORD.value, "outbox": outbox_retry},
        ],
        "counts": {"path": str(tmp_path / "counts.db")},
        "supervisor": {"stats_interval_s": 1},
        "api": {"port": 0, "token": API_TOKEN.value},
        "watch_config": False,
    }


def poll(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} not within {timeout}s (last: {last!r})")


def test_no_secret_in_logs_api_metrics_events_or_outboxes(belt: Path, tmp_path: Path, daemon_factory) -> None:
    cfg = secret_config(tmp_path, belt)
    path = write_config(tmp_path / "streamd.yaml", cfg)
    daemon = daemon_factory(path)
    url = daemon.wait_for("api_listening", timeout=90)["url"].rstrip("/")
    auth = {"Authorization": f"Bearer {API_TOKEN.value}"}
    api = httpx.Client(base_url=url, headers=auth, timeout=30)

    def streams() -> dict[str, Any]:
        return api.get("/api/streams").json()["streams"]

    # the healthy stream counts (so events reach the JSONL file and both outboxes) ...
    poll("a line crossing on the healthy stream",
         lambda: any(k.startswith("exit/") for k in streams().get("belt", {}).get("line_counts", {})), 120)
    # ... the RTSP sources have failed and said why ...
    poll("last_error on every RTSP stream",
         lambda: all(streams()[n]["last_error"] for n in ("cam-raw", "cam-enc", "cam-tok")))

    # ... and both network sinks have failed deliveries behind them
    def retried() -> bool:
        retries = {sample.labels["sink"]: sample.value
                   for family in text_string_to_metric_families(api.get("/metrics").text)
                   for sample in family.samples
                   if sample.name == "streamd_sink_events_total" and sample.labels.get("result") == "retries"}
        return retries.get("hook", 0) > 0 and retries.get("broker", 0) > 0
    poll("delivery retries of the webhook and MQTT sinks", retried)
    time.sleep(2)  # a few more rounds of errors in the log

    answers: dict[str, str] = {}
    for endpoint in ("/api/streams", "/api/config", "/api/counts?window=total", "/api/counts?window=hour",
                     "/api/counts?window=shift", "/metrics", "/readyz", "/healthz", "/"):
        response = api.get(endpoint)
        assert response.status_code == 200, (endpoint, response.status_code, response.text[:300])
        answers[endpoint] = response.text
    response = api.post("/api/reload")
    answers["POST /api/reload (unchanged)"] = response.text
    # an invalid value next to the secrets: the reload is rejected, with an error that must name no secret
    bad = yaml.safe_load(path.read_text())
    bad["sinks"][1]["timeout_s"] = -1
    bad["sinks"][2]["port"] = 70000
    bad["streams"][1]["ring_slots"] = 0
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    response = api.post("/api/reload")
    assert response.status_code == 422, response.text
    answers["POST /api/reload (invalid)"] = response.text
    answers["/api/streams after the rejected reload"] = api.get("/api/streams").text
    api.close()
    config_shown = answers["/api/config"]
    assert "***" in config_shown and "belt.mp4" in config_shown  # the config is there, masked

    daemon.stop()  # shutdown summaries are logged too
    found: dict[str, list[str]] = {}
    for name, text in answers.items():
        if hits := leaks(text):
            found[name] = hits
    log = daemon.log_path.read_text(errors="replace")
    assert "api_listening" in log and "stream_stats" in log
    for i, line in enumerate(log.splitlines()):
        if hits := leaks(line):
            found.setdefault("log", []).extend(f"line {i + 1}: {h}: {line[:200]}" for h in hits)
    outboxes = sorted(p for p in tmp_path.rglob("*") if p.is_file() and "outbox" in p.name)
    assert outboxes, f"no outbox files under {tmp_path}"
    assert (tmp_path / "events.jsonl").stat().st_size > 0
    for file in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        if file.suffix in (".yaml", ".mp4") or file == daemon.log_path:
            continue  # the config holds the secrets; the clip is ours
        if hits := leaks(file.read_bytes()):
            found[str(file.relative_to(tmp_path))] = hits
    assert not found, "secrets found:\n" + "\n".join(f"{where}: {hits}" for where, hits in found.items())


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamd", "validate", str(path)], capture_output=True, text=True,
                          timeout=120)


def _invalid(cfg: dict[str, Any], case: str) -> None:
    """Put one invalid value next to the secrets (or make a secret itself invalid)."""
    hook, mqtt = cfg["sinks"][1], cfg["sinks"][2]
    if case == "webhook timeout next to url secrets":
        hook["timeout_s"] = -1
    elif case == "webhook url with a bad scheme":
        hook["url"] = "ftp" + hook["url"][4:]
    elif case == "stream ring_slots next to its url":
        cfg["streams"][1]["ring_slots"] = 0
    elif case == "stream url of an unknown pipeline":
        cfg["streams"][2]["pipeline"] = "nope"
    elif case == "mqtt port next to the password":
        mqtt["port"] = 70000
    elif case == "numeric mqtt password":
        mqtt["password"] = NUMERIC_PASSWORD
    elif case == "mqtt password of the wrong type":
        mqtt["password"] = [MQTT_PASSWORD.value]
    elif case == "webhook secret of the wrong type":
        hook["secret"] = {"key": HOOK_SECRET.value}
    elif case == "too short api token":
        cfg["api"]["token"] = SHORT_TOKEN
    elif case == "numeric api token":
        cfg["api"]["token"] = NUMERIC_TOKEN
    elif case == "unknown key beside the secrets":
        hook["bearer"] = HOOK_BEARER.value
    else:
        raise AssertionError(case)


INVALID_CASES = ["webhook timeout next to url secrets", "webhook url with a bad scheme",
                 "stream ring_slots next to its url", "stream url of an unknown pipeline",
                 "mqtt port next to the password", "numeric mqtt password", "mqtt password of the wrong type",
                 "webhook secret of the wrong type", "too short api token", "numeric api token",
                 "unknown key beside the secrets"]


@pytest.mark.parametrize("case", INVALID_CASES)
def test_validation_errors_never_echo_a_secret(case: str, belt: Path, tmp_path: Path) -> None:
    cfg = secret_config(tmp_path, belt)
    _invalid(cfg, case)
    out = validate(write_config(tmp_path / "streamd.yaml", cfg))
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "streamd.yaml" in text and "Traceback" not in text, text
    hits = leaks(text, extra=(str(NUMERIC_PASSWORD), str(NUMERIC_TOKEN), SHORT_TOKEN))
    assert not hits, f"{case}: {hits} in:\n{text}"


def test_validate_of_the_valid_config_names_no_secret(belt: Path, tmp_path: Path) -> None:
    out = validate(write_config(tmp_path / "streamd.yaml", secret_config(tmp_path, belt)))
    assert out.returncode == 0, out.stderr
    assert not leaks(out.stdout + out.stderr)
