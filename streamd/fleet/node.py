"""One node of a fleet: membership and per-stream leases in PostgreSQL, renewed by a heartbeat.

Call ``tick()`` every ``heartbeat_s`` (or ``heartbeat()`` then ``owned()``): it renews this node's membership and
the leases it holds, then acquires the streams assigned to it (streamd.fleet.assign over the live nodes) whose
lease is free or expired -- each acquisition increments the stream's epoch -- and releases the ones assigned
elsewhere. ``owned()`` is {stream: epoch}: analyse exactly these streams and pass the epoch to the count store
(``record(..., epoch=...)``), which refuses a write whose epoch is no longer current (fencing).

Time: the database's clock decides when a lease expires (``now() + ttl`` at each renewal), so nodes' clocks need
not agree. Each node also keeps its own, earlier, deadline per lease: the monotonic time it sent the renewal plus
the TTL. When the database cannot be reached, ``owned()`` keeps returning the leases whose own deadline has not
passed (so a node drops its streams no sooner than their leases could have been taken), then none; a lease whose
own deadline passed is kept aside and extended, same epoch, on reconnection if nobody took it meanwhile.

An outage every node saw moves no lease: each heartbeat stamps ``fleet_clock``; the first heartbeat after a
silence of the whole fleet (longer than two heartbeats) extends every lease and membership that was current when the
silence began by one TTL, so those nodes have a full TTL to come back before anyone's lease can be taken (nodes that
were already dead stay dead).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from streamd.config.fleet import lease_ttl_s
from streamd.errors import StreamdError
from streamd.fleet.assign import assign
from streamd.fleet.schema import connect, migrate
from streamd.redact import redact


class FleetUnavailable(StreamdError):
    """The fleet's database cannot be reached; the node keeps its leases until their TTL would have run out."""


@dataclass(frozen=True)
class HeldLease:
    stream: str
    epoch: int
    deadline: float  # this node's clock: the lease is surely still ours before it


