"""A real MQTT broker for tests: Debian's mosquitto on 127.0.0.1, a free port, stoppable and restartable.

Persistence is on (in the test's folder), so a subscriber with a persistent session (clean_session=False)
gets, after a broker restart, the messages published while it was still reconnecting: what a real
deployment with a persistent broker does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import require

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class MosquittoBroker:
    def __init__(self, folder: Path, users: dict[str, str] | None = None):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {folder}/",
                 "autosave_interval 1", "log_dest stdout", "log_type error", "log_type warning", "log_type notice",
                 "max_queued_messages 100000"]
        if os.geteuid() == 0:
            lines.append("user root")  # as root mosquitto would switch to user 'mosquitto', who cannot read tmp_path
        if users:
            passwd = folder / "passwd"
            passwd.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        self.config_path = folder / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)], stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not port_accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file and closes every connection."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    t: float  # time.monotonic() on arrival


class Subscriber:
    """A paho subscriber with a persistent session (QoS 1), recording every message it gets, duplicates too."""

    def __init__(self, port: int, topic: str, client_id: str = "streamd-test-subscriber", clean: bool = False,
                 auth: tuple[str, str] | None = None):
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        if auth:
            self.client.username_pw_set(*auth)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)

        def on_connect(client, _u, _f, reason, _p=None):  # type: ignore[no-untyped-def]
            if not reason.is_failure:
                client.subscribe(topic, qos=1)
                self.connected.set()

        def on_disconnect(*_args):  # type: ignore[no-untyped-def]
            self.connected.clear()

        def on_message(_c, _u, msg):  # type: ignore[no-untyped-def]
            with self._lock:
                self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain), time.monotonic()))

        self.client.on_connect, self.client.on_disconnect, self.client.on_message = on_connect, on_disconnect, on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "test subscriber could not connect to the broker"
        time.sleep(0.2)  # SUBACK

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    require(Path(MOSQUITTO).is_file(), "mosquitto not installed (apt-get install mosquitto)")
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()
