"""deploy/prometheus/alerts.yml: valid for Prometheus (promtool check rules) and its fleet alerts fire when
they should (promtool test rules on synthetic series)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"

RULE_TESTS = """
rule_files: [{rules}]
evaluation_interval: 30s
tests:
  - interval: 30s
    input_series:
      - series: 'streamd_fleet_member_up{{instance="a:8080",node="node-1"}}'
        values: '1 1 0 0 0 0 0'
      - series: 'streamd_fleet_member_up{{instance="b:8080",node="node-1"}}'
        values: '1 1 0 0 0 0 0'
      - series: 'streamd_fleet_member_up{{instance="a:8080",node="node-2"}}'
        values: '1 1 1 1 1 1 1'
      - series: 'streamd_stream_up{{instance="a:8080",stream="belt",state="finished"}}'
        values: '0 0 0 0 0 0 0 0 0 0'
      - series: 'streamd_stream_up{{instance="a:8080",stream="door",state="reconnecting"}}'
        values: '0 0 0 0 0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 30s
        alertname: StreamdNodeDown
        exp_alerts: []
      - eval_time: 3m
        alertname: StreamdNodeDown
        exp_alerts:
          - exp_labels: {{severity: critical, node: node-1}}
            exp_annotations:
              summary: fleet node node-1 stopped heartbeating
              description: "{node_down}"
      - eval_time: 4m
        alertname: StreamdStreamDown
        exp_alerts:
          - exp_labels: {{severity: critical, stream: door}}
            exp_annotations:
              summary: stream door is not streaming
              description: "{stream_down}"
"""


FLAPPING_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # a node died once: 12 streams moved in one burst, then nothing
      - series: 'streamd_fleet_lease_moves_total{{instance="a:8080"}}'
        values: '0 12x60'
    alert_rule_test:
      - eval_time: 10m
        alertname: StreamdLeasesFlapping
        exp_alerts: []
      - eval_time: 15m  # the burst is still in the window, but not for 20 minutes
        alertname: StreamdLeasesFlapping
        exp_alerts: []
      - eval_time: 40m
        alertname: StreamdLeasesFlapping
        exp_alerts: []
  - interval: 1m
    input_series:
      # two moves a minute for an hour (a node in a crash loop), seen by two scraping nodes alike
      - series: 'streamd_fleet_lease_moves_total{{instance="a:8080"}}'
        values: '0+2x60'
      - series: 'streamd_fleet_lease_moves_total{{instance="b:8080"}}'
        values: '0+2x60'
    alert_rule_test:
      - eval_time: 10m
        alertname: StreamdLeasesFlapping
        exp_alerts: []
      - eval_time: 40m
        alertname: StreamdLeasesFlapping
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: 30 lease moves in the last 15 minutes, for 20 minutes
              description: "{description}"
"""


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool (Debian package prometheus) is not installed")
    assert path is not None
    return path


def test_alert_rules_are_valid() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_node_down_and_stream_down_fire_once_per_problem(tmp_path: Path) -> None:
    """Two nodes' scrapes of the same dead member give one StreamdNodeDown; a finished file is not 'down'."""
    tests = tmp_path / "alerts_test.yml"
    import yaml

    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    node_down = rules["StreamdNodeDown"]["annotations"]["description"]
    stream_down = rules["StreamdStreamDown"]["annotations"]["description"].replace("{{ $labels.stream }}", "door")
    tests.write_text(RULE_TESTS.format(rules=RULES, node_down=node_down, stream_down=stream_down))
    out = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_burst_of_moves_is_not_flapping_but_moves_that_keep_coming_are(tmp_path: Path) -> None:
    import yaml

    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests = tmp_path / "flapping_test.yml"
    tests.write_text(FLAPPING_TESTS.format(rules=RULES,
                                           description=rules["StreamdLeasesFlapping"]["annotations"]["description"]))
    out = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_rule_waits_and_tells_the_operator_what_to_do() -> None:
    import yaml

    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule.get("for"), f"{rule['alert']}: no for: (one bad scrape would page someone)"
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 40, rule["alert"]


@pytest.mark.parametrize("name", ["StreamdNodeDown", "StreamdStreamsWithoutOwner", "StreamdLeasesFlapping",
                                  "StreamdCountStoreUnreachable", "StreamdOutboxBacklog", "StreamdStreamDown"])
def test_the_issue_s_alerts_exist(name: str) -> None:
    assert f"alert: {name}\n" in RULES.read_text()
