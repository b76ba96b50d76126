"""Shared by the sink tests: a line-crossing event to deliver, polling for a condition with a deadline, and the
real sinks stage run in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

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


class SinksStageRun:
    """The real sinks stage (streamd.sinks.stage.SinksStage) running in a thread of the test: ``send`` pushes
    pipeline messages to its inbox, ``heartbeat`` returns its latest heartbeat (the control socket it beats to)."""

    def __init__(self, tmp_path: Path, configs: list) -> None:
        import msgspec
        import zmq

        from streamd.ipc import sockets
        from streamd.ipc.messages import Heartbeat, encoder, heartbeat_decoder
        from streamd.ipc.sockets import Endpoints
        from streamd.runtime.params import SinksParams
        from streamd.runtime.stage import StageSpec
        from streamd.sinks.stage import SinksStage

        runtime = tmp_path / "runtime"
        runtime.mkdir(exist_ok=True)
        self.ctx = zmq.Context()
        endpoints = Endpoints(runtime)
        self._control = sockets.pull(self.ctx, endpoints.control, hwm=10_000)
        spec = StageSpec("sinks", "", endpoints, SinksParams(sinks=configs, state_dir=str(tmp_path / "state")))
        self.stop = threading.Event()
        self.stage = SinksStage(spec, self.ctx, self.stop)
        self._inbox = sockets.push(self.ctx, endpoints.sinks, hwm=100_000)
        self._encode = encoder.encode
        self._decode = heartbeat_decoder.decode
        self._latest: Heartbeat | None = None
        self._json = msgspec.json.encode
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, name="sinks-stage", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.exit_code = self.stage.run()

    def send(self, message: object) -> None:
        self._inbox.send(self._encode(message))

    def heartbeat(self):  # -> Heartbeat | None
        import zmq

        while True:
            try:
                self._latest = self._decode(self._control.recv(zmq.NOBLOCK))
            except zmq.Again:
                return self._latest

    def health(self, sink: str):  # -> SinkHealth | None
        beat = self.heartbeat()
        return (beat.sinks or {}).get(sink) if beat is not None else None

    def close(self) -> int | None:
        self.stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "sinks stage did not stop"
        self.ctx.destroy(linger=0)
        return self.exit_code
