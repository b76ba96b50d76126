"""This daemon as one node of a fleet: which of the configured streams it runs, decided by leases in PostgreSQL.

A thread renews the node's membership and leases every ``fleet.heartbeat_s`` (database I/O never runs in the
watch loop) and publishes ``{stream: lease epoch}``; when that changes, the daemon reloads, so gaining or losing
a stream goes through the same all-or-nothing path as an edit of the file. A stream this node does not hold is
treated as disabled here; the node that holds it runs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from streamd.config.fleet import FleetConfig
from streamd.config.models import DaemonConfig

log = structlog.get_logger()


def fleet_streams(config: DaemonConfig) -> list[str]:
    """The streams the fleet shares: every enabled stream of the (common) config file."""
    return sorted(s.name for s in config.streams if s.enabled)


def owned_view(config: DaemonConfig, owned: dict[str, int] | None) -> DaemonConfig:
    """The config as this node runs it: streams held by other nodes are disabled here (None: no fleet)."""
    if owned is None:
        return config
    streams = [s if (s.name in owned or not s.enabled) else s.model_copy(update={"enabled": False})
               for s in config.streams]
    return config.model_copy(update={"streams": streams})


def standby_pipelines(config: DaemonConfig, owned: dict[str, int] | None, fleet: FleetConfig | None = None) -> set[str]:
    """The pipelines loaded here for streams other nodes run (``fleet.standby_models``): when one of those streams
    moves here, its inference stage is already warm. ``config``: the file as read; ``fleet``: the fleet section in
    force (a reload keeps the running one). Empty outside a fleet."""
    fleet = fleet or config.fleet
    if owned is None or not fleet.enabled or not fleet.standby_models:
        return set()
    here = {s.pipeline for s in owned_view(config, owned).active_streams}
    return {s.pipeline for s in config.streams if s.enabled} - here


class FleetMembership:
    def __init__(self, config: FleetConfig, url: str, streams: list[str], on_change: Callable[[], None],
                 stopped: Callable[[str], bool] = lambda stream: True,
                 deliver: Callable[[float], bool] | None = None):
        """``stopped(stream)``: the daemon no longer runs ``stream`` (the reload without it is done);
        ``deliver(timeout_s)``: wait until the counts recorded so far reached the fleet's store. A stream the
        assignment moves to another node is released only after both, so that its new owner continues from its
        last counts instead of having them fenced (or after failover_s, whatever happened)."""
        from streamd.fleet import FleetNode  # psycopg only when a fleet is configured

        self.config = config
        self._node = FleetNode(url, config.node_id, streams, config.failover_s, config.heartbeat_s,
                               hold_through_outage=True, drain_before_release=True)
        self._on_change = on_change
        self._stopped = stopped
        self._deliver = deliver
        self._owned: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self.ticks = 0

    def start(self, wait_s: float) -> None:
        """Start renewing; wait up to ``wait_s`` for the first answer of the database (none: no streams yet)."""
        self._thread.start()
        if not self._first.wait(wait_s):
            log.warning("fleet_not_joined", wait_s=wait_s, node=self.config.node_id,
                        action="running no stream until the fleet database answers")

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                owned = self._node.tick()
            except Exception:  # a bug in one tick must not end the node's membership for good
                log.exception("fleet_tick_failed")
                owned = self.owned()
            self.ticks += 1
            with self._lock:
                changed = owned != self._owned
                self._owned = dict(owned)
            self._first.set()
            if changed:
                log.info("fleet_streams", node=self.config.node_id, streams=sorted(owned))
                self._on_change()
            self._hand_over(started)
            self._stop.wait(max(0.0, self.config.heartbeat_s - (time.monotonic() - started)))

    def _hand_over(self, started: float) -> None:
        """Release the draining streams that have stopped here, once their last counts are delivered; looks again
        every 0.2 s within this heartbeat, so a hand-over waits for the reload, not for the next tick."""
        while not self._stop.is_set():
            waiting = self._node.draining()
            ready = [s for s in waiting if self._stopped(s)]
            if ready:
                delivered = self._deliver(self.config.failover_s / 2) if self._deliver is not None else True
                for stream in ready:
                    self._node.release(stream, delivered)
            if not waiting or len(ready) == len(waiting) or \
                    time.monotonic() - started > self.config.heartbeat_s - 0.2:
                return
            self._stop.wait(0.2)

    def owned(self) -> dict[str, int]:
        with self._lock:
            return dict(self._owned)

    def set_streams(self, streams: list[str]) -> None:
        self._node.set_streams(streams)

    def status(self) -> dict[str, Any]:
        return {"node": self.config.node_id, "streams": sorted(self.owned()), "draining": self._node.draining(),
                "outage_since": self._node.outage_since, "last_error": self._node.last_error}

    def stop(self) -> None:
        """Hand the streams over now (the others take them at their next tick), then stop renewing."""
        self._stop.set()
        self._thread.join(self.config.heartbeat_s + 10)
        self._node.leave()
        self._node.close()
