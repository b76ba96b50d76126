"""PostgreSQL count store: the SQLite store's semantics on a real throwaway PostgreSQL, the versioned schema
(concurrent migration), lease-epoch fencing, the store factory and counts.url validation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamd.analytics.store import CountStore, CrossingRow, ZoneCount, ZoneEventRow
from streamd.analytics.stores import CountStoreLike, open_count_store
from streamd.config.models import CountsConfig
from tests.pg_helpers import pg_server, pg_url  # noqa: F401 - fixtures



def row(i: str, ts: float, cls: str = "car", direction: str = "in", stream: str = "cam") -> CrossingRow:
    return CrossingRow(id=i, stream=stream, line="south", class_name=cls, direction=direction, ts=ts, frame=int(ts))


def zone_event(visit: str, kind: str, ts: float, dwell: float | None = None) -> ZoneEventRow:
    return ZoneEventRow(id=visit if kind == "enter" else f"{visit}/exit", visit_id=visit, stream="cam", zone="door",
                        class_name="person", kind=kind, ts=ts, frame=int(ts), dwell_s=dwell)


Opener = Callable[..., CountStoreLike]


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the same store (a fresh one per test) again and again: ``opener(readonly=False)``."""
    opened: list[CountStoreLike] = []
    if request.param == "sqlite":
        config = CountsConfig(path=str(tmp_path / "counts.db"))
    else:
        config = CountsConfig(url=request.getfixturevalue("pg_url"))

    def open_(readonly: bool = False) -> CountStoreLike:
        store = open_count_store(config, readonly=readonly)
        opened.append(store)
        return store

    yield open_
    for s in opened:
        s.close()


def test_factory_picks_the_store_the_config_names(tmp_path: Path, pg_url: str) -> None:
    from streamd.analytics.store_pg import PostgresCountStore

    sqlite = open_count_store(CountsConfig(path=str(tmp_path / "c.db")))
    assert isinstance(sqlite, CountStore)
    sqlite.close()
    pg = open_count_store(CountsConfig(url=pg_url, path=str(tmp_path / "unused.db")))
    assert isinstance(pg, PostgresCountStore)
    pg.close()
    assert not (tmp_path / "unused.db").exists()


def test_replayed_events_count_once(opener: Opener) -> None:
    store = opener()
    assert [r.id for r in store.record([row("a", 1), row("b", 2)], "cam", "src", 10)[0]] == ["a", "b"]
    assert [r.id for r in store.record([row("b", 2), row("c", 3, cls="bus")], "cam", "src", 11)[0]] == ["c"]
    assert store.counts() == {("cam", "south", "bus", "in"): 1, ("cam", "south", "car", "in"): 2}
    assert store.counts(since=2, until=3) == {("cam", "south", "car", "in"): 1}
    assert store.counts("other") == {}


def test_counts_are_readable_while_written_and_survive_reopening(opener: Opener) -> None:
    writer = opener()
    writer.record([row("a", 1)], "cam", "src", 5)
    reader = opener(readonly=True)
    assert reader.counts("cam") == {("cam", "south", "car", "in"): 1}
    writer.record([row("b", 2, direction="out")], "cam", "src", 6)
    assert sum(reader.counts("cam").values()) == 2
    writer.close()
    assert sum(opener().counts().values()) == 2


def test_resume_frame_only_for_an_unfinished_run_of_the_same_source(opener: Opener) -> None:
    store = opener()
    assert store.resume_frame("cam", "file-v1") == 0
    store.record([], "cam", "file-v1", 41)
    assert store.resume_frame("cam", "file-v1") == 42
    assert store.resume_frame("cam", "file-v2") == 0
    store.finish("cam")
    assert store.resume_frame("cam", "file-v1") == 0
    store.record([], "cam", "file-v1", 3)
    assert store.resume_frame("cam", "file-v1") == 4


