"""Ships a node's local count store to the fleet's PostgreSQL, so that analytics never waits on the network.

Analytics records every frame into the node's local SQLite store (``counts.path``, ``CountStore(...,
change_feed=True)``) with the stream's lease epoch. ``Replicator`` runs a thread that reads the change feed after
the durable watermark (``CountStore.changes_since``), applies it to PostgreSQL in one transaction per batch
(``PostgresCountStore.apply``: idempotent, fenced by epoch) and then advances the watermark, which also deletes
the delivered feed entries. A crash between the two replays the batch: a no-op in PostgreSQL.

A database outage: the apply fails, the thread backs off (streamd.runtime.backoff, at most ``backoff.max_s``
between attempts) and retries; analytics goes on, the local store keeps every frame durable. One
``fleet_replication_down`` is logged per outage, ``fleet_replication_caught_up`` (outage length, catch-up time, the
backlog and how many changes were delivered) when the backlog is empty again. Changes refused by fencing (the
stream's lease moved to another node) are counted and logged (``fleet_replication_fenced``), never retried.

``import_stream`` is the other direction, for a stream this node just acquired: the stream's checkpoint and
analytics state (and its open zone visits) from PostgreSQL into the local store, before the stream starts.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from streamd.analytics.store import CountStore
from streamd.config.models import BackoffConfig
from streamd.redact import redact
from streamd.runtime.backoff import Backoff

# Retries during an outage: quick at first, never more than 2 s apart, so that a returning database is noticed
# within 2 s and the backlog is delivered well within the 10 s the fleet promises.
DEFAULT_BACKOFF = BackoffConfig(initial_s=0.25, max_s=2.0, multiplier=2.0, jitter=0.2)


@dataclass(frozen=True)
class ReplicationStatus:
    up: bool  # the last attempt reached PostgreSQL
    down_since: float | None  # wall time the current outage began; None when up
    lag_changes: int  # change entries recorded locally, not yet delivered
    lag_s: float  # age of the oldest of them (0 when none)
    delivered: int  # change entries delivered by this process
    fenced: int  # changes refused by PostgreSQL because their lease epoch was superseded
    watermark: int  # the local feed is delivered up to this seq
    last_error: str | None
    last_catch_up_s: float | None  # the last outage: from reconnection until its backlog was delivered

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Replicator:
    def __init__(self, local_path: str | Path, url: str, node_id: str, *, batch_size: int = 500,
                 poll_s: float = 0.2, backoff: BackoffConfig = DEFAULT_BACKOFF, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        """``batch_size``: change entries per PostgreSQL transaction (bounds memory: those rows, at most one state
        per stream); ``poll_s``: how often an idle replicator looks for new changes; ``timeout_s``: connect and
        TCP timeouts towards PostgreSQL."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.local_path = Path(local_path)
        self.url = url
        self.node_id = node_id
        self.batch_size = batch_size
        self.poll_s = poll_s
        self._backoff = Backoff(backoff)
        self._timeout_s = timeout_s
        self._clock = clock
        self._wall = wall
        self.log = structlog.get_logger().bind(node=node_id)
        self._lock = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._pg: Any = None
        # status, under _lock
        self._up = True
        self._down_since: float | None = None  # wall
        self._down_at: float | None = None  # monotonic
        self._reconnected_at: float | None = None  # monotonic: the first delivery after an outage
        self._backlog_at_reconnect = 0
        self._delivered_since_reconnect = 0
        self._lag_changes = 0
        self._lag_s = 0.0
        self._delivered = 0
        self._fenced = 0
        self._watermark = 0
        self._last_error: str | None = None
        self._last_catch_up_s: float | None = None
        self._caught_up_at: float | None = None  # monotonic: every change recorded before it is delivered

    def __repr__(self) -> str:
        return f"Replicator({str(self.local_path)!r}, {redact(self.url)!r}, node={self.node_id!r})"

    # ---- the API ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("replicator already started")
        self._thread = threading.Thread(target=self._run, name=f"replicator-{self.node_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Deliver what can be delivered within ``timeout`` seconds, then stop; True when nothing was left."""
        with self._lock:
            self._deadline = self._clock() + max(0.0, timeout)
            self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + self._timeout_s + 1.0)  # + one apply in flight
        with self._lock:
            return self._lag_changes == 0

    def flush(self, timeout: float) -> bool:
        """Wait until every change recorded before this call is delivered (e.g. before releasing a lease, so that
        the stream's last counts are not fenced); False after ``timeout`` seconds."""
        called = self._clock()
        self._wake.set()
        end = called + timeout
        with self._lock:
            while self._caught_up_at is None or self._caught_up_at < called:
                left = end - self._clock()
                if left <= 0:
                    return False
                self._lock.wait(min(left, self.poll_s))
            return True

    def status(self) -> ReplicationStatus:
        with self._lock:
            return ReplicationStatus(
                up=self._up, down_since=self._down_since, lag_changes=self._lag_changes, lag_s=round(self._lag_s, 3),
                delivered=self._delivered, fenced=self._fenced, watermark=self._watermark,
                last_error=self._last_error, last_catch_up_s=self._last_catch_up_s)

    # ---- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        local: CountStore | None = None
        try:
            while not self._finished():
                try:
                    if local is None:
                        local = CountStore(self.local_path)
                    delivered = self._step(local)
                except sqlite3.Error as exc:  # the local file is busy or was replaced: try again shortly
                    self.log.warning("fleet_replication_local_error", error=str(exc))
                    if local is not None:
                        local.close()
                        local = None
                    self._wait(self.poll_s)
                    continue
                except Exception as exc:  # noqa: BLE001 - PostgreSQL unreachable or refusing: back off, retry
                    self._failed(exc, local)
                    self._wait(self._backoff.next_delay())
                    continue
                if delivered == 0:
                    with self._lock:
                        if self._stopping:
                            return  # drained
                    self._wait(self.poll_s)
        finally:
            if local is not None:
                local.close()
            if self._pg is not None:
                self._close_pg()

    def _finished(self) -> bool:
        with self._lock:
            return self._stopping and (self._deadline is None or self._clock() >= self._deadline)

    def _wait(self, seconds: float) -> None:
        with self._lock:
            if self._stopping and self._deadline is not None:
                seconds = min(seconds, max(0.0, self._deadline - self._clock()))
        self._wake.wait(seconds)
        self._wake.clear()

    def _step(self, local: CountStore) -> int:
        """One batch: read after the watermark, apply, advance the watermark. Returns the entries delivered."""
        read_at = self._clock()
        watermark = local.replicated_up_to()
        batch = local.changes_since(watermark, self.batch_size)
        if batch.empty:
            self._observe(local, watermark, 0, read_at)
            return 0
        if self._pg is None:
            from streamd.analytics.store_pg import PostgresCountStore

            self._pg = PostgresCountStore(self.url, timeout_s=self._timeout_s)
        result = self._pg.apply(batch, self.node_id)
        local.mark_replicated(batch.up_to)
        for f in result.fenced:
            self.log.warning("fleet_replication_fenced", stream=f.stream, epoch=f.epoch, current_epoch=f.current,
                             owner=f.owner, changes=f.changes,
                             action="dropped: the stream's lease moved on, its current owner counts it")
        with self._lock:
            self._delivered += batch.entries
            self._fenced += result.fenced_changes
        # a batch short of the limit held the whole feed as of read_at: everything recorded before is delivered
        self._observe(local, batch.up_to, batch.entries, None if batch.more else read_at)
        return batch.entries

    def _observe(self, local: CountStore, watermark: int, delivered: int, complete_at: float | None) -> None:
        """After a successful step: the lag, the end of an outage, the end of a catch-up. ``complete_at``: every
        change recorded before this time is now delivered (None: the batch was cut at its limit)."""
        lag = max(0, local.feed_end() - watermark)
        oldest = local.oldest_pending_at() if lag else None
        now = self._clock()
        caught_up: dict[str, Any] | None = None
        with self._lock:
            self._watermark = watermark
            self._lag_changes = lag
            self._lag_s = 0.0 if oldest is None else max(0.0, self._wall() - oldest)
            if not self._up:
                self._up = True
                self._reconnected_at = now
                self._backlog_at_reconnect = lag + delivered
                self._delivered_since_reconnect = 0
                self._backoff.reset()
                self.log.info("fleet_replication_reconnected", down_s=round(now - (self._down_at or now), 1),
                              lag_changes=lag + delivered)
            self._delivered_since_reconnect += delivered
            self._last_error = None
            self._down_since = None
            if complete_at is not None:
                self._caught_up_at = complete_at
                if self._reconnected_at is not None:
                    catch_up = now - self._reconnected_at
                    self._last_catch_up_s = round(catch_up, 3)
                    caught_up = {"down_s": round(self._reconnected_at - (self._down_at or self._reconnected_at), 1),
                                 "catch_up_s": round(catch_up, 3), "lag_changes": self._backlog_at_reconnect,
                                 "delivered": self._delivered_since_reconnect}
                    self._reconnected_at = None
                    self._down_at = None
                self._lock.notify_all()
        if caught_up is not None:
            self.log.info("fleet_replication_caught_up", **caught_up)

    def _failed(self, exc: Exception, local: CountStore | None) -> None:
        message = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        self._close_pg()
        lag, oldest = 0, None
        if local is not None:
            try:
                watermark = local.replicated_up_to()
                lag = max(0, local.feed_end() - watermark)
                oldest = local.oldest_pending_at() if lag else None
            except sqlite3.Error:
                pass
        first = False
        with self._lock:
            if self._up:
                first = True
                self._up = False
                self._down_since = self._wall()
                self._down_at = self._clock()
                self._reconnected_at = None
            self._last_error = message
            self._lag_changes = lag
            self._lag_s = 0.0 if oldest is None else max(0.0, self._wall() - oldest)
        if first:
            self.log.warning("fleet_replication_down", error=message, error_type=type(exc).__name__, lag_changes=lag,
                             action="analysis goes on, counts stay in the local store; retrying")

    def _close_pg(self) -> None:
        pg, self._pg = self._pg, None
        if pg is not None:
            try:
                pg.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may raise anything
                pass


