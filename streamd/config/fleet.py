"""The ``fleet:`` section: run this node as one of N identical nodes sharing the PostgreSQL at ``counts.url``."""

from __future__ import annotations

import socket

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    # the same rules as streamd.config.models.Strict, without importing it: models.py imports this module
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _hostname() -> str:
    return socket.gethostname()


class FleetConfig(Strict):
    enabled: bool = Field(False, description="Share streams with the other nodes on counts.url (PostgreSQL): each "
                          "stream runs on exactly one live node, chosen by rendezvous hashing.")
    node_id: str = Field(default_factory=_hostname, min_length=1, max_length=253,
                         pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                         description="This node's name in the fleet; unique per node. Default: the host name "
                                     "(the pod name under Kubernetes).")
    failover_s: float = Field(15.0, ge=2.0, le=600.0,
                              description="A dead node's streams run on the survivors within this many seconds.")
    heartbeat_s: float = Field(3.0, ge=0.2, le=120.0,
                               description="How often the node renews its membership and leases; at most "
                                           "failover_s / 4.")
    standby_models: bool = Field(True, description="Keep the model of every fleet stream loaded on every node, "
                                 "also for the streams other nodes run, so that a stream moved here starts in about a "
                                 "second instead of after its model loads (and, on a GPU, its engine builds). Costs "
                                 "one inference stage per model per node.")

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> FleetConfig:
        if self.heartbeat_s * 4 > self.failover_s:
            raise ValueError(f"fleet.heartbeat_s {self.heartbeat_s:g} is too long for failover_s {self.failover_s:g}: "
                             f"use at most {self.failover_s / 4:g} s (a lease must survive a missed heartbeat)")
        return self

    @property
    def lease_ttl_s(self) -> float:
        return lease_ttl_s(self.failover_s, self.heartbeat_s)


def start_allowance_s(failover_s: float) -> float:
    """What a survivor needs from taking a lease to analysing the stream's first frame with its model already loaded
    (fleet.standby_models): the reload, the decoder process, the source opened; measured about 1.2 s on 2 cores."""
    return min(2.0, 0.1 * failover_s)


def lease_ttl_s(failover_s: float, heartbeat_s: float) -> float:
    """How long a lease and a membership last without a heartbeat. The rest of failover_s: one heartbeat for a
    survivor to notice, half of one as margin, and the survivor's start, so the stream is analysed again within
    failover_s (heartbeat_s <= failover_s / 4 keeps the TTL above two heartbeats)."""
    return failover_s - 1.5 * heartbeat_s - start_allowance_s(failover_s)
