"""Fleet: rendezvous assignment (pure), and FleetNode membership, leases, failover, fencing and database outages
against a real throwaway PostgreSQL, with several nodes as threads on one database."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamd.analytics.store import CrossingRow
from streamd.config.fleet import FleetConfig, lease_ttl_s
from streamd.fleet.assign import assign, moved
from tests.pg_helpers import Proxy, pg_server, pg_url  # noqa: F401 - fixtures

# ---- assignment (pure) ------------------------------------------------------------------------------------


def _names(prefix: str, n: int, rng: random.Random) -> list[str]:
    return [f"{prefix}-{rng.getrandbits(32):08x}" for _ in range(n)]


@pytest.mark.parametrize("streams", [1, 2, 3, 5, 6, 7, 10, 13, 40, 100])
def test_joins_move_at_most_ceil_s_over_n_plus_one_and_leaves_only_the_leavers_streams(streams: int) -> None:
    rng = random.Random(streams)
    for _ in range(40):
        names = _names("cam", streams, rng)
        pool = _names("streamd", 8, rng)
        nodes = pool[:rng.randint(1, 3)]
        current = assign(names, nodes)
        for _ in range(8):
            if len(nodes) > 1 and rng.random() < 0.4:
                gone = rng.choice(nodes)
                nodes = [n for n in nodes if n != gone]
                after = assign(names, nodes, current)
                assert moved(current, after) == {s for s, n in current.items() if n == gone}
            else:
                joiner = rng.choice([p for p in pool if p not in nodes] or [None])
                if joiner is None:
                    continue
                nodes = [*nodes, joiner]
                after = assign(names, nodes, current)
                assert len(moved(current, after)) <= math.ceil(streams / len(nodes)) + 1
            assert sorted(after) == sorted(names)  # every stream exactly one owner
            loads = Counter(after.values())
            assert max(loads.values()) <= math.ceil(streams / len(nodes))
            assert set(after.values()) <= set(nodes)
            assert assign(names, nodes, after) == after  # stable: applying it again moves nothing
            current = after


def test_three_four_two_nodes() -> None:
    streams = [f"line-{i}" for i in range(6)]
    three = assign(streams, ["a", "b", "c"])
    four = assign(streams, ["a", "b", "c", "d"], three)
    two = assign(streams, ["a", "c"], four)
    assert Counter(three.values()) == Counter({"a": 2, "b": 2, "c": 2})
    assert len(moved(three, four)) <= math.ceil(6 / 4) + 1 and "d" in four.values()
    assert moved(four, two) == {s for s, n in four.items() if n in ("b", "d")}
    assert sorted(Counter(two.values()).values()) == [3, 3]


def test_assignment_is_deterministic_whatever_the_order_and_ignores_stale_holders() -> None:
    streams = [f"cam{i}" for i in range(9)]
    base = assign(streams, ["n1", "n2", "n3"])
    assert assign(list(reversed(streams)), ["n3", "n1", "n2", "n1"]) == base
    assert assign(streams, ["n1", "n2", "n3"], {"cam0": "dead", "gone": "n1"}) == base
    assert assign(streams, []) == {} and assign([], ["n1"]) == {}


def test_without_holders_it_is_rendezvous_hashing_with_a_cap() -> None:
    streams = [f"s{i}" for i in range(200)]
    plain = assign(streams, ["n1", "n2", "n3", "n4"])
    assert Counter(plain.values()) == Counter({"n1": 50, "n2": 50, "n3": 50, "n4": 50})


def test_fleet_config() -> None:
    from pydantic import ValidationError

    config = FleetConfig()
    assert config.enabled is False and config.node_id and config.failover_s == 15 and config.heartbeat_s == 3
    assert config.lease_ttl_s == pytest.approx(15 - 4.5 - 1.5)  # notice, margin, the survivor's start
    with pytest.raises(ValidationError, match="too long for failover_s"):
        FleetConfig(failover_s=10, heartbeat_s=5)
    with pytest.raises(ValidationError):
        FleetConfig(node_id="bad name")
    with pytest.raises(ValidationError):
        FleetConfig(extra=1)  # type: ignore[call-arg]


# ---- nodes on a real PostgreSQL ---------------------------------------------------------------------------

FAILOVER_S = 3.0
HEARTBEAT_S = 0.5
STREAMS = [f"cam-{i}" for i in range(6)]


class Runner:
    """A FleetNode ticking every heartbeat in its own thread, as the daemon's fleet loop would."""

    def __init__(self, url: str, node_id: str, streams: list[str] = STREAMS, **kwargs: Any):
        from streamd.fleet.node import FleetNode

        self.node = FleetNode(url, node_id, streams, FAILOVER_S, HEARTBEAT_S, **kwargs)
        self.node_id = node_id
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"fleet-{node_id}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.node.tick()
            self._stop.wait(max(0.0, HEARTBEAT_S - (time.monotonic() - started)))

    def owned(self) -> dict[str, int]:
        return self.node.owned() if False else self._owned_now()

    def _owned_now(self) -> dict[str, int]:
        with self.node._lock:  # the node's view without touching the database
            now = time.monotonic()
            return {h.stream: h.epoch for h in self.node._held.values()
                    if self.node.hold_through_outage or h.deadline > now}

    def kill(self) -> None:
        """Stop heartbeating without releasing anything: to the others it is a dead node."""
        self._stop.set()
        self.thread.join(30)
        self.node.close()

    def leave(self) -> None:
        self._stop.set()
        self.thread.join(30)
        self.node.leave()
        self.node.close()


