"""What the fleet looks like now, read from the database: members, who holds which stream, recent moves."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class MemberStatus:
    node: str
    alive: bool
    heartbeat_age_s: float
    started_at: float  # unix time


@dataclass(frozen=True)
class LeaseStatus:
    stream: str
    owner: str | None
    epoch: int
    valid: bool  # not expired
    age_s: float | None  # since acquired
    expires_in_s: float


@dataclass(frozen=True)
class MoveStatus:
    stream: str
    from_node: str | None
    to_node: str
    epoch: int
    at: float  # unix time


@dataclass(frozen=True)
class FleetStatus:
    members: list[MemberStatus] = field(default_factory=list)
    leases: list[LeaseStatus] = field(default_factory=list)
    moves: list[MoveStatus] = field(default_factory=list)
    moves_last_hour: int = 0  # lease hand-overs of the whole fleet in the last hour (flapping shows here)
    moves_total: int = 0  # hand-overs since the fleet's database was created (its id sequence: never pruned)

    def owners(self) -> dict[str, str | None]:
        """Who runs each stream now: the owner of a valid lease, None for a stream nobody holds."""
        return {lease.stream: lease.owner if lease.valid else None for lease in self.leases}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fleet_status(conn: Any, moves: int = 50) -> FleetStatus:
    """Read the fleet's state through ``conn`` (a psycopg connection, e.g. streamd.fleet.schema.connect(url))."""
    members = [MemberStatus(str(n), bool(alive), float(age), float(started)) for n, alive, age, started in conn.execute(
        "SELECT node, expires_at > now(), extract(epoch FROM now() - heartbeat_at), extract(epoch FROM started_at) "
        "FROM nodes ORDER BY node").fetchall()]
    leases = [LeaseStatus(str(s), o, int(e), bool(v), None if a is None else float(a), float(x))
              for s, o, e, v, a, x in conn.execute(
                  "SELECT stream, owner, epoch, owner IS NOT NULL AND expires_at > now(), "
                  "extract(epoch FROM now() - acquired_at), "
                  "CASE WHEN expires_at = '-infinity' THEN 0 ELSE extract(epoch FROM expires_at - now()) END "
                  "FROM leases ORDER BY stream").fetchall()]
    recent = [MoveStatus(str(s), f, str(t), int(e), float(at)) for s, f, t, e, at in conn.execute(
        "SELECT stream, from_node, to_node, epoch, extract(epoch FROM at) FROM lease_moves ORDER BY id DESC LIMIT %s",
        (moves,)).fetchall()]
    last_hour = int(conn.execute("SELECT count(*) FROM lease_moves WHERE at > now() - interval '1 hour'").fetchone()[0])
    # the id sequence, not count(*): old moves are pruned after a day, and a counter must not go down
    total = int(conn.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM lease_moves_id_seq")
                .fetchone()[0])
    return FleetStatus(members, leases, recent, last_hour, total)
