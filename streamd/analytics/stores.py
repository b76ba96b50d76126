"""Which count store a config names: SQLite at ``counts.path`` (the embedded default) or PostgreSQL at
``counts.url`` (a fleet's shared store). Both have the same interface (``CountStoreLike``).

Readers (``streamd counts``, ``/api/counts``) use ``open_count_store``: PostgreSQL, the whole fleet, when
``counts.url`` is set. The analytics stage writes ``open_analytics_store``: always the local SQLite file at
``counts.path`` (the hot path never talks to the network), with the change feed on when ``counts.url`` is set, so
that streamd.fleet.replicator ships it there."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from streamd.analytics.store import CountStore, CrossingRow, ZoneCount, ZoneEventRow
from streamd.config.models import CountsConfig


class CountStoreLike(Protocol):
    def record(self, rows: Iterable[CrossingRow], stream: str, source: str, frame: int,
               zone_events: Iterable[ZoneEventRow] = (), state: bytes | None = None,
               clear_state: bool = False, epoch: int | None = None) -> tuple[list[CrossingRow], list[ZoneEventRow]]: ...

    def finish(self, stream: str) -> None: ...

    def clear_state(self, stream: str) -> None: ...

    def stream_state(self, stream: str) -> tuple[str, int, bytes] | None: ...

    def resume_frame(self, stream: str, source: str) -> int: ...

    def counts(self, stream: str | None = None, since: float | None = None,
               until: float | None = None) -> dict[tuple[str, str, str, str], int]: ...

    def zone_counts(self, stream: str | None = None, since: float | None = None,
                    until: float | None = None) -> dict[tuple[str, str, str], ZoneCount]: ...

    def close(self) -> None: ...


def open_count_store(counts: CountsConfig, readonly: bool = False) -> CountStoreLike:
    """The PostgreSQL store when ``counts.url`` is set (its schema migrated unless ``readonly``), else the SQLite
    store at ``counts.path``."""
    if counts.url:
        from streamd.analytics.store_pg import PostgresCountStore

        return PostgresCountStore(counts.url, readonly=readonly)
    return CountStore(counts.path, readonly=readonly)


def open_analytics_store(counts: CountsConfig) -> CountStore:
    """The store the analytics stage records into: the local SQLite file at ``counts.path``; with ``counts.url``
    set, its change feed is on (streamd.fleet.replicator.Replicator delivers it to PostgreSQL)."""
    return CountStore(counts.path, change_feed=bool(counts.url))
