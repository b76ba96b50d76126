"""The fleet as the API and the metrics show it: members, owners, leases and moves read from PostgreSQL.

The database is read in a worker thread (never in the event loop), with short timeouts, and the answer is kept
for a few seconds so that a dashboard and a Prometheus scrape every few seconds cost one query between them.
An unreachable database is an answer too (``FleetUnreachable``), cached as briefly, so that a dead database
cannot pile up connection attempts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamd.fleet.status import FleetStatus
from streamd.redact import redact

CACHE_S = 3.0
TIMEOUT_S = 3.0


class FleetUnreachable(Exception):
    """The fleet's database did not answer; the message is safe to show (credentials redacted)."""


@dataclass(frozen=True)
class _Answer:
    at: float
    status: FleetStatus | None
    error: str | None


class FleetReader:
    def __init__(self, url: str, cache_s: float = CACHE_S, timeout_s: float = TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic):
        self.url = url
        self._cache_s = cache_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()  # one query at a time; callers that wait get its answer
        self._answer: _Answer | None = None

    def read(self) -> FleetStatus:
        """The fleet's state at most ``cache_s`` old; raises FleetUnreachable when the database does not answer."""
        with self._lock:
            answer = self._answer
            if answer is None or self._clock() - answer.at >= self._cache_s:
                answer = self._answer = self._query()
        if answer.status is None:
            raise FleetUnreachable(answer.error or "the fleet database did not answer")
        return answer.status

    def _query(self) -> _Answer:
        from streamd.fleet.schema import connect
        from streamd.fleet.status import fleet_status

        try:
            with connect(self.url, self._timeout_s) as conn:
                conn.execute(f"SET statement_timeout = {int(self._timeout_s * 1000)}")
                return _Answer(self._clock(), fleet_status(conn), None)
        except Exception as exc:  # psycopg's errors, DNS, refused, timeouts: all mean "cannot read it now"
            return _Answer(self._clock(), None, redact(f"{type(exc).__name__}: {exc}")[:300])
