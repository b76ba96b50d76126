"""Batch policy of the inference stage (pure: no sockets, no clocks of its own).

Each stream has a run of pending frame sequence numbers. A batch holds at most one frame per stream:
the oldest pending one for streams that must not drop (files at full speed), the newest for real-time
streams (older ones are dropped and counted). A batch is due once ``max_batch`` streams, or every stream
this batcher serves, have a frame, or ``max_wait_s`` after the first pending frame arrived; no stream is
waited for longer than that (a single camera is never held back at all).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Pending:
    first: int  # oldest pending seq
    last: int  # newest pending seq
    realtime: bool
    since: float  # when the oldest pending frame arrived


@dataclass(frozen=True)
class BatchItem:
    stream: str
    seq: int


class Batcher:
    def __init__(self, max_batch: int, max_wait_s: float):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._pending: dict[str, _Pending] = {}
        self._next_seq: dict[str, int] = {}  # first seq not yet taken, per stream
        self.dropped: dict[str, int] = {}

    def offer(self, stream: str, seq: int, realtime: bool | None, now: float, first_unseen: int = 1) -> None:
        """Frames up to ``seq`` exist for ``stream``. ``first_unseen`` seeds a stream new to this batcher.

        ``realtime`` None keeps the stream's current policy (frame-by-frame for a stream not seen yet).
        """
        next_seq = self._next_seq.setdefault(stream, max(first_unseen, 1))
        if seq < next_seq:
            return  # already taken (duplicate announcement or a nudge)
        pending = self._pending.get(stream)
        if pending is None:
            self._pending[stream] = _Pending(first=next_seq, last=seq, realtime=bool(realtime), since=now)
        else:
            pending.last = max(pending.last, seq)
            if realtime is not None:
                pending.realtime = realtime

    def forget(self, stream: str) -> None:
        self._pending.pop(stream, None)
        self._next_seq.pop(stream, None)
        self.dropped.pop(stream, None)

    def pending_streams(self) -> int:
        return len(self._pending)

    def has_pending(self, stream: str) -> bool:
        return stream in self._pending

    def next_seq(self, stream: str) -> int:
        return self._next_seq.get(stream, 1)

    def seconds_until_due(self, now: float) -> float | None:
        """0 when a batch is due now, None when nothing is pending."""
        if not self._pending:
            return None
        if len(self._pending) >= min(self.max_batch, len(self._next_seq)):
            return 0.0  # full, or no other stream could add a frame
        oldest = min(p.since for p in self._pending.values())
        return max(0.0, oldest + self.max_wait_s - now)

    def take(self, now: float) -> list[BatchItem]:
        """Remove and return the next batch: longest-waiting streams first, one frame each."""
        chosen = sorted(self._pending.items(), key=lambda kv: kv[1].since)[: self.max_batch]
        batch = []
        for stream, pending in chosen:
            if pending.realtime:
                seq = pending.last
                if seq > pending.first:
                    self.dropped[stream] = self.dropped.get(stream, 0) + (seq - pending.first)
            else:
                seq = pending.first
            batch.append(BatchItem(stream, seq))
            self._next_seq[stream] = seq + 1
            if seq >= pending.last:
                del self._pending[stream]
            else:
                # A backlog already waited: it is due at once.
                pending.first = seq + 1
                pending.since = now - self.max_wait_s
        return batch
