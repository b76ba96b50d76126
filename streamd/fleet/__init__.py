"""A fleet of identical streamd nodes sharing one PostgreSQL: membership, per-stream leases, assignment.

See docs/fleet.md. ``assign`` (pure) decides which live node runs which stream; ``FleetNode`` holds this node's
membership and leases; ``fleet_status`` reads the members, leases and recent moves for status pages.
"""

from streamd.fleet.assign import assign, moved
from streamd.fleet.node import FleetNode, FleetUnavailable, HeldLease
from streamd.fleet.status import FleetStatus, fleet_status

__all__ = ["FleetNode", "FleetStatus", "FleetUnavailable", "HeldLease", "assign", "fleet_status", "moved"]
