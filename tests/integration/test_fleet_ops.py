"""Operating a fleet (issue 16, part 5), on two real daemons sharing one PostgreSQL: /api/fleet and
`streamd fleet status` agree on who owns which stream, a /metrics capture passes `promtool check metrics` and
has every series the alert rules use, and with the database down /api/fleet answers 503 without the password."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_clip, require, write_config
from tests.pg_helpers import PgServer, pg_server, pg_url  # noqa: F401
from tests.unit.test_model import KNOWN, ULTRA_META, constant_model

pytestmark = pytest.mark.integration

STREAMS = ["cam-a", "cam-b", "cam-c"]
PASSWORD = "fleet-pw-Zq81"  # trust auth ignores it; it must still never be shown
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def node_config(tmp: Path, node: str, url: str, clip: Path, model: Path) -> Path:
    folder = tmp / node
    folder.mkdir()
    with_password = url.replace("postgresql://postgres@", "postgresql://postgres:${PGPASSWORD}@")
    return write_config(folder / "streamd.yaml", {
        "streams": [{"name": n, "url": str(clip), "pipeline": "p", "realtime": True, "loop": True} for n in STREAMS],
        "pipelines": {"p": {"model": str(model)}},
        "counts": {"path": str(folder / "counts.db"), "url": with_password},
        "fleet": {"enabled": True, "node_id": node, "failover_s": 6.0, "heartbeat_s": 1.0},
        "supervisor": {"stats_interval_s": 1},
        # a sink whose target is down: its outbox series (used by the alert rules) exist and grow
        "sinks": [{"type": "webhook", "url": "http://127.0.0.1:9/events", "timeout_s": 1.0,
                   "outbox": {"path": str(folder / "outbox.db")}}],
    })


def fleet_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamd", "fleet", "status", str(cfg), *args],
                          capture_output=True, text=True, timeout=60, env={"PGPASSWORD": PASSWORD, "PATH": "/usr/bin:/bin"})


def test_fleet_api_cli_metrics_and_alert_series(tmp_path: Path, pg_server: PgServer, pg_url: str,  # noqa: F811
                                                daemon_factory) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool (Debian package prometheus) is not installed")
    clip = make_clip(tmp_path / "clip.mp4", frames=60, fps=15)
    model = constant_model(tmp_path / "tiny.onnx", KNOWN, metadata=ULTRA_META)
    configs = {n: node_config(tmp_path, n, pg_url, clip, model) for n in ("node-1", "node-2")}
    nodes = {n: daemon_factory(c, env={"PGPASSWORD": PASSWORD}) for n, c in configs.items()}
    urls = {n: d.wait_for("api_listening", timeout=90)["url"].rstrip("/") for n, d in nodes.items()}

    deadline = time.monotonic() + 90
    body: dict = {}
    while time.monotonic() < deadline:
        answer = httpx.get(f"{urls['node-1']}/api/fleet", timeout=10)
        body = answer.json()
        if answer.status_code == 200 and None not in body["owners"].values() and len(body["owners"]) == len(STREAMS) \
                and len(set(body["owners"].values())) == 2:
            break
        time.sleep(0.5)
    assert sorted(body["owners"]) == STREAMS and set(body["owners"].values()) == {"node-1", "node-2"}, body
    assert {m["node"] for m in body["members"] if m["alive"]} == {"node-1", "node-2"}, body["members"]
    assert all(lease["valid"] and lease["epoch"] >= 1 for lease in body["leases"]), body["leases"]
    assert body["moves"] and body["moves_last_hour"] >= len(STREAMS), body  # every first acquisition is a move
    # each node's own view agrees with the database's
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        views = {n: httpx.get(f"{u}/api/fleet", timeout=10).json()["node"] for n, u in urls.items()}
        if all(sorted(v["streams"]) == sorted(s for s, o in body["owners"].items() if o == n) for n, v in views.items()):
            break
        time.sleep(0.5)
    for n, v in views.items():
        assert sorted(v["streams"]) == sorted(s for s, o in body["owners"].items() if o == n), (n, v, body["owners"])
        assert v["replication"]["up"] is True, v

    cli = fleet_cli(configs["node-2"], "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["owners"] == body["owners"]
    table = fleet_cli(configs["node-2"])
    assert table.returncode == 0 and "members: 2 alive of 2" in table.stdout, table.stdout + table.stderr
    for stream, owner in body["owners"].items():
        assert re.search(rf"^{stream}\s+{owner}\s", table.stdout, re.M), table.stdout

    capture = httpx.get(f"{urls['node-1']}/metrics", timeout=10).text
    (tmp_path / "metrics.txt").write_text(capture)
    checked = subprocess.run([promtool, "check", "metrics"], input=capture, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for series in ("streamd_fleet_member_up{node=\"node-2\"} 1.0", "streamd_fleet_streams_unowned 0.0",
                   "streamd_count_store_up 1.0", "streamd_fleet_heartbeat_ok 1.0", "streamd_fleet_db_up 1.0"):
        assert series in capture, series
    moves_total = re.search(r"^streamd_fleet_lease_moves_total ([0-9.]+)$", capture, re.M)
    assert moves_total and float(moves_total.group(1)) >= len(STREAMS), capture  # each first acquisition counts
    exported = set(re.findall(r"^(streamd_[a-z_]+)", capture, re.M))
    expressions = "\n".join(line for line in RULES.read_text().splitlines() if line.strip().startswith("expr:"))
    used = set(re.findall(r"\b(streamd_[a-z_]+)\b", expressions))
    assert used and used <= exported, f"alert rules use series /metrics does not export: {sorted(used - exported)}"
    assert PASSWORD not in capture and PASSWORD not in json.dumps(body)

    pg_server.stop("fast")
    try:
        deadline = time.monotonic() + 30  # the API keeps an answer for a few seconds
        while time.monotonic() < deadline:
            answer = httpx.get(f"{urls['node-1']}/api/fleet", timeout=30)
            if answer.status_code != 200:
                break
            time.sleep(0.5)
        assert answer.status_code == 503, answer.text
        assert "count store unreachable" in answer.json()["error"] and PASSWORD not in answer.text, answer.text
        down = fleet_cli(configs["node-1"])
        assert down.returncode == 2 and "did not answer" in down.stderr and PASSWORD not in down.stderr, down.stderr
        metrics = httpx.get(f"{urls['node-1']}/metrics", timeout=30).text
        assert "streamd_fleet_db_up 0.0" in metrics and PASSWORD not in metrics
    finally:
        pg_server.start()


def test_fleet_status_refuses_a_config_without_a_fleet(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "single.yaml", {
        "streams": [{"name": "a", "url": str(tmp_path / "a.mp4"), "pipeline": "p"}],
        "pipelines": {"p": {"model": "model.onnx"}}})
    out = fleet_cli(cfg)
    assert out.returncode == 1 and "not a fleet config" in out.stderr and str(cfg) in out.stderr, out.stderr


def test_api_fleet_outside_a_fleet_without_a_token_and_with_a_dead_database(tmp_path: Path) -> None:
    """The API's answers that need no running daemon: 404 outside a fleet, 401 without the token, and 503
    naming the unreachable count store (a port nothing listens on) without the URL's password."""
    from starlette.testclient import TestClient

    from streamd.api.server import build_app
    from tests.unit.test_api_auth import BEARER, TOKEN, FakeView, make_config

    def api(config: Any) -> TestClient:
        app = build_app(FakeView(config), hub=None, token=TOKEN)  # type: ignore[arg-type]  # no preview hub needed
        return TestClient(app, base_url="http://127.0.0.1:8080")

    single = api(make_config(token=TOKEN))
    assert single.get("/api/fleet").status_code == 401
    outside = single.get("/api/fleet", headers=BEARER)
    assert outside.status_code == 404 and "not in a fleet" in outside.json()["error"], outside.text

    with socket.socket() as probe:  # a free port: bound, then closed, so nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = api(make_config(token=TOKEN, counts={"path": str(tmp_path / "c.db"),
                                                "url": f"postgresql://streamd:{PASSWORD}@127.0.0.1:{port}/streamd"},
                           fleet={"enabled": True, "node_id": "node-x"}))
    answer = dead.get("/api/fleet", headers=BEARER)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"].startswith("count store unreachable:") and PASSWORD not in answer.text, answer.text
    metrics = dead.get("/metrics", headers=BEARER).text
    assert "streamd_fleet_db_up 0.0" in metrics and PASSWORD not in metrics
