"""streamd.sinks.outbox: order, ack-then-delete, backoff while down, restart re-sends, bounds, durability."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from streamd.config.models import BackoffConfig, OutboxConfig
from streamd.sinks.outbox import DeliveryResult, Outbox, OutboxRow
from tests.sink_helpers import wait_until as _wait_until


class ScriptedTarget:
    """A target that is down while ``up`` is clear; records every row it was sent (acked or not)."""

    def __init__(self, up: bool = True, reject: set[str] | None = None):
        self.up = threading.Event()
        if up:
            self.up.set()
        self.reject = reject or set()
        self.sent: list[str] = []
        self.acked: list[str] = []
        self.rounds = 0
        self.closed = False

    def deliver(self, rows: Sequence[OutboxRow], stop: threading.Event) -> DeliveryResult:
        self.rounds += 1
        self.sent.extend(r.event_id for r in rows)
        if not self.up.is_set():
            return DeliveryResult(error="connection refused")
        result = DeliveryResult()
        for r in rows:
            if r.event_id in self.reject:
                result.rejected.append(r.seq)
            else:
                result.acked.append(r.seq)
                self.acked.append(r.event_id)
        return result

    def close(self) -> None:
        self.closed = True


def fast(**overrides: object) -> OutboxConfig:
    base: dict[str, object] = {"retry": BackoffConfig(initial_s=0.02, max_s=0.1, jitter=0.1), "batch": 7,
                               "shutdown_grace_s": 2.0}
    base.update(overrides)
    return OutboxConfig(**base)  # type: ignore[arg-type]



def wait_until(predicate: Callable[[], object]) -> None:
    _wait_until(predicate, timeout=10.0, poll_s=0.01)


def fill(outbox: Outbox, ids: list[str]) -> None:
    for i in ids:
        assert outbox.put(i, f"t/{i}", f'{{"id":"{i}"}}'.encode())
    outbox.commit()


def test_delivers_everything_once_in_order_and_empties(tmp_path: Path) -> None:
    target = ScriptedTarget()
    outbox = Outbox("t", tmp_path / "o.db", fast(), target)
    outbox.start()
    ids = [f"e{i}" for i in range(50)]
    fill(outbox, ids)
    wait_until(lambda: outbox.counters().depth == 0)
    outbox.close()
    assert target.acked == ids
    assert target.sent == ids  # nothing sent twice
    c = outbox.counters()
    assert (c.delivered, c.retries, c.dropped_full, c.target_up) == (50, 0, 0, True)
    assert target.closed


def test_target_down_then_up_retries_with_backoff_and_never_resends_acked_rows(tmp_path: Path) -> None:
    target = ScriptedTarget(up=True)
    outbox = Outbox("t", tmp_path / "o.db", fast(), target)
    outbox.start()
    fill(outbox, [f"a{i}" for i in range(10)])
    wait_until(lambda: outbox.counters().depth == 0)
    target.up.clear()
    fill(outbox, [f"b{i}" for i in range(10)])
    wait_until(lambda: outbox.counters().retries >= 3)
    c = outbox.counters()
    assert c.depth == 10 and c.target_up is False and c.last_error == "connection refused"
    target.up.set()
    wait_until(lambda: outbox.counters().depth == 0)
    outbox.close()
    expected = [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)]
    assert target.acked == expected
    assert all(target.sent.count(f"a{i}") == 1 for i in range(10)), "an acknowledged row was sent again"
    assert outbox.counters().delivered == 20 and outbox.counters().target_up is True


def test_unacked_rows_are_resent_after_a_restart_and_acked_ones_are_not(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    first_target = ScriptedTarget(up=True)
    first = Outbox("t", path, fast(), first_target)
    first.start()
    fill(first, ["x0", "x1", "x2"])
    wait_until(lambda: first.counters().depth == 0)
    first_target.up.clear()
    fill(first, ["y0", "y1", "y2", "y3"])
    wait_until(lambda: first.counters().retries >= 1)
    with capture_logs() as logs:
        first.close(grace_s=0.2)
    assert any(e["event"] == "outbox_left_for_next_start" and e["depth"] == 4 for e in logs)

    second_target = ScriptedTarget(up=True)
    with capture_logs() as logs:
        second = Outbox("t", path, fast(), second_target)
    assert any(e["event"] == "outbox_resumed" and e["depth"] == 4 for e in logs)
    second.start()
    wait_until(lambda: second.counters().depth == 0)
    second.close()
    assert second_target.acked == ["y0", "y1", "y2", "y3"]


def test_full_outbox_drops_new_events_counts_them_and_logs_once_per_interval(tmp_path: Path) -> None:
    target = ScriptedTarget(up=False)
    outbox = Outbox("t", tmp_path / "o.db", fast(max_rows=5), target)
    outbox.start()
    with capture_logs() as logs:
        accepted = [outbox.put(f"e{i}", "t", b"{}") for i in range(12)]
        outbox.commit()
    assert accepted == [True] * 5 + [False] * 7
    full = [e for e in logs if e["event"] == "outbox_full"]
    assert len(full) == 1 and full[0]["log_level"] == "error" and full[0]["max_rows"] == 5
    c = outbox.counters()
    assert (c.depth, c.dropped_full) == (5, 7)
    target.up.set()
    wait_until(lambda: outbox.counters().depth == 0)
    assert outbox.put("late", "t", b"{}")  # room again once the backlog is gone
    outbox.commit()
    wait_until(lambda: outbox.counters().depth == 0)
    outbox.close()
    assert target.acked == [f"e{i}" for i in range(5)] + ["late"]


def test_max_bytes_bounds_the_payload_held(tmp_path: Path) -> None:
    outbox = Outbox("t", tmp_path / "o.db", fast(max_bytes=1 << 16), ScriptedTarget(up=False))
    payload = b"x" * 10_000
    accepted = sum(outbox.put(str(i), "t", payload) for i in range(10))
    outbox.commit()
    assert accepted == 6  # 6 * 10,000 <= 65,536 < 7 * 10,000
    c = outbox.counters()
    assert (c.depth, c.bytes, c.dropped_full) == (6, 60_000, 4)
    outbox.close(grace_s=0)


def test_rejected_rows_are_removed_counted_and_do_not_block_the_queue(tmp_path: Path) -> None:
    target = ScriptedTarget(reject={"bad"})
    outbox = Outbox("t", tmp_path / "o.db", fast(), target)
    outbox.start()
    with capture_logs() as logs:
        fill(outbox, ["a", "bad", "b"])
        wait_until(lambda: outbox.counters().depth == 0)
    outbox.close()
    assert target.acked == ["a", "b"]
    assert outbox.counters().rejected == 1
    assert any(e["event"] == "outbox_events_rejected" and e["event_ids"] == ["bad"] for e in logs)


def test_committed_events_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    script = (
        "import os, sys\n"
        "from streamd.config.models import OutboxConfig\n"
        "from streamd.sinks.outbox import Outbox, DeliveryResult\n"
        "class Down:\n"
        "    def deliver(self, rows, stop): return DeliveryResult(error='down')\n"
        "    def close(self): pass\n"
        f"o = Outbox('t', {str(path)!r}, OutboxConfig(), Down())\n"
        "for i in range(3): o.put(f'e{i}', 't', b'{}')\n"
        "o.commit()\n"
        "o.put('uncommitted', 't', b'{}')\n"
        "os._exit(9)  # no close, no flush: like kill -9 right after the commit\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    target = ScriptedTarget()
    outbox = Outbox("t", path, fast(), target)
    assert outbox.counters().depth == 3
    outbox.start()
    wait_until(lambda: outbox.counters().depth == 0)
    outbox.close()
    assert target.acked == ["e0", "e1", "e2"]


def test_close_with_the_target_down_returns_within_the_grace_time(tmp_path: Path) -> None:
    target = ScriptedTarget(up=False)
    outbox = Outbox("t", tmp_path / "o.db", fast(retry=BackoffConfig(initial_s=5, max_s=5)), target)
    outbox.start()
    fill(outbox, ["a"])
    wait_until(lambda: target.rounds >= 1)
    started = time.monotonic()
    outbox.close(grace_s=1.0)
    assert time.monotonic() - started < 5, "close waited for the backoff delay"
    reopened = Outbox("t", tmp_path / "o.db", fast(), ScriptedTarget())
    assert reopened.counters().depth == 1
    reopened.close(grace_s=0)


@pytest.mark.parametrize("field", ["max_rows", "max_bytes", "batch"])
def test_config_rejects_non_positive_bounds(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OutboxConfig(**{field: 0})
