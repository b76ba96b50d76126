"""streamd.runtime.sd_notify against real AF_UNIX datagram sockets (file path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from streamd.runtime.sd_notify import SystemdNotifier


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5)
    if request.param == "path":
        folder = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")  # AF_UNIX paths are limited to 107 bytes
        path = os.path.join(folder, "notify")
        sock.bind(path)
        yield sock, path
        sock.close()
        os.unlink(path)
        os.rmdir(folder)
    else:
        name = f"streamd-test-notify-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        yield sock, "@" + name
        sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    n = SystemdNotifier({"NOTIFY_SOCKET": address})
    assert n.enabled
    assert n.ready(status="2 streams running")
    assert received(sock) == ["READY=1", "STATUS=2 streams running"]
    assert n.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    lines = received(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].split("=")[1]) <= after
    assert n.status("line one\nline two")
    assert received(sock) == ["STATUS=line one line two"]
    assert n.stopping()
    assert received(sock) == ["STOPPING=1"]
    n.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = SystemdNotifier({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False
    assert n.watchdog_interval() is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], expected: float | None) -> None:
    assert SystemdNotifier({"NOTIFY_SOCKET": "@x", **env}).watchdog_interval() == expected


def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with capture_logs() as logs:
        assert n.watchdog() is False
        assert n.watchdog() is False
    assert [e["event"] for e in logs] == ["sd_notify_failed"]


def test_unsupported_socket_kind_turns_notifications_off() -> None:
    with capture_logs() as logs:
        n = SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled and n.ready() is False
    assert logs and logs[0]["event"] == "sd_notify_unsupported_socket"
