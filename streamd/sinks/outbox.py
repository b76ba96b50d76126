"""Durable outbox of one network sink: a bounded SQLite (WAL) queue on disk plus a delivery thread.

Why: an MQTT broker or an HTTP endpoint goes down for minutes; the pipeline must not wait for it and
must not lose what it produced meanwhile. The sinks stage appends events here (a commit per batch of
messages, ``synchronous=FULL``: an accepted event survives a crash of the process or the host), and a
thread per sink sends the oldest rows to the target, retrying with exponential backoff and jitter while
the target is down. A row is deleted only after the target acknowledged it (MQTT PUBACK, HTTP 2xx).

Delivery is at least once: a crash between the acknowledgement and the delete sends that row again on
the next start. Every payload carries its event's stable id, so a consumer that drops ids it has seen
gets each event exactly once. An acknowledged and deleted row is never sent again.

Bounded: when ``max_rows`` or ``max_bytes`` is reached, new events are refused, counted
(``dropped_full``) and logged as an error at most every ``FULL_LOG_INTERVAL_S``; queued events are kept.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from streamd.config.models import MqttSinkConfig, OutboxConfig, WebhookSinkConfig
from streamd.ipc.messages import CountUpdate, OutboxCounters, TrackedFrame
from streamd.runtime.backoff import Backoff
from streamd.sinks.base import SinkMessage, event_id

FULL_LOG_INTERVAL_S = 10.0  # "outbox full" at most this often per sink, with the count since the last line
FAILURE_LOG_INTERVAL_S = 10.0  # same for "delivery failed" while a target stays down
PENDING_MAX = 1000  # events buffered in memory before a commit is forced

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so an in-flight map keyed by seq stays valid
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL,
    enqueued REAL NOT NULL                  -- Unix time it was accepted
);
"""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    event_id: str
    topic: str  # sink-specific address: MQTT topic, event type for the webhook
    retain: bool
    payload: bytes
    enqueued: float


@dataclass
class DeliveryResult:
    """What a delivery round achieved: acknowledged rows, rows refused for good, and why the rest failed."""

    acked: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    error: str | None = None


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One explicit write transaction (the connections run in autocommit mode otherwise)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Deliverer(Protocol):
    """Sends rows to one target. Called from the outbox's delivery thread only."""

    def deliver(self, rows: Sequence[OutboxRow], stop: threading.Event) -> DeliveryResult:
        """Send ``rows`` (oldest first); return as soon as possible once ``stop`` is set."""

    def close(self) -> None: ...


