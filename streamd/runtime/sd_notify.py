"""systemd notify protocol (sd_notify(3)) for ``Type=notify`` units, with no dependency on libsystemd.

The supervisor tells systemd when it is ready (READY=1), that it is alive (WATCHDOG=1, at half of
``WatchdogSec``), that it reloads its config (RELOADING=1 with MONOTONIC_USEC, as systemd 253+ expects
for ``Type=notify-reload`` and accepts for ``notify``), that it stops (STOPPING=1), and a one-line STATUS
shown by ``systemctl status``. Outside systemd (no $NOTIFY_SOCKET) every call is a cheap no-op.

The environment is read once, when the notifier is created (not at import, not per call).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. vsock: (VMs); not supported here


class SystemdNotifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = _address(raw) if raw else None
        self._log = structlog.get_logger()
        if raw and self.address is None:
            self._log.warning("sd_notify_unsupported_socket", notify_socket=raw, action="systemd notifications are off")
        self._watchdog_usec = self._watchdog_from(env)
        self._socket: socket.socket | None = None
        self._failed_once = False

    @staticmethod
    def _watchdog_from(env: Mapping[str, str]) -> int | None:
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        pid = env.get("WATCHDOG_PID")
        if pid and pid.isdigit() and int(pid) != os.getpid():
            return None  # the watchdog is meant for another process (e.g. our parent)
        return usec if usec > 0 else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec, as sd_watchdog_enabled(3) advises); None: off."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1e6

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when sent. Never raises: systemd is best effort."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message, self.address)
            return True
        except OSError as exc:
            if not self._failed_once:  # once: a missing socket would otherwise log every watchdog ping
                self._log.warning("sd_notify_failed", error=str(exc), message=message.decode(errors="replace")[:80])
                self._failed_once = True
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text.replace(chr(10), ' ')}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
