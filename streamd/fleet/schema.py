"""streamd's PostgreSQL schema (counts and fleet tables), versioned and migrated by streamd itself.

``MIGRATIONS`` is an ordered list; migration N (1-based) moves the schema from version N-1 to N. ``migrate`` applies
the missing ones in one transaction under a transaction-scoped advisory lock, so nodes that start at the same time
take turns: the first applies them, the others find the schema current. A database whose version is newer than
this streamd knows is refused (run the newer streamd, or roll the database back), never "migrated" downwards.
Never edit a released migration: append a new one.
"""

from __future__ import annotations

from typing import Any

from streamd.errors import StreamdError

# pg_advisory_xact_lock key: "streamd" as a number (any constant that no other application on the database uses).
ADVISORY_LOCK_KEY = 0x73747265616D64

MIGRATIONS: list[str] = [
    # 1: counts (same tables as the SQLite store) and the fleet's membership and leases
    """
    CREATE TABLE crossings (
        id TEXT PRIMARY KEY,
        stream TEXT NOT NULL,
        line TEXT NOT NULL,
        class_name TEXT NOT NULL,
        direction TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        frame BIGINT NOT NULL
    );
    CREATE INDEX crossings_by_stream_ts ON crossings (stream, ts);
    CREATE TABLE zone_visits (
        id TEXT PRIMARY KEY,
        stream TEXT NOT NULL,
        zone TEXT NOT NULL,
        class_name TEXT NOT NULL,
        entered_ts DOUBLE PRECISION NOT NULL,
        enter_frame BIGINT NOT NULL,
        exited_ts DOUBLE PRECISION,
        dwell_s DOUBLE PRECISION
    );
    CREATE INDEX zone_visits_by_stream_ts ON zone_visits (stream, entered_ts);
    CREATE TABLE checkpoints (
        stream TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        frame BIGINT NOT NULL,
        finished BOOLEAN NOT NULL DEFAULT false
    );
    CREATE TABLE stream_state (
        stream TEXT PRIMARY KEY,
        frame BIGINT NOT NULL,
        state BYTEA NOT NULL
    );
    CREATE TABLE nodes (
        node TEXT PRIMARY KEY,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE leases (
        stream TEXT PRIMARY KEY,
        owner TEXT,                                -- NULL: free
        epoch BIGINT NOT NULL DEFAULT 0,           -- +1 on every acquisition: fences the previous owner's writes
        expires_at TIMESTAMPTZ NOT NULL,
        acquired_at TIMESTAMPTZ
    );
    CREATE TABLE lease_moves (
        id BIGSERIAL PRIMARY KEY,
        stream TEXT NOT NULL,
        from_node TEXT,
        to_node TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX lease_moves_by_at ON lease_moves (at);
    -- one row: when any node last heartbeated; a long silence means the whole fleet lost the database
    CREATE TABLE fleet_clock (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_beat TIMESTAMPTZ NOT NULL
    );
    INSERT INTO fleet_clock VALUES (1, now());
    """,
    # 2: replication from the nodes' local stores (streamd.fleet.replicator): the lease epoch and node each row
    # came with, the writer's change seq for checkpoints and states (newest wins), each node's delivery watermark
    """
    ALTER TABLE crossings ADD COLUMN epoch BIGINT, ADD COLUMN node TEXT;
    ALTER TABLE zone_visits ADD COLUMN epoch BIGINT, ADD COLUMN exit_epoch BIGINT, ADD COLUMN node TEXT;
    ALTER TABLE checkpoints ADD COLUMN epoch BIGINT, ADD COLUMN node TEXT, ADD COLUMN seq BIGINT;
    ALTER TABLE stream_state ADD COLUMN epoch BIGINT, ADD COLUMN node TEXT, ADD COLUMN seq BIGINT;
    CREATE TABLE replication (
        node TEXT PRIMARY KEY,
        delivered_seq BIGINT NOT NULL,             -- the node's local change feed, delivered up to here
        fenced BIGINT NOT NULL DEFAULT 0,          -- changes refused because their lease epoch was superseded
        at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(StreamdError):
    """The database's streamd schema is missing or newer than this streamd."""


def migrate(conn: Any) -> int:
    """Bring the schema to SCHEMA_VERSION (``conn``: a psycopg connection in autocommit mode); returns the version
    found before migrating."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                     "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        found = int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise SchemaError(f"the database's streamd schema is version {found}, newer than this streamd knows "
                              f"({SCHEMA_VERSION}): run the newer streamd on every node")
        for version in range(found + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return found


def current_version(conn: Any) -> int:
    """The schema version of the database (0: no streamd schema), without changing anything."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])


def connect(url: str, timeout_s: float = 5.0) -> Any:
    """An autocommit psycopg connection to ``url`` that gives up on a dead peer within about ``timeout_s``:
    connect timeout, TCP keepalives and TCP_USER_TIMEOUT, so a black-holed network raises instead of hanging."""
    import psycopg

    seconds = max(1, int(timeout_s))
    return psycopg.connect(url, autocommit=True, connect_timeout=seconds, keepalives=1, keepalives_idle=seconds,
                           keepalives_interval=1, keepalives_count=3, tcp_user_timeout=seconds * 1000,
                           application_name="streamd")
