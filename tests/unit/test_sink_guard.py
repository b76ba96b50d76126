"""streamd.sinks.guard: a failing sink goes down, counts what it drops, is re-created with backoff, comes back up;
one log line per transition. A fake sink and a fake clock drive the state machine; a real JSONL sink on a
real filesystem checks what is kept and what is counted when a flush fails."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from streamd.config.models import BackoffConfig, JsonlSinkConfig
from streamd.ipc.messages import CountUpdate, Heartbeat, SinkHealth, TrackedFrame, heartbeat_decoder
from streamd.sinks.base import SinkMessage, accepts
from streamd.sinks.guard import GuardedSink
from streamd.sinks.jsonl import JsonlSink
from tests.sink_helpers import crossing

RETRY = BackoffConfig(initial_s=1.0, multiplier=2.0, max_s=4.0, jitter=0.0)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeSink:
    """Accepts messages into ``pending`` (lost on discard) and ``flushed`` on flush; fails when told."""

    def __init__(self, world: "World") -> None:
        self.world = world
        self.pending: list[SinkMessage] = []
        self.closed = False

    def write(self, message: SinkMessage, payload_json: bytes) -> None:
        if self.world.fail_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.pending.append(message)

    def flush(self) -> None:
        if self.world.fail_flush:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.world.delivered.extend(self.pending)
        self.pending.clear()

    def close(self) -> None:
        if self.world.fail_close:
            raise OSError(errno.EIO, "Input/output error")
        self.flush()
        self.closed = True

    def discard(self) -> int:
        lost = len(self.pending)
        self.pending.clear()
        self.world.discarded += 1
        return lost


class World:
    def __init__(self) -> None:
        self.fail_open: Exception | None = None
        self.fail_write = self.fail_flush = self.fail_close = False
        self.opens = 0
        self.discarded = 0
        self.delivered: list[SinkMessage] = []
        self.sinks: list[FakeSink] = []

    def factory(self) -> FakeSink:
        self.opens += 1
        if self.fail_open is not None:
            raise self.fail_open
        sink = FakeSink(self)
        self.sinks.append(sink)
        return sink


def guard(world: World, clock: Clock) -> GuardedSink:
    return GuardedSink("fake", world.factory, lambda m: not isinstance(m, TrackedFrame), retry=RETRY, clock=clock,
                       wall=lambda: clock.t + 1.7e9)


def send(g: GuardedSink, first: int, n: int) -> None:
    for i in range(first, first + n):
        g.write(crossing(i), b"{}")
    g.flush()


def events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def test_open_failure_retries_with_backoff_counts_drops_and_recovers() -> None:
    world, clock = World(), Clock()
    world.fail_open = PermissionError(13, "Permission denied", "/data/events.jsonl")
    with capture_logs() as logs:
        g = guard(world, clock)
        assert (g.up, g.state, world.opens) == (False, "down", 1)
        assert g.error == "PermissionError: [Errno 13] Permission denied: '/data/events.jsonl'"
        send(g, 0, 5)
        assert g.dropped == 5
        # retries at +1, +2, +4 (capped) s: nothing is tried before its time
        attempts = []
        for step in range(80):
            clock.t += 0.25
            before = world.opens
            g.maintain()
            if world.opens > before:
                attempts.append(round(clock.t - 1000.0, 2))
        assert attempts == [1.0, 3.0, 7.0, 11.0, 15.0, 19.0]
        assert g.failures == 1 + len(attempts)
        world.fail_open = None
        clock.t += 4.0
        g.maintain()
        assert (g.up, g.state, g.error) == (True, "up", None)
        send(g, 5, 3)
    assert [e.id for e in world.delivered] == [crossing(i).id for i in range(5, 8)]
    assert g.dropped == 5
    assert len(events(logs, "sink_down")) == 1 and events(logs, "sink_down")[0]["action"] == "open"
    up = events(logs, "sink_up")
    assert len(up) == 1 and up[0]["dropped"] == 5 and up[0]["down_s"] == pytest.approx(24.0, abs=0.3)
    health = g.health()
    assert (health.state, health.error, health.dropped, health.failures) == ("up", None, 5, 7)
    assert health.since == pytest.approx(clock.t + 1.7e9)


def test_a_flush_failure_loses_exactly_the_unflushed_events_and_the_sink_is_recreated() -> None:
    world, clock = World(), Clock()
    g = guard(world, clock)
    send(g, 0, 4)  # delivered
    world.fail_flush = True
    with capture_logs() as logs:
        send(g, 4, 3)  # accepted, then the flush fails: those 3 are lost
        assert (g.state, g.dropped, world.discarded) == ("down", 3, 1)
        send(g, 7, 2)  # down: refused, counted
        update = CountUpdate(stream="cam", line="exit", class_name="box", direction="in", total=1, ts=0.0)
        g.write(update, b"{}")
        g.write(TrackedFrame(stream="cam", frame=1, pts_s=0, ts=0, tracks=[], t_decoded_ns=0, t_analysed_ns=0), b"{}")
        assert g.dropped == 6  # tracks are not for this sink: not a loss
        world.fail_flush = False
        clock.t += 1.0
        g.maintain()
        send(g, 9, 2)
    assert g.up and len(world.sinks) == 2
    assert [e.id for e in world.delivered] == [crossing(i).id for i in (0, 1, 2, 3, 9, 10)]
    assert [e["event"] for e in logs if e["event"].startswith("sink_") and e["log_level"] != "debug"] == \
        ["sink_down", "sink_up"]
    assert events(logs, "sink_down")[0]["action"] == "flush"


def test_a_sink_that_opens_but_fails_at_once_does_not_flap_at_the_shortest_delay() -> None:
    """A still-full disk: the file opens, the next flush fails. The backoff keeps growing until a flush works."""
    world, clock = World(), Clock()
    g = guard(world, clock)
    world.fail_flush = True
    opens_at = []
    with capture_logs() as logs:
        for _ in range(100):
            send(g, 0, 1)
            before = world.opens
            clock.t += 0.25
            g.maintain()
            if world.opens > before:
                opens_at.append(round(clock.t - 1000.0, 2))
        assert opens_at == [1.0, 3.0, 7.0, 11.0, 15.0, 19.0, 23.0]
        world.fail_flush = False
        clock.t += 4.0
        g.maintain()
        send(g, 0, 1)  # works: proven, the backoff starts over
        world.fail_flush = True
        send(g, 0, 1)
        reopened = clock.t + 1.0
        clock.t = reopened
        g.maintain()
    assert world.opens == 1 + len(opens_at) + 2 and g.up
    transitions = [e["event"] for e in logs if e["event"] in ("sink_down", "sink_up")]
    assert transitions == ["sink_down", "sink_up"] * (len(opens_at) + 2)  # two lines per reopen, spaced by the backoff


def test_write_failure_counts_the_refused_event_and_what_was_pending() -> None:
    world, clock = World(), Clock()
    g = guard(world, clock)
    g.write(crossing(0), b"{}")
    g.write(crossing(1), b"{}")
    world.fail_write = True
    g.write(crossing(2), b"{}")  # raises inside: itself plus the two pending are lost
    assert (g.state, g.dropped, g.failures) == ("down", 3, 1)
    assert g.error is not None and g.error.startswith("OSError: [Errno 28]")
    g.flush()  # down: nothing to flush, nothing raised


def test_many_events_while_down_log_once_and_a_second_outage_logs_again() -> None:
    world, clock = World(), Clock()
    g = guard(world, clock)
    with capture_logs() as logs:
        for outage in range(2):
            world.fail_flush = True
            send(g, 0, 1)
            world.fail_open = OSError(errno.ENOSPC, "No space left on device")
            for _ in range(200):
                clock.t += 0.5
                g.maintain()
                send(g, 0, 10)
            world.fail_open = None
            world.fail_flush = False
            clock.t += 5.0
            g.maintain()
            assert g.up
    transitions = [e["event"] for e in logs if e["event"].startswith("sink_") and e["log_level"] != "debug"]
    assert transitions == ["sink_down", "sink_up"] * 2  # retries that fail while down log at debug level only
    assert g.dropped == 2 * (1 + 200 * 10)


def test_close_failure_is_reported_and_closed_sinks_are_not_reopened() -> None:
    world, clock = World(), Clock()
    g = guard(world, clock)
    g.write(crossing(0), b"{}")
    world.fail_close = True
    g.close()
    assert (g.state, g.dropped) == ("down", 1)
    clock.t += 100
    g.maintain()
    assert world.opens == 1


def test_credentials_in_errors_are_redacted() -> None:
    world, clock = World(), Clock()
    world.fail_open = ConnectionError("cannot reach mqtts://user:pa55@w/rd@broker:8883/x?token=abc")
    g = guard(world, clock)
    assert g.error is not None and "pa55" not in g.error and "abc" not in g.error and "w/rd" not in g.error


def test_health_travels_in_the_heartbeat() -> None:
    beat = Heartbeat(stage="sinks", pid=1, streams={},
                     sinks={"jsonl:/x": SinkHealth(state="down", error="OSError: x", dropped=3, failures=2, since=1.5)})
    decoded = heartbeat_decoder.decode(msgspec.msgpack.encode(beat))
    assert decoded.sinks == beat.sinks
    assert heartbeat_decoder.decode(msgspec.msgpack.encode(Heartbeat(stage="a", pid=1, streams={}))).sinks is None


@pytest.mark.parametrize(("include_tracks", "tracks", "event"), [(False, False, True), (True, True, True)])
def test_accepts_follows_the_include_filters(include_tracks: bool, tracks: bool, event: bool) -> None:
    config = JsonlSinkConfig(type="jsonl", path="x", include_tracks=include_tracks)
    frame = TrackedFrame(stream="cam", frame=1, pts_s=0, ts=0, tracks=[], t_decoded_ns=0, t_analysed_ns=0)
    assert (accepts(config, frame), accepts(config, crossing(0))) == (tracks, event)


def test_jsonl_discard_cuts_the_file_back_to_the_last_flush(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=str(path)))
    for i in range(3):
        sink.write(crossing(i), f'{{"i": {i}}}'.encode())
    sink.flush()
    for i in range(3, 3000):  # more than the buffer: part of it reaches the file before the failure
        sink.write(crossing(i), f'{{"i": {i}, "pad": "{"x" * 40}"}}'.encode())
    assert path.stat().st_size > 3 * 10
    assert sink.discard() == 2997
    assert path.read_text().splitlines() == ['{"i": 0}', '{"i": 1}', '{"i": 2}']


def test_jsonl_open_cuts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"i": 0}\n{"i": 1}\n{"i": 2, "to')
    with capture_logs() as logs:
        sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=str(path)))
    sink.write(crossing(3), b'{"i": 3}')
    sink.close()
    assert path.read_text().splitlines() == ['{"i": 0}', '{"i": 1}', '{"i": 3}']
    assert events(logs, "jsonl_torn_line_removed")[0]["bytes"] == len(b'{"i": 2, "to')


def test_jsonl_under_a_regular_file_goes_down_and_comes_up_when_the_folder_exists(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    config = JsonlSinkConfig(type="jsonl", path=str(blocker / "events.jsonl"))
    clock = Clock()
    g = GuardedSink(f"jsonl:{config.path}", lambda: JsonlSink(config), lambda m: accepts(config, m),
                    retry=RETRY, clock=clock)
    assert g.state == "down" and str(g.error).startswith(("FileExistsError", "NotADirectoryError"))
    send(g, 0, 4)
    os.remove(blocker)
    clock.t += 1.0
    g.maintain()
    send(g, 4, 2)
    g.close()
    assert g.up is False and g.dropped == 4
    assert len((blocker / "events.jsonl").read_text().splitlines()) == 2