@pytest.fixture
def fleet(pg_url: str) -> Iterator[Callable[..., Runner]]:
    from streamd.fleet.schema import connect, migrate

    with connect(pg_url) as conn:
        migrate(conn)
    runners: list[Runner] = []

    def start(node_id: str, url: str | None = None, **kwargs: Any) -> Runner:
        r = Runner(url or pg_url, node_id, **kwargs)
        runners.append(r)
        return r

    yield start
    for r in runners:
        r.kill()


def db_leases(url: str) -> dict[str, tuple[str | None, int, bool]]:
    from streamd.fleet.schema import connect

    with connect(url) as conn:
        return {s: (o, int(e), bool(v)) for s, o, e, v in conn.execute(
            "SELECT stream, owner, epoch, owner IS NOT NULL AND expires_at > now() FROM leases").fetchall()}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def owners(runners: list[Runner]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in runners:
        for s in r.owned():
            out.setdefault(s, []).append(r.node_id)
    return out


def settled(runners: list[Runner], url: str, streams: list[str] = STREAMS) -> bool:
    """Every stream owned by exactly one runner, with the database's current epoch, and the assignment stable."""
    views = {r.node_id: r.owned() for r in runners}
    leases = db_leases(url)
    held = [(s, n, e) for n, v in views.items() for s, e in v.items()]
    if sorted(s for s, _, _ in held) != sorted(streams):
        return False
    live = [r.node_id for r in runners]
    current = {s: n for s, n, _ in held}
    return all(leases[s][:2] == (n, e) for s, n, e in held) and assign(streams, live, current) == current


class Monitor:
    """Samples every runner's view in a loop and records any stream seen owned by two nodes at once."""

    def __init__(self, runners: list[Runner]):
        self.runners = runners
        self.doubles: list[tuple[str, list[str]]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for s, nodes in owners(self.runners).items():
                if len(nodes) > 1:
                    self.doubles.append((s, nodes))
            time.sleep(0.01)

    def stop(self) -> list[tuple[str, list[str]]]:
        self._stop.set()
        self.thread.join(10)
        return self.doubles


def test_three_nodes_share_six_streams_one_owner_each(fleet: Callable[..., Runner], pg_url: str) -> None:
    runners = [fleet(n) for n in ("node-a", "node-b", "node-c")]
    wait_until(lambda: settled(runners, pg_url), 20, "six streams spread over three nodes")
    assert sorted(len(r.owned()) for r in runners) == [2, 2, 2]


def test_a_dead_nodes_streams_move_to_the_survivors_within_failover(fleet: Callable[..., Runner], pg_url: str) -> None:
    runners = [fleet(n) for n in ("node-a", "node-b", "node-c")]
    wait_until(lambda: settled(runners, pg_url), 20, "initial spread")
    monitor = Monitor(runners)
    times = []
    for victim_id, survivors_ids in (("node-b", ("node-a", "node-c")), ("node-c", ("node-a",))):
        victim = next(r for r in runners if r.node_id == victim_id)
        lost = set(victim.owned())
        victim.kill()
        survivors = [r for r in runners if r.node_id in survivors_ids]
        killed_at = time.monotonic()
        wait_until(lambda: lost <= set(owners(survivors)), FAILOVER_S + 3, f"{victim_id}'s streams taken over")
        times.append(time.monotonic() - killed_at)
        runners = survivors
        monitor.runners = runners
        wait_until(lambda: settled(runners, pg_url), 10, "settled after the failover")
    assert monitor.stop() == []
    assert all(t <= FAILOVER_S + 1.0 for t in times), times


def test_a_node_whose_lease_was_taken_cannot_record(fleet: Callable[..., Runner], pg_url: str) -> None:
    from streamd.analytics.store_pg import FencedError, PostgresCountStore

    a = fleet("node-a", streams=["cam"])
    wait_until(lambda: "cam" in a.owned(), 10, "node-a owns cam")
    epoch = a.owned()["cam"]
    store = PostgresCountStore(pg_url)
    row = CrossingRow("x1", "cam", "l", "car", "in", 1.0, 1)
    assert store.record([row], "cam", "src", 1, epoch=epoch)[0] == [row]
    a.kill()  # node-a is gone (or cut off); node-b takes cam over with a new epoch
    b = fleet("node-b", streams=["cam"])
    wait_until(lambda: "cam" in b.owned(), FAILOVER_S + 5, "node-b takes cam")
    assert b.owned()["cam"] == epoch + 1
    with pytest.raises(FencedError):
        store.record([CrossingRow("x2", "cam", "l", "car", "in", 2.0, 2)], "cam", "src", 2, epoch=epoch)
    assert store.record([CrossingRow("x2", "cam", "l", "car", "in", 2.0, 2)], "cam", "src", 2,
                        epoch=epoch + 1)[0] != []
    assert sum(store.counts().values()) == 2
    store.close()


def test_join_and_leave_move_few_streams_and_leave_hands_over_at_once(fleet: Callable[..., Runner],
                                                                      pg_url: str) -> None:
    from streamd.fleet.schema import connect

    def move_count() -> int:
        with connect(pg_url) as conn:
            return int(conn.execute("SELECT count(*) FROM lease_moves WHERE from_node IS NOT NULL").fetchone()[0])

    runners = [fleet(n) for n in ("node-a", "node-b", "node-c")]
    wait_until(lambda: settled(runners, pg_url), 20, "three nodes")
    before = move_count()
    runners.append(fleet("node-d"))
    wait_until(lambda: settled(runners, pg_url), 20, "four nodes")
    assert move_count() - before <= math.ceil(6 / 4) + 1
    assert runners[-1].owned()
    for r in runners[:2]:  # two leave gracefully: the others take their streams without waiting for the TTL
        r.leave()
    runners = runners[2:]
    took = wait_until(lambda: settled(runners, pg_url), 20, "two nodes")
    assert took < FAILOVER_S - 1.5 * HEARTBEAT_S  # sooner than a lease could have expired
    assert sorted(len(r.owned()) for r in runners) == [3, 3]


def test_a_restarted_node_takes_its_streams_back_with_a_new_epoch(fleet: Callable[..., Runner], pg_url: str) -> None:
    first = fleet("node-a", streams=["cam"])
    wait_until(lambda: "cam" in first.owned(), 10, "node-a owns cam")
    epoch = first.owned()["cam"]
    first.kill()
    again = fleet("node-a", streams=["cam"])  # same node id (host name), new process: the old one is fenced
    wait_until(lambda: "cam" in again.owned(), 2 * HEARTBEAT_S + 3, "the restarted node-a owns cam")
    assert again.owned()["cam"] == epoch + 1


def test_an_outage_every_node_saw_moves_no_lease(fleet: Callable[..., Runner], pg_server: Any, pg_url: str) -> None:
    proxy = Proxy(pg_server.port)
    url = proxy.url(pg_url.rsplit("/", 1)[1])
    runners = [fleet(n, url=url) for n in ("node-a", "node-b", "node-c", "node-dead")]
    wait_until(lambda: settled(runners, pg_url), 20, "initial spread")
    runners.pop().kill()  # a node that died before the outage stays dead through it
    wait_until(lambda: settled(runners, pg_url), FAILOVER_S + 10, "spread over the three alive")
    leases = db_leases(pg_url)
    views = {r.node_id: r.owned() for r in runners}
    proxy.close()  # the database is gone for every node, for longer than a lease lasts
    down_at = time.monotonic()
    ttl = lease_ttl_s(FAILOVER_S, HEARTBEAT_S)
    time.sleep(1.0)
    assert {r.node_id: r.owned() for r in runners} == views  # kept: their leases cannot have expired yet
    wait_until(lambda: all(not r.owned() for r in runners), ttl + 2, "streams dropped once the leases ran out")
    assert time.monotonic() - down_at >= ttl - 0.6  # not before the lease's own deadline
    time.sleep(2 * ttl)
    proxy.open()
    back = wait_until(lambda: {r.node_id: r.owned() for r in runners} == views, 15, "the same leases back")
    assert {s: (o, e) for s, (o, e, _) in db_leases(pg_url).items()} == {s: (o, e) for s, (o, e, _) in leases.items()}
    assert back < 10
    proxy.close()


def test_holding_through_an_outage_keeps_analysing(fleet: Callable[..., Runner], pg_server: Any, pg_url: str) -> None:
    proxy = Proxy(pg_server.port)
    url = proxy.url(pg_url.rsplit("/", 1)[1])
    runners = [fleet(n, url=url, hold_through_outage=True) for n in ("node-a", "node-b")]
    wait_until(lambda: settled(runners, pg_url), 20, "initial spread")
    views = {r.node_id: r.owned() for r in runners}
    proxy.close()
    time.sleep(2 * FAILOVER_S)
    assert {r.node_id: r.owned() for r in runners} == views
    assert all(r.node.outage_since is not None for r in runners)
    proxy.open()
    wait_until(lambda: all(r.node.outage_since is None for r in runners), 10, "reconnected")
    assert {r.node_id: r.owned() for r in runners} == views
    proxy.close()


def test_a_node_cut_off_from_the_database_is_replaced_and_fenced(fleet: Callable[..., Runner], pg_server: Any,
                                                                  pg_url: str) -> None:
    from streamd.analytics.store_pg import FencedError, PostgresCountStore

    proxy = Proxy(pg_server.port)
    cut_url = proxy.url(pg_url.rsplit("/", 1)[1])
    cut = fleet("node-a", url=cut_url)
    others = [fleet(n) for n in ("node-b", "node-c")]
    runners = [cut, *others]
    wait_until(lambda: settled(runners, pg_url), 20, "initial spread")
    monitor = Monitor(runners)
    lost = cut.owned()
    assert lost
    store = PostgresCountStore(cut_url)  # node-a's count store goes through the same cut-off network
    proxy.close()
    cut_at = time.monotonic()
    wait_until(lambda: set(lost) <= set(owners(others)), FAILOVER_S + 3, "node-a's streams taken over")
    assert time.monotonic() - cut_at <= FAILOVER_S + 1.0
    assert cut.owned() == {}  # it stopped on its own before anyone could take them
    proxy.open()
    stream, epoch = next(iter(lost.items()))
    import psycopg

    with pytest.raises(psycopg.OperationalError):  # its connection died with the network: it raises once...
        store.record([], stream, "src", 0)
    with pytest.raises(FencedError):  # ...and what it had not delivered yet is refused, never doubled
        store.record([CrossingRow("late", stream, "l", "car", "in", 1.0, 1)], stream, "src", 1, epoch=epoch)
    wait_until(lambda: settled(runners, pg_url), 20, "node-a rejoined and the streams respread")
    assert monitor.stop() == []
    assert store.counts() == {}
    store.close()
    proxy.close()


def test_a_rebalanced_stream_is_released_only_when_its_node_has_drained_it(fleet: Callable[..., Runner],
                                                                         pg_url: str) -> None:
    """drain_before_release: a stream the assignment moves to a joining node leaves the old node's owned() at once
    but keeps its lease (nobody else runs it) until release(); then the new node takes it with a new epoch."""
    first = fleet("node-a", drain_before_release=True)
    wait_until(lambda: settled([first], pg_url), 20, "one node holds all six streams")
    epochs = db_leases(pg_url)
    monitor = Monitor([first])
    second = fleet("node-b", drain_before_release=True)
    monitor.runners = [first, second]
    wait_until(lambda: len(first.node.draining()) == 3, 20, "three streams draining on node-a")
    draining = first.node.draining()
    assert not set(draining) & set(first.owned()), "a draining stream is still analysed"
    # for several heartbeats (well under the drain timeout) node-b waits: the leases are still node-a's
    deadline = time.monotonic() + 4 * HEARTBEAT_S
    while time.monotonic() < deadline:
        leases = db_leases(pg_url)
        assert all(leases[s][0] == "node-a" and leases[s][2] for s in draining), leases
        assert not set(draining) & set(second.owned())
        time.sleep(0.05)
    for stream in draining:
        assert first.node.release(stream)
    wait_until(lambda: settled([first, second], pg_url), 20, "node-b took the released streams")
    leases = db_leases(pg_url)
    assert all(leases[s][0] == "node-b" and leases[s][1] == epochs[s][1] + 1 for s in draining), leases
    assert not first.node.draining() and monitor.stop() == []


def test_a_drain_that_never_finishes_is_released_after_failover_s(fleet: Callable[..., Runner], pg_url: str) -> None:
    first = fleet("node-a", drain_before_release=True)
    wait_until(lambda: settled([first], pg_url), 20, "one node holds all six streams")
    second = fleet("node-b", drain_before_release=True)
    wait_until(lambda: len(first.node.draining()) == 3, 20, "three streams draining on node-a")
    began = time.monotonic()
    took = wait_until(lambda: settled([first, second], pg_url), FAILOVER_S + 20, "released after the drain timeout")
    assert time.monotonic() - began >= FAILOVER_S - 2 * HEARTBEAT_S, took  # not before the drain timeout
    assert sorted(len(r.owned()) for r in (first, second)) == [3, 3]