def test_zone_visits_replay_once_and_give_dwell(opener: Opener) -> None:
    store = opener()
    _, added = store.record([], "cam", "src", 1, [zone_event("v1", "enter", 1.0), zone_event("v2", "enter", 2.0)])
    assert [z.id for z in added] == ["v1", "v2"]
    _, added = store.record([], "cam", "src", 2, [zone_event("v1", "enter", 1.0),
                                                  zone_event("v1", "exit", 5.0, dwell=4.0)])
    assert [z.id for z in added] == ["v1/exit"]
    _, added = store.record([], "cam", "src", 3, [zone_event("v1", "exit", 5.0, dwell=4.0)])
    assert added == []
    assert store.zone_counts() == {("cam", "door", "person"): ZoneCount(visits=2, exits=1, mean_dwell_s=4.0)}
    assert store.zone_counts(since=1.5) == {("cam", "door", "person"): ZoneCount(visits=1, exits=0, mean_dwell_s=None)}


def test_stream_state_is_stored_with_its_checkpoint(opener: Opener) -> None:
    store = opener()
    store.record([], "cam", "src", 10, state=b"after-10")
    assert store.stream_state("cam") == ("src", 10, b"after-10")
    assert store.stream_state("other") is None
    store.record([], "cam", "src", 11)
    assert store.stream_state("cam") is None
    store.record([], "cam", "src", 12, state=b"after-12")
    store.close()
    reopened = opener()
    assert reopened.stream_state("cam") == ("src", 12, b"after-12")
    reopened.record([], "cam", "src", 12, clear_state=True)
    assert reopened.stream_state("cam") is None
    reopened.record([], "cam", "src", 13, state=b"after-13")
    reopened.finish("cam")
    assert reopened.stream_state("cam") is None
    reopened.record([], "cam", "src", 14, state=b"\x00\xff binary")
    assert reopened.stream_state("cam") == ("src", 14, b"\x00\xff binary")
    reopened.clear_state("cam")
    assert reopened.stream_state("cam") is None


def test_a_failed_record_stores_nothing(opener: Opener) -> None:
    store = opener()
    store.record([row("a", 1)], "cam", "src", 1)
    bad = CrossingRow(id="b", stream="cam", line="south", class_name="car", direction="in", ts=object(), frame=2)  # type: ignore[arg-type]
    with pytest.raises(Exception):
        store.record([row("c", 3), bad], "cam", "src", 2)
    assert sum(store.counts().values()) == 1
    assert store.resume_frame("cam", "src") == 2  # the checkpoint of the failed frame did not land
    assert [r.id for r in store.record([row("c", 3)], "cam", "src", 2)[0]] == ["c"]  # the connection is usable


def test_readonly_postgres_store_without_schema_says_so(pg_url: str) -> None:
    from streamd.fleet.schema import SchemaError

    with pytest.raises(SchemaError, match="has the daemon run yet"):
        open_count_store(CountsConfig(url=pg_url), readonly=True)


def test_readonly_postgres_store_refuses_writes(pg_url: str) -> None:
    open_count_store(CountsConfig(url=pg_url)).close()
    reader = open_count_store(CountsConfig(url=pg_url), readonly=True)
    with pytest.raises(Exception, match="read-only"):
        reader.record([row("a", 1)], "cam", "src", 1)
    reader.close()


