"""The streams the daemon runs now: each one's ring, generation, source identity and fate.

Only the supervisor's watch loop changes the registry; the reload controller and the status builder read it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from streamd.config.models import StreamConfig
from streamd.control.pipelines import source_key
from streamd.ipc.ring import FrameRing, ring_name, unlink_ring


@dataclass
class StreamEntry:
    config: StreamConfig
    ring: str  # its shared-memory ring (created and unlinked by the supervisor, so a crashed stage leaks nothing)
    source: str  # source identity its checkpoints carry
    start_frame: int = 0  # finite sources: first frame to process (resume after the whole daemon stopped)
    failed: str | None = None  # why it stopped for good in this run
    finished: bool = False  # a finite source processed to its end


class StreamRegistry:
    def __init__(self, owner_pid: int | None = None):
        self._owner = owner_pid or os.getpid()
        self._entries: dict[str, StreamEntry] = {}
        self._generation: dict[str, int] = {}  # stream -> last ring generation (a restart takes the next)
        self.not_started: dict[str, str] = {}  # stream -> why it could not start (model, ring)

    def start(self, stream: StreamConfig, start_frame: int = 0) -> StreamEntry:
        """Create the stream's ring (RingError when it cannot be made: the stream does not start)."""
        generation = self._generation[stream.name] = self._generation.get(stream.name, -1) + 1
        name = ring_name(self._owner, stream.name, generation)
        unlink_ring(name)
        FrameRing.create(name, stream.ring_slots, stream.max_width, stream.max_height).close()
        entry = self._entries[stream.name] = StreamEntry(config=stream, ring=name, source=source_key(stream),
                                                         start_frame=start_frame)
        self.not_started.pop(stream.name, None)
        return entry

    def stop(self, name: str) -> StreamEntry | None:
        """Forget a stream and unlink its ring (stages still mapping it keep their mapping until they close it)."""
        entry = self._entries.pop(name, None)
        if entry is not None:
            unlink_ring(entry.ring)
        self.not_started.pop(name, None)
        return entry

    def get(self, name: str) -> StreamEntry | None:
        return self._entries.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[StreamEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def running(self) -> list[StreamEntry]:
        return [e for e in self._entries.values() if e.failed is None and not e.finished]

    def rings(self) -> dict[str, str]:
        return {name: e.ring for name, e in self._entries.items()}

    def failures(self) -> dict[str, str]:
        """Streams that stopped for good or never started, with the reason."""
        failed = {name: e.failed for name, e in self._entries.items() if e.failed is not None}
        return {**self.not_started, **failed}

    def cleanup(self) -> None:
        for entry in self._entries.values():
            unlink_ring(entry.ring)
