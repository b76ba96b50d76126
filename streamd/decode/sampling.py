"""Which decoded frames a stream analyses when it has a ``detect_fps``: at most that many per second of the
stream's own time, evenly spaced, chosen by timestamp (never by arrival), so a file gives the same frames on
every run and a camera's frame-rate jitter does not change the analysed rate."""

from __future__ import annotations

import math

SLOT_EPSILON = 1e-6  # a frame exactly on a slot boundary (30 fps sampled at 10) falls into the new slot


class FrameSampler:
    def __init__(self, fps: float):
        if fps <= 0:
            raise ValueError("detect_fps must be positive")
        self.fps = fps
        self._origin: float | None = None
        self._last_slot = -1
        self._last_pts = -math.inf

    def keep(self, pts_s: float) -> bool:
        """True for the first frame of each 1/fps slot of stream time. A timestamp that runs backwards (a
        camera that reconnected with a new clock) starts the slots again from that frame."""
        if self._origin is None or pts_s < self._last_pts:
            self._origin, self._last_slot = pts_s, -1
        self._last_pts = pts_s
        slot = math.floor((pts_s - self._origin) * self.fps + SLOT_EPSILON)
        if slot <= self._last_slot:
            return False
        self._last_slot = slot
        return True
