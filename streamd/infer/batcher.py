"""Batch policy of the inference stage (pure: no sockets, no clocks of its own).

Each stream has a run of pending frame sequence numbers. A batch holds at most one frame per stream:
the oldest pending one for streams that must not drop (files at full speed), the newest for real-time
streams (older ones are dropped and counted). A batch is due once ``max_batch`` streams, or every stream
this batcher serves, have a frame, or ``max_wait_s`` after the first pending frame arrived; no stream is
waited for longer than that (a single camera is never held back at all).
"""

from __future__ import annotations

from dataclasses import dataclass

# a larger batch is chosen only when it makes an image at least this much cheaper (CPU: it rarely does)
BATCH_GAIN = 0.10


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
        self._realtime: dict[str, bool] = {}
        self._held: set[str] = set()  # streams whose frame is still in the model: not taken until released

    def hold(self, stream: str) -> None:
        """``stream`` has a frame in flight: take none of its frames until :meth:`unhold` (a real-time stream is
        then analysed at an even pace, its newest frame each time, instead of in bursts of parallel frames)."""
        self._held.add(stream)

    def unhold(self, stream: str) -> None:
        self._held.discard(stream)

    def _ready(self) -> dict[str, _Pending]:
        return {s: p for s, p in self._pending.items() if s not in self._held} if self._held else self._pending

    def offer(self, stream: str, seq: int, realtime: bool | None, now: float, first_unseen: int = 1) -> None:
        """Frames up to ``seq`` exist for ``stream``. ``first_unseen`` seeds a stream new to this batcher.

        ``realtime`` None keeps the stream's current policy (frame-by-frame for a stream not seen yet).
        """
        next_seq = self._next_seq.setdefault(stream, max(first_unseen, 1))
        if realtime is not None:
            self._realtime[stream] = realtime
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
        self._held.discard(stream)
        self._realtime.pop(stream, None)
        self._pending.pop(stream, None)
        self._next_seq.pop(stream, None)
        self.dropped.pop(stream, None)

    def pending_streams(self) -> int:
        return len(self._pending)

    def is_realtime(self, stream: str) -> bool:
        """The policy of the stream's last offer (False for a stream with nothing pending: files keep order anyway)."""
        pending = self._pending.get(stream)
        return pending.realtime if pending is not None else self._realtime.get(stream, False)

    def has_pending(self, stream: str) -> bool:
        return stream in self._pending

    def next_seq(self, stream: str) -> int:
        return self._next_seq.get(stream, 1)

    def seconds_until_due(self, now: float) -> float | None:
        """0 when a batch is due now, None when nothing is pending."""
        ready = self._ready()
        if not ready:
            return None
        if len(ready) >= min(self.max_batch, len(self._next_seq) - len(self._held)):
            return 0.0  # full, or no other stream could add a frame
        oldest = min(p.since for p in ready.values())
        return max(0.0, oldest + self.max_wait_s - now)

    def take(self, now: float) -> list[BatchItem]:
        """Remove and return the next batch: longest-waiting streams first, one frame each."""
        chosen = sorted(self._ready().items(), key=lambda kv: kv[1].since)[: self.max_batch]
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


def choose_batch(image_ms: dict[int, float], gain: float = BATCH_GAIN) -> int:
    """The batch size to use from measured milliseconds per image at each size: the smallest one within ``gain``
    of the cheapest. Every frame of a batch waits for the whole batch, so a batch must buy throughput to be
    worth it: on a GPU it does (per-image cost falls steeply), on a small CPU model it barely does."""
    if not image_ms:
        return 1
    best = min(image_ms.values())
    return min(b for b, ms in image_ms.items() if ms <= best * (1 + gain))