class FleetNode:
    def __init__(self, url: str, node_id: str, streams: Iterable[str], failover_s: float = 15.0,
                 heartbeat_s: float = 3.0, *, hold_through_outage: bool = False, drain_before_release: bool = False,
                 clock: Callable[[], float] = time.monotonic, connect_timeout_s: float | None = None):
        """``drain_before_release``: a stream the assignment moves elsewhere is not released at once but
        *draining* -- no longer in ``owned()``, its lease still renewed (so nobody else runs it yet) -- until the
        caller has stopped it and delivered its last counts and calls ``release(stream)``; after ``failover_s`` it
        is released anyway. Without it, such a lease is released in the same tick."""
        if heartbeat_s * 4 > failover_s:
            raise ValueError(f"heartbeat_s {heartbeat_s:g} is too long for failover_s {failover_s:g}: use at most "
                             f"{failover_s / 4:g}")
        self.url = url
        self.node_id = node_id
        self.failover_s = failover_s
        self.heartbeat_s = heartbeat_s
        self.ttl_s = lease_ttl_s(failover_s, heartbeat_s)
        self.hold_through_outage = hold_through_outage
        self._clock = clock
        self._timeout_s = connect_timeout_s if connect_timeout_s is not None else max(1.0, heartbeat_s)
        self._streams = sorted(set(streams))
        self._held: dict[str, HeldLease] = {}
        self.drain_before_release = drain_before_release
        self._draining: dict[str, tuple[HeldLease, float]] = {}  # stream -> (lease, when draining began)
        self._lock = threading.Lock()
        self._db: Any = None
        self._migrated = False
        self._beat_ok = False  # the last heartbeat reached the database
        self._joined_at: float | None = None  # this process's first heartbeat that reached the database
        self.outage_since: float | None = None
        self.last_error: str | None = None
        self.log = structlog.get_logger().bind(node=node_id)

    # ---- connection -------------------------------------------------------------------------------------

    def _conn(self) -> Any:
        if self._db is None or self._db.closed or self._db.broken:
            if self._db is not None:
                self._db.close()
            self._db = None
            self._db = connect(self.url, self._timeout_s)
            if not self._migrated:
                migrate(self._db)
                self._migrated = True
        return self._db

    def _failed(self, exc: Exception) -> FleetUnavailable:
        if self._db is not None:
            try:
                self._db.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may raise anything
                pass
            self._db = None
        self._beat_ok = False
        message = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        if self.outage_since is None:
            self.outage_since = self._clock()
            self.log.warning("fleet_db_unreachable", error=message, leases=len(self._held),
                             action=f"keeping leases until their TTL ({self.ttl_s:g} s) would run out")
        self.last_error = message
        return FleetUnavailable(f"node {self.node_id}: fleet database {redact(self.url)} unreachable: {message}")

    def _recovered(self) -> None:
        self._beat_ok = True
        if self._joined_at is None:
            self._joined_at = self._clock()
        if self.outage_since is not None:
            self.log.info("fleet_db_reachable", down_s=round(self._clock() - self.outage_since, 1),
                          leases=len(self._held))
            self.outage_since = None
            self.last_error = None

    # ---- the API ---------------------------------------------------------------------------------------

    def set_streams(self, streams: Iterable[str]) -> None:
        """The configured streams changed (a reload): the next ``owned()`` releases leases of removed ones."""
        with self._lock:
            self._streams = sorted(set(streams))

    def tick(self) -> dict[str, int]:
        """``heartbeat()`` then ``owned()``; a database outage is logged (once) and not raised."""
        try:
            self.heartbeat()
        except FleetUnavailable:
            pass
        return self.owned()

    def heartbeat(self) -> None:
        """Renew this node's membership and the leases it holds, in one transaction; a lease that another node took
        is dropped. Raises FleetUnavailable when the database cannot be reached (the leases are kept)."""
        import psycopg

        ttl = self.ttl_s
        gap = max(2 * self.heartbeat_s, self.heartbeat_s + 2.0)
        sent = self._clock()
        with self._lock:
            mine = list(self._held.values()) + [lease for lease, _ in self._draining.values()]
        try:
            db = self._conn()
            with db.transaction():
                silent, last_beat = db.execute(
                    "SELECT now() - last_beat > make_interval(secs => %s), last_beat FROM fleet_clock "
                    "WHERE id = 1 FOR UPDATE", (gap,)).fetchone()
                if silent:  # nobody reached the database: who was current then gets a full TTL to come back
                    extended = db.execute(
                        "UPDATE leases SET expires_at = greatest(expires_at, now() + make_interval(secs => %s)) "
                        "WHERE owner IS NOT NULL AND expires_at > %s", (ttl, last_beat)).rowcount
                    db.execute("UPDATE nodes SET expires_at = greatest(expires_at, now() + make_interval(secs => %s)) "
                               "WHERE expires_at > %s", (ttl, last_beat))
                    self.log.info("fleet_silence_credit", leases=extended, ttl_s=ttl,
                                  reason="no node reached the database for a while; no lease moves because of it")
                db.execute("UPDATE fleet_clock SET last_beat = now() WHERE id = 1")
                db.execute("INSERT INTO nodes (node, expires_at) VALUES (%s, now() + make_interval(secs => %s)) "
                           "ON CONFLICT (node) DO UPDATE SET heartbeat_at = now(), expires_at = excluded.expires_at",
                           (self.node_id, ttl))
                kept = db.execute(
                    "UPDATE leases SET expires_at = now() + make_interval(secs => %s) "
                    "FROM unnest(%s::text[], %s::bigint[]) AS h(stream, epoch) "
                    "WHERE leases.stream = h.stream AND leases.epoch = h.epoch AND leases.owner = %s "
                    "RETURNING leases.stream, leases.epoch",
                    (ttl, [h.stream for h in mine], [h.epoch for h in mine], self.node_id)).fetchall()
                db.execute("DELETE FROM nodes WHERE expires_at < now() - interval '1 hour'")
                db.execute("DELETE FROM lease_moves WHERE at < now() - interval '1 day'")
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        renewed = {str(s): int(e) for s, e in kept}
        with self._lock:
            for h in mine:
                draining = self._draining.get(h.stream)
                if draining is not None and draining[0] == h:
                    if renewed.get(h.stream) == h.epoch:
                        self._draining[h.stream] = (HeldLease(h.stream, h.epoch, sent + ttl), draining[1])
                    else:
                        del self._draining[h.stream]
                elif renewed.get(h.stream) == h.epoch:
                    self._held[h.stream] = HeldLease(h.stream, h.epoch, sent + ttl)
                elif self._held.get(h.stream) == h:
                    del self._held[h.stream]
                    self.log.warning("lease_lost", stream=h.stream, epoch=h.epoch,
                                     reason="another node holds the stream now")
        self._recovered()

    def owned(self) -> dict[str, int]:
        """{stream: epoch} this node should analyse now. Acquires the streams assigned to it whose lease is free or
        expired and releases those assigned elsewhere (when the database answers and this node's membership is
        current); without the database, the leases held whose own deadline has not passed."""
        import psycopg

        if self._beat_ok:
            try:
                self._rebalance()
            except psycopg.Error as exc:
                self._failed(exc)
        now = self._clock()
        with self._lock:
            return {h.stream: h.epoch for h in sorted(self._held.values(), key=lambda h: h.stream)
                    if self.hold_through_outage or h.deadline > now}

    def _rebalance(self) -> None:
        ttl = self.ttl_s
        sent = self._clock()
        with self._lock:
            streams = list(self._streams)
            mine = dict(self._held)
            draining = {s: lease for s, (lease, since) in self._draining.items()}
            overdue = [lease for lease, since in self._draining.values() if sent - since > self.failover_s]
        db = self._conn()
        acquired: dict[str, int] = {}
        released: list[HeldLease] = []
        started_draining: list[HeldLease] = []
        for lease in overdue:
            self.log.warning("lease_drain_timeout", stream=lease.stream, epoch=lease.epoch, after_s=self.failover_s,
                             reason="the stream's last counts were not delivered in time; releasing anyway")
            self.release(lease.stream)
        with db.transaction():
            live = [str(r[0]) for r in db.execute("SELECT node FROM nodes WHERE expires_at > now()").fetchall()]
            if self.node_id not in live:
                return  # our membership lapsed: take nothing until a heartbeat renews it
            rows = db.execute("SELECT stream, owner FROM leases WHERE owner IS NOT NULL AND expires_at > now() "
                              "AND stream = ANY(%s)", (streams,)).fetchall()
            current = {str(s): str(o) for s, o in rows}
            target = assign(streams, live, current)
            for h in mine.values():
                if target.get(h.stream) != self.node_id:
                    with self._lock:  # stop owning it here before the release can let another node take it
                        if self._held.get(h.stream) == h:
                            del self._held[h.stream]
                            if self.drain_before_release:
                                self._draining[h.stream] = (h, sent)
                    if self.drain_before_release:
                        started_draining.append(h)
                        continue
                    db.execute("UPDATE leases SET expires_at = now() WHERE stream = %s AND owner = %s AND epoch = %s",
                               (h.stream, self.node_id, h.epoch))
                    released.append(h)
            for s, h in draining.items():
                if target.get(s) == self.node_id:  # assigned back before it was handed over: run it again
                    with self._lock:
                        if self._draining.get(s, (None,))[0] == h:
                            del self._draining[s]
                            self._held[s] = h
                    self.log.info("lease_kept", stream=s, epoch=h.epoch, reason="assigned back while draining")
            wanted = [s for s, n in target.items() if n == self.node_id and s not in mine and s not in draining]
            if self._joined_at is None or sent - self._joined_at < self.heartbeat_s:
                wanted = []  # just joined: let nodes that start at the same time see each other first
            if wanted:
                db.execute("INSERT INTO leases (stream, owner, epoch, expires_at) "
                           "SELECT s, NULL, 0, '-infinity' FROM unnest(%s::text[]) AS s ON CONFLICT DO NOTHING",
                           (wanted,))
            for s in wanted:
                row = db.execute("SELECT owner, expires_at <= now() FROM leases WHERE stream = %s "
                                 "FOR UPDATE SKIP LOCKED", (s,)).fetchone()
                if row is None:
                    continue  # another node is changing it right now: next tick
                previous, expired = row
                if previous is not None and not expired and previous != self.node_id:
                    continue  # still held: its owner releases it at its next tick, or it expires
                epoch = int(db.execute(
                    "UPDATE leases SET owner = %s, epoch = epoch + 1, expires_at = now() + make_interval(secs => %s), "
                    "acquired_at = now() WHERE stream = %s RETURNING epoch", (self.node_id, ttl, s)).fetchone()[0])
                db.execute("INSERT INTO lease_moves (stream, from_node, to_node, epoch) VALUES (%s, %s, %s, %s)",
                           (s, previous, self.node_id, epoch))
                acquired[s] = epoch
        with self._lock:
            for s, epoch in acquired.items():
                self._held[s] = HeldLease(s, epoch, sent + ttl)
        for h in released:
            self.log.info("lease_released", stream=h.stream, epoch=h.epoch, to=target.get(h.stream))
        for h in started_draining:
            self.log.info("lease_draining", stream=h.stream, epoch=h.epoch, to=target.get(h.stream),
                          action="stopping the stream and delivering its last counts before the release")
        for s, epoch in acquired.items():
            self.log.info("lease_acquired", stream=s, epoch=epoch)

    def draining(self) -> list[str]:
        """Streams assigned elsewhere that this node still holds until ``release`` (drain_before_release)."""
        with self._lock:
            return sorted(self._draining)

    def release(self, stream: str, delivered: bool = True) -> bool:
        """Hand a draining stream over: its lease expires now, and the node it is assigned to takes it at its next
        tick. ``delivered``: whether its last counts reached the store (logged). False when the database did not
        answer (the lease is kept draining and renewed; it is tried again, or expires)."""
        import psycopg

        with self._lock:
            entry = self._draining.get(stream)
        if entry is None:
            return False
        lease, since = entry
        try:
            db = self._conn()
            db.execute("UPDATE leases SET expires_at = now() WHERE stream = %s AND owner = %s AND epoch = %s",
                       (stream, self.node_id, lease.epoch))
        except psycopg.Error as exc:
            self._failed(exc)
            return False
        with self._lock:
            if self._draining.get(stream, (None,))[0] == lease:
                del self._draining[stream]
        self.log.info("lease_released", stream=stream, epoch=lease.epoch, drained=delivered,
                      drain_s=round(self._clock() - since, 2))
        return True

    def leave(self) -> None:
        """Graceful stop: release every lease and the membership now, so the others take the streams at their next
        tick instead of after the TTL. Best effort: without the database the leases simply expire."""
        import psycopg

        with self._lock:
            mine = list(self._held.values()) + [lease for lease, _ in self._draining.values()]
            self._held.clear()
            self._draining.clear()
        try:
            db = self._conn()
            with db.transaction():
                for h in mine:
                    db.execute("UPDATE leases SET expires_at = now() WHERE stream = %s AND owner = %s AND epoch = %s",
                               (h.stream, self.node_id, h.epoch))
                db.execute("DELETE FROM nodes WHERE node = %s", (self.node_id,))
        except psycopg.Error as exc:
            self._failed(exc)
        self.log.info("fleet_left", leases=len(mine))

    def close(self) -> None:
        """Close the connection without releasing anything (a crash looks the same to the others)."""
        if self._db is not None:
            self._db.close()
            self._db = None