def test_nodes_starting_at_once_migrate_the_schema_once(pg_url: str) -> None:
    from streamd.analytics.store_pg import PostgresCountStore
    from streamd.fleet.schema import SCHEMA_VERSION, connect

    errors: list[BaseException] = []
    stores: list[PostgresCountStore] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        try:
            stores.append(PostgresCountStore(pg_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with connect(pg_url) as conn:
        assert conn.execute("SELECT array_agg(version ORDER BY version) FROM schema_version").fetchone()[0] == \
            list(range(1, SCHEMA_VERSION + 1))
    for s in stores:
        s.close()


def test_a_schema_newer_than_this_streamd_is_refused(pg_url: str) -> None:
    from streamd.analytics.store_pg import PostgresCountStore
    from streamd.fleet.schema import SCHEMA_VERSION, SchemaError, connect

    PostgresCountStore(pg_url).close()
    with connect(pg_url) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaError, match="newer than this streamd"):
        PostgresCountStore(pg_url)
    with pytest.raises(SchemaError, match="newer than this streamd"):
        PostgresCountStore(pg_url, readonly=True)


def test_a_write_with_a_superseded_epoch_is_fenced(pg_url: str) -> None:
    from streamd.analytics.store_pg import FencedError, PostgresCountStore
    from streamd.fleet.schema import connect

    store = PostgresCountStore(pg_url)
    with pytest.raises(FencedError, match="no lease"):
        store.record([row("a", 1)], "cam", "src", 1, epoch=1)
    with connect(pg_url) as conn:
        conn.execute("INSERT INTO leases (stream, owner, epoch, expires_at) VALUES ('cam', 'n1', 1, now())")
    assert len(store.record([row("a", 1)], "cam", "src", 1, epoch=1)[0]) == 1
    with connect(pg_url) as conn:  # another node takes the stream over
        conn.execute("UPDATE leases SET owner = 'n2', epoch = 2 WHERE stream = 'cam'")
    with pytest.raises(FencedError, match="epoch 1 refused.*epoch 2, owner n2"):
        store.record([row("b", 2)], "cam", "src", 2, zone_events=[zone_event("v", "enter", 2)], state=b"s", epoch=1)
    assert store.counts() == {("cam", "south", "car", "in"): 1}
    assert store.zone_counts() == {}
    assert store.resume_frame("cam", "src") == 2 and store.stream_state("cam") is None
    assert len(store.record([row("b", 2)], "cam", "src", 2, epoch=2)[0]) == 1
    assert len(store.record([row("c", 3)], "cam", "src", 3)[0]) == 1  # no epoch: a single node, unfenced
    store.close()


def test_the_store_reconnects_after_its_connection_breaks(pg_url: str) -> None:
    from streamd.analytics.store_pg import PostgresCountStore
    from streamd.fleet.schema import connect

    store = PostgresCountStore(pg_url)
    store.record([row("a", 1)], "cam", "src", 1)
    with connect(pg_url) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND pid <> pg_backend_pid()")
    with pytest.raises(Exception):
        store.record([row("b", 2)], "cam", "src", 2)
    assert [r.id for r in store.record([row("b", 2)], "cam", "src", 2)[0]] == ["b"]
    assert sum(store.counts().values()) == 2
    store.close()


@pytest.mark.parametrize("url", ["mysql://u:hunter2@db/x", "sqlite:///tmp/x.db", "https://u:hunter2@db/x"])
def test_counts_url_must_be_postgres_and_is_never_echoed(tmp_path: Path, url: str) -> None:
    from streamd.config.loader import load_config
    from streamd.errors import ConfigError

    config = tmp_path / "streamd.yaml"
    config.write_text("streams:\n  - name: cam\n    url: rtsp://127.0.0.1:8554/x\n    pipeline: p\n"
                      "pipelines:\n  p:\n    model: /opt/models/m.onnx\n"
                      f"counts:\n  url: {url}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config, env={}, check_paths=False)
    assert "not a PostgreSQL URL" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_counts_url_with_a_password_from_the_environment(tmp_path: Path) -> None:
    from streamd.config.loader import load_config

    config = tmp_path / "streamd.yaml"
    config.write_text("streams:\n  - name: cam\n    url: rtsp://127.0.0.1:8554/x\n    pipeline: p\n"
                      "pipelines:\n  p:\n    model: /opt/models/m.onnx\n"
                      "counts:\n  url: postgresql://streamd:${PGPASSWORD}@db:5432/streamd\n")
    loaded = load_config(config, env={"PGPASSWORD": "hunter2"}, check_paths=False)
    assert loaded.config.counts.url == "postgresql://streamd:hunter2@db:5432/streamd"
    assert "hunter2" not in repr(loaded.config.counts)


def test_the_store_repr_hides_the_password(pg_url: str) -> None:
    from streamd.analytics.store_pg import PostgresCountStore

    url = pg_url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores the password
    store = PostgresCountStore(url)
    assert "hunter2" not in repr(store)
    store.close()