@dataclass(frozen=True)
class Handover:
    """What ``import_stream`` brought into the local store."""

    checkpoint_frame: int | None  # None: the fleet had no checkpoint for the stream (it starts from the beginning)
    finished: bool
    state: bool
    open_visits: int
    dropped: int  # local changes of a superseded lease, not yet delivered, dropped (PostgreSQL would refuse them)


def import_stream(local_path: str | Path, url: str, stream: str, *, epoch: int | None = None,
                  timeout_s: float = 5.0) -> Handover:
    """Before this node starts ``stream`` (just acquired, lease ``epoch``): copy the stream's checkpoint and
    analytics state from PostgreSQL into the local store, replacing the local ones, so that a file resumes after
    its last checkpoint in the fleet and its analytics state continues (a live stream's state belongs to another
    ring and starts fresh: fine). The stream's open zone visits come along so that their exits find their rows.
    Counts are not copied: they continue in PostgreSQL. Raises when PostgreSQL cannot be reached."""
    from streamd.analytics.store_pg import PostgresCountStore

    pg = PostgresCountStore(url, timeout_s=timeout_s)
    try:
        checkpoint, state, visits = pg.handover(stream)
    finally:
        pg.close()
    local = CountStore(local_path)
    try:
        dropped = local.import_stream(stream, checkpoint, state, visits, epoch=epoch)
    finally:
        local.close()
    return Handover(checkpoint_frame=None if checkpoint is None else checkpoint[1],
                    finished=bool(checkpoint and checkpoint[2]), state=state is not None, open_visits=len(visits),
                    dropped=dropped)
