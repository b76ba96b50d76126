"""systemd/streamd.service passes `systemd-analyze verify` and keeps the settings the daemon relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, require

UNIT = REPO / "systemd" / "streamd.service"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_declares_notify_watchdog_reload_restart_user_and_hardening() -> None:
    d = directives(UNIT.read_text())
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure", "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "StateDirectory": "streamd", "RuntimeDirectory": "streamd",
        "ConfigurationDirectory": "streamd",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], f"{key}= should be {value}, is {d.get(key)}"
    assert "/dev/shm" in " ".join(d["ReadWritePaths"]), "frame rings live in /dev/shm"
    assert d["ExecStart"][0].split()[1:3] == ["run", "/etc/streamd/streamd.yaml"]
    assert {"RestartSec", "StartLimitIntervalSec", "StartLimitBurst"} <= d.keys()


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze not found (apt-get install systemd)")
    # verify checks that ExecStart exists: point it at this environment's streamd entry point
    streamd = Path(sys.executable).with_name("streamd")
    require(streamd.is_file(), f"{streamd} not found: pip install -e . in this environment")
    unit = tmp_path / "streamd.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/local/bin/streamd", f"ExecStart={streamd}"))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if "streamd.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above could fail: a bad key and a missing binary are reported."""
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze not found (apt-get install systemd)")
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nExecStart=/nonexistent/streamd run x\nBogusKey=1\n")
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "BogusKey" in done.stderr
