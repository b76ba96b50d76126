"""Shared by the sink tests: a line-crossing event to deliver, and polling for a condition with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

from streamd.ipc.messages import LineCrossing


def crossing(i: int, stream: str = "cam") -> LineCrossing:
    """Event number ``i`` of a stream: a box crossing line "exit" inwards, with a unique id."""
    return LineCrossing(id=f"{stream}/run1/exit/{i}/{i}/in", stream=stream, line="exit", direction="in", track_id=i,
                        class_id=0, class_name="box", frame=i, pts_s=i / 30, ts=time.time(), t_decoded_ns=0,
                        t_analysed_ns=0)


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition",
               poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(poll_s)
