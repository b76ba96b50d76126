"""Which live node runs which stream: rendezvous (highest-random-weight) hashing with balanced, sticky loads.

Pure and deterministic: every node computes the same answer from the same inputs (the stream names, the live node
ids and who holds each stream now), so no node tells another what to do; each acts on its own part (acquires the
streams assigned to it, releases the ones assigned elsewhere).

Plain rendezvous hashing (each stream on the node with the highest weight hash(node, stream)) moves only the
streams a joining node wins or a leaving node held, but with tens of streams it heaps many on one node (40
streams on 4 nodes: one node often runs 15). So each node gets a quota, ceil(S/N) or floor(S/N) streams summing to
S, and a stream stays where it runs while its node is within quota:

1. each live node keeps the streams it holds now, highest weights first, up to ceil(S/N);
2. the S mod N nodes that hold the most (ties: highest hash of the node id) get quota ceil(S/N), the others
   floor(S/N); a node over its quota sheds its lowest-weight streams;
3. the streams nobody keeps go, highest weight first, to the highest-weight node with room.

Without current owners it is rendezvous hashing with a cap. With them, a join moves only what the new node needs
to reach its quota (plus at most one stream per node whose quota rises), a leave moves only the leaver's streams,
and applying the result again changes nothing (``assign(S, N, assign(S, N, c)) == assign(S, N, c)``), so the
nodes' acquisitions and releases converge instead of passing streams back and forth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def weight(node: str, stream: str) -> int:
    """The rendezvous weight of ``stream`` on ``node``: 64 bits of BLAKE2b of both names."""
    digest = hashlib.blake2b(f"{node}\x00{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _node_rank(node: str) -> int:
    return int.from_bytes(hashlib.blake2b(node.encode(), digest_size=8).digest(), "big")


def assign(streams: Iterable[str], nodes: Iterable[str],
           current: Mapping[str, str] | None = None) -> dict[str, str]:
    """{stream: node} over the live ``nodes`` (empty when there are none). ``current``: {stream: node holding it
    now}; holders that are not live nodes and streams that are not in ``streams`` are ignored."""
    stream_list = sorted(set(streams))
    node_list = sorted(set(nodes))
    if not node_list or not stream_list:
        return {}
    live = set(node_list)
    low, extra = divmod(len(stream_list), len(node_list))
    high = low + (1 if extra else 0)
    held: dict[str, list[str]] = {n: [] for n in node_list}
    for s in stream_list:
        holder = (current or {}).get(s)
        if holder in live:
            held[holder].append(s)
    for n in node_list:  # 1. keep up to `high`, the strongest preferences first
        held[n] = sorted(held[n], key=lambda s: weight(n, s), reverse=True)[:high]  # noqa: B023 - used at once
    by_load = sorted(node_list, key=lambda n: (len(held[n]), _node_rank(n), n), reverse=True)
    quota = {n: high if i < extra else low for i, n in enumerate(by_load)}
    owner: dict[str, str] = {}
    load = dict.fromkeys(node_list, 0)
    for n in node_list:  # 2. shed above quota
        for s in held[n][:quota[n]]:
            owner[s] = n
            load[n] += 1
    free = [s for s in stream_list if s not in owner]
    pairs = sorted(((weight(n, s), n, s) for s in free for n in node_list), reverse=True)
    for _, n, s in pairs:  # 3. the rest by rendezvous weight, where there is room
        if s not in owner and load[n] < quota[n]:
            owner[s] = n
            load[n] += 1
    return dict(sorted(owner.items()))


def moved(before: Mapping[str, str], after: Mapping[str, str]) -> set[str]:
    """Streams whose owner differs between two assignments (a stream that appears or disappears is not a move)."""
    return {s for s in before.keys() & after.keys() if before[s] != after[s]}
