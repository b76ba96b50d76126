"""One sink's health: a failure at open, write, flush or close degrades that sink only.

A :class:`GuardedSink` owns one sink made by a factory. When the sink cannot be created, or one of its calls
raises, the guard marks it ``down`` (with the redacted error), logs ``sink_down`` once for that transition,
gives the broken sink up (:meth:`Sink.discard`) and re-creates it with exponential backoff; ``sink_up`` is
logged when that succeeds. Nothing is logged per event while a sink stays down.

What a down sink loses is counted, never silent: every event it would have taken while down, and the events
it had accepted but not yet made durable when it failed (the sink's ``discard`` says how many), add to
``dropped``. The other sinks and the counting go on unaffected.

State machine (``retry_at`` from :class:`streamd.runtime.backoff.Backoff`)::

    up --(open/write/flush/close raises)--> down --(maintain() after retry_at: factory succeeds)--> up
                                               \\--(factory raises)--> down, next retry_at further away

The backoff starts over only once a re-opened sink has proven itself (a flush after a write succeeded, or it
stayed up for ``retry.max_s``): a disk that is still full opens fine and fails at the next flush, and must
not make the sink flap at the shortest delay. So at most two lines (down, up) per ``max_s`` per sink.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from streamd.config.models import BackoffConfig
from streamd.ipc.messages import SinkHealth
from streamd.redact import redact
from streamd.runtime.backoff import Backoff
from streamd.sinks.base import Sink, SinkMessage

UP, DOWN = "up", "down"
ERROR_MAX_CHARS = 300
# jsonl and zmq sinks have no retry setting of their own: re-open after 0.5 s, 1 s, 2 s ... at most every 10 s
DEFAULT_RETRY = BackoffConfig(initial_s=0.5, max_s=10.0)


def describe(exc: BaseException) -> str:
    """The error of a down sink as reported: type and message, credentials redacted, bounded length."""
    return redact(f"{type(exc).__name__}: {exc}")[:ERROR_MAX_CHARS]


class GuardedSink:
    """Sink protocol around one sink that may fail; see the module docstring.

    ``accepts`` says whether the sink would take a message (its config's include_* filters), so that only
    those are counted as dropped while it is down. ``clock`` (monotonic seconds) and ``wall`` (Unix time)
    are injectable for tests.
    """

    def __init__(self, name: str, factory: Callable[[], Sink], accepts: Callable[[SinkMessage], bool],
                 retry: BackoffConfig = DEFAULT_RETRY, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.name = name
        self._factory = factory
        self._accepts = accepts
        self._backoff = backoff or Backoff(retry)
        self._stable_s = retry.max_s
        self._clock = clock
        self._wall = wall
        self.log = structlog.get_logger().bind(sink=name)
        self.sink: Sink | None = None
        self.state = DOWN
        self.error: str | None = None
        self.dropped = 0
        self.failures = 0
        self.since = wall()
        self._down_at: float | None = None
        self._dropped_at_down = 0
        self._retry_at = 0.0
        self._closed = False
        self._opened_at = 0.0
        self._proven = False  # the current sink has flushed a write (or stayed up long enough) since it opened
        self._wrote = False
        self._open()

    # --- Sink protocol -------------------------------------------------------------------------------------

    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        if self.sink is None:
            if self._accepts(message):
                self.dropped += 1
            return
        try:
            self.sink.write(message, payload_json)
            self._wrote = True
        except Exception as exc:
            self.dropped += 1  # a write that raised did not take its message
            self._fail("write", exc)

    def flush(self) -> None:
        if self.sink is None:
            return
        try:
            self.sink.flush()
        except Exception as exc:
            self._fail("flush", exc)
            return
        if self._wrote and not self._proven:
            self._prove()

    def discard(self) -> int:
        lost = self._discard_sink()
        self.dropped += lost
        return lost

    def close(self) -> None:
        self._closed = True
        if self.sink is None:
            return
        sink, self.sink = self.sink, None
        try:
            sink.close()
        except Exception as exc:
            self.sink = sink
            self._fail("close", exc)

    # --- health ----------------------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.sink is not None

    def maintain(self) -> None:
        """Re-create a down sink once its backoff delay has passed (call often; cheap when nothing is due)."""
        if self.sink is None:
            if not self._closed and self._clock() >= self._retry_at:
                self._open()
        elif not self._proven and self._clock() - self._opened_at >= self._stable_s:
            self._prove()

    def _prove(self) -> None:
        self._proven = True
        self._backoff.reset()

    def health(self) -> SinkHealth:
        return SinkHealth(state=self.state, error=self.error, dropped=self.dropped, failures=self.failures,
                          since=round(self.since, 3))

    # --- transitions -------------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            sink = self._factory()
        except Exception as exc:
            self._down("open", exc)
            return
        self.sink = sink
        self._opened_at, self._proven, self._wrote = self._clock(), False, False
        if self._down_at is None:
            self._prove()  # the first open: nothing to prove
        was_down = self._down_at is not None
        self.state, self.error, self.since = UP, None, self._wall()
        if was_down:
            assert self._down_at is not None
            self.log.info("sink_up", down_s=round(self._clock() - self._down_at, 1),
                          dropped=self.dropped - self._dropped_at_down, dropped_total=self.dropped,
                          failures=self.failures)
            self._down_at = None

    def _fail(self, action: str, exc: BaseException) -> None:
        self.dropped += self._discard_sink()
        self._down(action, exc)

    def _discard_sink(self) -> int:
        """Give the broken sink up without delivering; the accepted events it loses."""
        sink, self.sink = self.sink, None
        if sink is None:
            return 0
        try:
            return max(0, int(sink.discard()))
        except Exception:  # a sink broken enough to fail its own clean-up: what it held is gone
            self.log.debug("sink_discard_failed", exc_info=True)
            return 0

    def _down(self, action: str, exc: BaseException) -> None:
        self.failures += 1
        error = describe(exc)
        delay = self._backoff.next_delay()
        self._retry_at = self._clock() + delay
        if self._down_at is None:  # up -> down (or the first open failed): one line per transition
            self._down_at = self._clock()
            self._dropped_at_down = self.dropped
            self.state, self.error, self.since = DOWN, error, self._wall()
            self.log.error("sink_down", action=action, error=error, retry_in_s=round(delay, 2),
                           dropped_total=self.dropped,
                           reason="events for this sink are dropped (counted) until it can be re-opened; "
                                  "the other sinks go on")
        else:  # still down: a retry failed; keep the newest reason, log only at debug level
            self.error = error
            self.log.debug("sink_retry_failed", action=action, error=error, retry_in_s=round(delay, 2))