class Outbox:
    def __init__(self, name: str, path: str | Path, config: OutboxConfig, deliverer: Deliverer):
        self.name = name
        self.path = Path(path)
        self.config = config
        self.deliverer = deliverer
        self.log = structlog.get_logger().bind(sink=name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect(synchronous="FULL")
        try:
            self._db.executescript(_SCHEMA)
            rows, size = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
        except BaseException:
            self._db.close()  # e.g. not a database, or the disk is full: hold nothing, the caller retries
            raise
        self._lock = threading.Lock()  # guards the numbers below, shared with the delivery thread
        self._depth, self._bytes = int(rows), int(size)
        self._oldest: float | None = None
        self.delivered = self.retries = self.dropped_full = self.rejected = 0
        self.target_up: bool | None = None
        self.last_error: str | None = None
        self._pending: list[tuple[str, str, int, bytes, float]] = []
        self._pending_bytes = 0
        self._dropped_since_log = 0
        self._last_full_log = 0.0
        self._wake = threading.Event()
        self._draining = threading.Event()  # stop accepting, deliver what is left until the grace deadline
        self._stop = threading.Event()  # abort delivery now
        self._retry_now = threading.Event()  # end a backoff delay early
        self._thread: threading.Thread | None = None
        if self._depth:
            self.log.info("outbox_resumed", depth=self._depth, bytes=self._bytes, path=str(self.path),
                          reason="events from an earlier run were not acknowledged yet; sending them first")

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        # the producer connection may be closed from another thread (parallel close); use is never concurrent
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
        except BaseException:
            db.close()
            raise
        return db

    # --- producer side (the sinks stage's thread) -------------------------------------------------------

    def put(self, event_id: str, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Queue one event (committed by :meth:`commit`); False when the outbox is full and it was dropped."""
        size = len(payload)
        with self._lock:
            rows, held = self._depth + len(self._pending), self._bytes + self._pending_bytes
        if rows >= self.config.max_rows or held + size > self.config.max_bytes:
            self.dropped_full += 1
            self._dropped_since_log += 1
            now = time.monotonic()
            if now - self._last_full_log >= FULL_LOG_INTERVAL_S:
                self.log.error("outbox_full", dropped=self._dropped_since_log, dropped_total=self.dropped_full,
                               depth=rows, bytes=held, max_rows=self.config.max_rows, max_bytes=self.config.max_bytes,
                               target_up=self.target_up, last_error=self.last_error,
                               action="new events are dropped until the target takes the backlog; "
                                      "check the target or raise outbox.max_rows/max_bytes")
                self._last_full_log = now
                self._dropped_since_log = 0
            return False
        if len(self._pending) >= PENDING_MAX:
            self.commit()  # before this event is accepted: a put that raises took nothing
        self._pending.append((event_id, topic, int(retain), payload, time.time()))
        self._pending_bytes += size
        return True

    def commit(self) -> None:
        """Make every queued event durable (one transaction) and wake the delivery thread."""
        if not self._pending:
            return
        with _transaction(self._db) as db:
            db.executemany(
                "INSERT INTO outbox (event_id, topic, retain, payload, enqueued) VALUES (?, ?, ?, ?, ?)", self._pending
            )
        with self._lock:
            self._depth += len(self._pending)
            self._bytes += self._pending_bytes
            if self._oldest is None:
                self._oldest = self._pending[0][4]
        self._pending.clear()
        self._pending_bytes = 0
        self._wake.set()

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._deliver_loop, name=f"outbox-{self.name}", daemon=True)
        self._thread.start()

    def close(self, grace_s: float | None = None) -> None:
        """Commit, keep delivering for up to ``grace_s`` (default: config), then stop; the rest stays on disk."""
        self.commit()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        if self._thread is not None:
            self._draining.set()
            self._wake.set()
            self._thread.join(grace)
            self._stop.set()
            self._wake.set()
            self._retry_now.set()
            self._thread.join(30)
        self.deliverer.close()
        if self._depth:
            self.log.warning("outbox_left_for_next_start", depth=self._depth, bytes=self._bytes,
                             target_up=self.target_up, path=str(self.path))
        self._db.close()

    def discard(self) -> int:
        """After a failure (e.g. the disk is full): stop delivering now and close, without committing.
        Committed rows stay on disk for the next open; returns the uncommitted events, which are lost."""
        lost = len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self._stop.set()
        self._draining.set()
        self._wake.set()
        self._retry_now.set()
        if self._thread is not None:
            self._thread.join(30)
        for release in (self.deliverer.close, self._db.close):
            try:
                release()
            except Exception:  # already broken: what matters is that nothing is held any more
                self.log.debug("outbox_discard_release_failed", exc_info=True)
        return lost

    def target_ready(self) -> None:
        """The target is reachable again (called by a deliverer, any thread): retry now, not after the backoff."""
        self._retry_now.set()
        self._wake.set()

    def counters(self) -> OutboxCounters:
        with self._lock:
            oldest = self._oldest
            return OutboxCounters(
                depth=self._depth, bytes=self._bytes, delivered=self.delivered, retries=self.retries,
                dropped_full=self.dropped_full, rejected=self.rejected,
                oldest_age_s=round(max(0.0, time.time() - oldest), 3) if oldest is not None and self._depth else 0.0,
                target_up=self.target_up, last_error=self.last_error,
            )

    # --- delivery thread ---------------------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        db = self._connect(synchronous="NORMAL")  # a lost delete only means one re-send, deduped by id
        backoff = Backoff(self.config.retry)
        down_since: float | None = None
        last_failure_log = 0.0
        try:
            while not self._stop.is_set():
                rows = [OutboxRow(seq, eid, topic, bool(retain), bytes(payload), enq) for seq, eid, topic, retain, payload, enq
                        in db.execute("SELECT seq, event_id, topic, retain, payload, enqueued FROM outbox "
                                      "ORDER BY seq LIMIT ?", (self.config.batch,))]
                if not rows:
                    with self._lock:
                        self._oldest = None
                    if self._draining.is_set():
                        return
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                with self._lock:
                    self._oldest = rows[0].enqueued
                try:
                    result = self.deliverer.deliver(rows, self._stop)
                except Exception as exc:  # a bug or an unexpected library error must not end delivery for good
                    self.log.exception("outbox_deliverer_error")
                    result = DeliveryResult(error=f"{type(exc).__name__}: {exc}")
                self._remove(db, rows, result)
                if len(result.acked) + len(result.rejected) == len(rows):
                    if down_since is not None:
                        self.log.info("outbox_target_recovered", down_s=round(time.monotonic() - down_since, 1),
                                      depth=self._depth)
                        down_since = None
                    self.target_up, self.last_error = True, None
                    backoff.reset()
                    continue
                self.retries += 1
                self.target_up, self.last_error = False, result.error
                delay = backoff.next_delay()
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                if now - last_failure_log >= FAILURE_LOG_INTERVAL_S:
                    self.log.warning("outbox_delivery_failed", error=result.error, depth=self._depth,
                                     retry_in_s=round(delay, 2), down_s=round(now - down_since, 1))
                    last_failure_log = now
                if self._draining.is_set():
                    return  # the target is down: what is left waits on disk for the next start
                self._retry_now.wait(delay)  # cut short by target_ready() (e.g. MQTT reconnected) or stop
                self._retry_now.clear()
        finally:
            db.close()

    def _remove(self, db: sqlite3.Connection, rows: Sequence[OutboxRow], result: DeliveryResult) -> None:
        done = set(result.acked) | set(result.rejected)
        if not done:
            return
        removed = [r for r in rows if r.seq in done]
        with _transaction(db):
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(r.seq,) for r in removed])
        if result.rejected:
            self.log.error("outbox_events_rejected", count=len(result.rejected), error=result.error,
                           event_ids=[r.event_id for r in removed if r.seq in set(result.rejected)][:10],
                           reason="the target refused them for good; they are removed")
        with self._lock:
            self._depth -= len(removed)
            self._bytes -= sum(len(r.payload) for r in removed)
            self.delivered += len(result.acked)
            self.rejected += len(result.rejected)


class OutboxSink:
    """Sink protocol over an outbox: filters what the sink's config excludes and queues the rest under the
    event's stable id. Subclasses only say where a message goes (:meth:`route`)."""

    def __init__(self, config: MqttSinkConfig | WebhookSinkConfig, outbox: Outbox):
        self.config = config
        self.outbox = outbox
        self.written = 0

    def route(self, message: SinkMessage) -> tuple[str, bool]:
        """(topic, retain) of the message."""
        raise NotImplementedError

    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        if isinstance(message, TrackedFrame) and not self.config.include_tracks:
            return
        if isinstance(message, CountUpdate) and not self.config.include_counts:
            return
        topic, retain = self.route(message)
        if self.outbox.put(event_id(message), topic, payload_json, retain=retain):
            self.written += 1

    def flush(self) -> None:
        self.outbox.commit()

    def counters(self) -> OutboxCounters:
        return self.outbox.counters()

    def close(self) -> None:
        self.outbox.close()

    def discard(self) -> int:
        return self.outbox.discard()
