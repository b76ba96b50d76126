"""Prometheus metrics of a fleet node: this node's own (leases held, heartbeat, replication to PostgreSQL), from
the daemon's snapshot, and the fleet's (members, unowned streams, moves), from the database through the
``FleetReader`` cache. The fleet-wide series are the same on every node: alert on ``max`` or ``min`` over nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streamd.api.fleet import FleetReader, FleetUnreachable
from streamd.api.metrics import Monotonic, add_count


class FleetCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]], reader: Callable[[], FleetReader | None],
                 mono: Monotonic):
        self._snapshot = snapshot
        self._reader = reader
        self._mono = mono

    def collect(self) -> Iterator[Any]:
        node = self._snapshot().get("fleet")
        reader = self._reader()
        if node is None and reader is None:
            return  # not in a fleet and no PostgreSQL store: no such series at all
        yield from self._node(node or {})
        if reader is not None:
            yield from self._fleet(reader)

    def _node(self, node: dict[str, Any]) -> Iterator[Any]:
        owned = GaugeMetricFamily("streamd_fleet_streams_owned", "Streams this node holds a lease on (and runs).")
        beating = GaugeMetricFamily("streamd_fleet_heartbeat_ok", "1 while this node's heartbeats reach the fleet "
                                    "database; 0 during an outage (its leases run out after the lease TTL).")
        if "streams" in node:
            owned.add_metric([], float(len(node["streams"])))
            beating.add_metric([], 0.0 if node.get("outage_since") is not None else 1.0)
        yield from (owned, beating)
        replication = node.get("replication")
        store_up = GaugeMetricFamily("streamd_count_store_up", "1 when this node's last delivery attempt to the "
                                     "PostgreSQL count store succeeded.")
        lag = GaugeMetricFamily("streamd_replication_lag_changes", "Count changes recorded locally, not yet in "
                                "PostgreSQL.")
        lag_s = GaugeMetricFamily("streamd_replication_lag_seconds", "Age of the oldest change not yet in PostgreSQL.")
        delivered = CounterMetricFamily("streamd_replication_delivered", "Count changes delivered to PostgreSQL.")
        fenced = CounterMetricFamily("streamd_replication_fenced", "Count changes PostgreSQL refused because the "
                                     "stream's lease had moved to another node (their new owner counts them).")
        if replication is not None:
            store_up.add_metric([], 1.0 if replication["up"] else 0.0)
            lag.add_metric([], float(replication["lag_changes"]))
            lag_s.add_metric([], float(replication["lag_s"]))
            add_count(delivered, [], replication["delivered"], self._mono)
            add_count(fenced, [], replication["fenced"], self._mono)
        yield from (store_up, lag, lag_s, delivered, fenced)

    def _fleet(self, reader: FleetReader) -> Iterator[Any]:
        reachable = GaugeMetricFamily("streamd_fleet_db_up", "1 when the fleet database answered this scrape's "
                                      "(cached) query.")
        members = GaugeMetricFamily("streamd_fleet_member_up", "1 for a fleet member whose membership is current, "
                                    "0 for one whose heartbeats stopped.", labels=["node"])
        age = GaugeMetricFamily("streamd_fleet_member_heartbeat_age_seconds", "Seconds since the member's last "
                                "heartbeat reached the database.", labels=["node"])
        unowned = GaugeMetricFamily("streamd_fleet_streams_unowned", "Streams of the fleet config that no live "
                                    "node holds a lease on (they are not analysed).")
        moves = GaugeMetricFamily("streamd_fleet_lease_moves_last_hour", "Lease hand-overs in the whole fleet in "
                                  "the last hour.")
        moves_total = CounterMetricFamily("streamd_fleet_lease_moves", "Lease hand-overs in the whole fleet since "
                                          "its database was created (alert on its increase: leases flapping).")
        try:
            status = reader.read()
        except FleetUnreachable:
            reachable.add_metric([], 0.0)
            yield reachable
            return
        reachable.add_metric([], 1.0)
        for member in status.members:
            members.add_metric([member.node], 1.0 if member.alive else 0.0)
            age.add_metric([member.node], member.heartbeat_age_s)
        unowned.add_metric([], float(sum(1 for owner in status.owners().values() if owner is None)))
        moves.add_metric([], float(status.moves_last_hour))
        add_count(moves_total, [], status.moves_total, self._mono)
        yield from (reachable, members, age, unowned, moves, moves_total)
