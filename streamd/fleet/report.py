"""The fleet's state as text for a terminal (``streamd fleet status``)."""

from __future__ import annotations

import time

from streamd.fleet.status import FleetStatus


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def format_fleet_status(status: FleetStatus, now: float | None = None, moves: int = 10) -> str:
    now = time.time() if now is None else now
    alive = sum(m.alive for m in status.members)
    owned_by: dict[str, int] = {}
    for owner in status.owners().values():
        if owner is not None:
            owned_by[owner] = owned_by.get(owner, 0) + 1
    lines = [f"members: {alive} alive of {len(status.members)}"]
    lines += _table(["NODE", "STATE", "HEARTBEAT", "STREAMS", "UP SINCE"],
                    [[m.node, "alive" if m.alive else "dead", _ago(m.heartbeat_age_s) + " ago",
                      str(owned_by.get(m.node, 0)), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.started_at))]
                     for m in status.members])
    unowned = [lease.stream for lease in status.leases if not lease.valid]
    lines += ["", f"streams: {len(status.leases) - len(unowned)} owned, {len(unowned)} without an owner"
              + (f" ({', '.join(unowned)})" if unowned else "")]
    lines += _table(["STREAM", "OWNER", "EPOCH", "HELD FOR", "EXPIRES IN"],
                    [[lease.stream, lease.owner if lease.valid and lease.owner else "-", str(lease.epoch),
                      _ago(lease.age_s) if lease.valid else "-", _ago(lease.expires_in_s) if lease.valid else "expired"]
                     for lease in status.leases])
    lines += ["", f"moves: {status.moves_last_hour} in the last hour" + (", latest:" if status.moves else "")]
    if status.moves:
        lines += _table(["WHEN", "STREAM", "FROM", "TO", "EPOCH"],
                        [[_ago(now - move.at) + " ago", move.stream, move.from_node or "-", move.to_node,
                          str(move.epoch)] for move in status.moves[:moves]])
    return "\n".join(lines)
