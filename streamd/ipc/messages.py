"""Every message that crosses a socket, as frozen msgspec structs (msgpack on the wire, never pickle).

Timestamps ending in ``_ns`` are CLOCK_MONOTONIC nanoseconds (one clock for all processes on a host)
and measure latency; ``wall_ts`` is Unix time in seconds for people and external systems.
"""

from __future__ import annotations

from typing import Union

import msgspec


class FrameReady(msgspec.Struct, frozen=True, tag="frame"):
    """decoder -> inference: a frame sits in ``ring`` under ``seq``. A wake-up, not the frame itself."""

    stream: str
    pipeline: str
    ring: str
    seq: int
    realtime: bool
    t_decoded_ns: int


class StreamEnd(msgspec.Struct, frozen=True, tag="end"):
    """A finite source finished after frame ``last_seq``; flows decoder -> inference -> analytics -> sinks."""

    stream: str
    ring: str
    last_seq: int


class Detections(msgspec.Struct, frozen=True, tag="detections"):
    """inference -> analytics: detections of one frame, boxes in source pixels.

    Arrays travel as raw little-endian bytes: xyxy float32 [n, 4], confidence float32 [n], class_id int32 [n].
    """

    stream: str
    pipeline: str
    seq: int
    frame_index: int
    pts_s: float
    wall_ts: float
    width: int
    height: int
    xyxy: bytes
    confidence: bytes
    class_id: bytes
    batch_size: int
    t_decoded_ns: int
    t_batched_ns: int
    t_inferred_ns: int
    ring: str = ""  # the ring the frame came from: a stream restarted by a reload gets a new one


class Track(msgspec.Struct, frozen=True, array_like=True):
    track_id: int
    class_id: int
    class_name: str
    confidence: float
    xyxy: tuple[float, float, float, float]


class TrackedFrame(msgspec.Struct, frozen=True, tag="tracks"):
    """analytics -> sinks: tracked objects of one frame."""

    stream: str
    frame: int
    pts_s: float
    ts: float
    tracks: list[Track]
    t_decoded_ns: int
    t_analysed_ns: int
    seq: int = 0  # ring sequence number of the frame (the preview finds its pixels by it)
    ring: str = ""


class LineCrossing(msgspec.Struct, frozen=True, tag="line_crossing"):
    """analytics -> sinks: a track crossed a counting line. ``id`` is stable for the same crossing."""

    id: str
    stream: str
    line: str
    direction: str
    track_id: int
    class_id: int
    class_name: str
    frame: int
    pts_s: float
    ts: float
    t_decoded_ns: int
    t_analysed_ns: int


class ZoneEvent(msgspec.Struct, frozen=True, tag="zone_event"):
    """analytics -> sinks: a track entered or left a zone. ``id`` is stable for the same event; an exit's id
    is its visit's enter id plus ``/exit``. ``lost`` marks an exit because the track was not seen any more
    (``ts``/``frame`` are then of its last sighting). ``occupancy`` is the zone's class -> tracks inside
    after the event."""

    id: str
    stream: str
    zone: str
    event: str  # "enter" | "exit"
    track_id: int
    class_id: int
    class_name: str
    frame: int
    pts_s: float
    ts: float
    dwell_s: float | None  # exits only
    lost: bool
    occupancy: dict[str, int]
    t_decoded_ns: int
    t_analysed_ns: int


class Evidence(msgspec.Struct, frozen=True, tag="evidence", omit_defaults=True):
    """sinks (evidence writer) -> the other sinks: the files that document event ``id``, once written.

    Sent after the event itself (the writer works beside the sinks, never delaying them): once when the
    snapshot is written, and again with ``clip`` set when the event's clip is done. Paths are API URLs."""

    id: str  # the event's id (line_crossing / zone_event)
    stream: str
    event_type: str  # "line_crossing" | "zone_event"
    ts: float  # Unix time of the event's frame
    snapshot: str | None = None  # /api/events/<id>/snapshot.jpg
    crop: str | None = None  # /api/events/<id>/crop.jpg
    clip: str | None = None  # /api/events/<id>/clip.mp4
    bytes: int = 0  # on disk for this record's files


class CountUpdate(msgspec.Struct, frozen=True, tag="count_update"):
    """analytics -> sinks: the new all-time total of one (stream, line or zone, class, direction) after an
    event. For lines ``direction`` is ``in`` or ``out``; for zones (``kind`` = ``zone``) it is ``enter``
    and ``total`` counts visits."""

    stream: str
    line: str
    class_name: str
    direction: str
    total: int
    ts: float
    kind: str = "line"


class StreamRemoved(msgspec.Struct, frozen=True, tag="removed"):
    """supervisor -> inference -> analytics -> sinks: a reload removed or restarted the stream; forget the state
    that belongs to ``ring`` (a newer ring of the same stream is left alone). ``handed_over``: the stream moves to
    another fleet node, which continues from its stored tracker state: analytics keeps that state stored."""

    stream: str
    ring: str
    handed_over: bool = False


class Reconfigure(msgspec.Struct, frozen=True, tag="reconfigure"):
    """supervisor -> a running inference or analytics stage: run these parameters from now on (the stage's
    typed params as JSON, streamd/runtime/params.py). Idempotent: the supervisor resends it until the stage's
    heartbeat reports ``config_hash``; a lost message only delays the change."""

    stage: str
    params: bytes
    config_hash: str


class CameraHealth(msgspec.Struct, frozen=True, tag="camera_health"):
    """health stage -> sinks: one camera health check of a stream changed state (``ok``, ``warning``,
    ``failed``). ``checks`` is every check's state after the change; ``detail`` what the check measured."""

    id: str
    stream: str
    check: str  # frozen | blackout | blur | moved | starvation
    state: str
    previous: str
    ts: float
    checks: dict[str, str]
    detail: dict[str, float] = msgspec.field(default_factory=dict)


class HealthReset(msgspec.Struct, frozen=True, tag="health_reset"):
    """supervisor -> health stage: learn the stream's baselines and reference view again (a deliberate move)."""

    stream: str


class DetectionTally(msgspec.Struct, frozen=True, tag="tally"):
    """analytics -> health stage, about once a second per stream: detections in the frames analysed since the
    last tally, for the detection-starvation check (off the analytics hot path: one small message a second)."""

    stream: str
    detections: int
    frames: int
    t_decoded_ns: int  # of the last of those frames (CLOCK_MONOTONIC, as the health checks' other samples)


class StreamCounters(msgspec.Struct, omit_defaults=True):
    """Per-stream numbers a stage reports in its heartbeat; each stage fills the fields it owns."""

    state: str | None = None
    frames_decoded: int | None = None
    frames_skipped: int | None = None  # decoded but not analysed: above the stream's detect_fps
    reconnects: int | None = None
    last_error: str | None = None
    # decoder, damaged sources (the stream keeps running): frames the file's container announced, packets the
    # decoder refused (skipped), frames decoded with concealed errors, the file ended early, and what to tell
    frames_expected: int | None = None
    corrupt_packets: int | None = None
    corrupt_frames: int | None = None
    truncated: bool | None = None
    warning: str | None = None
    frames_inferred: int | None = None
    dropped_stale: int | None = None
    dropped_overwritten: int | None = None
    frames_analysed: int | None = None
    crossings: int | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    stage_p99_ms: dict[str, float] | None = None  # queue (decoded->batched), infer, analyse
    line_counts: dict[str, int] | None = None  # "line/class/direction" -> all-time crossings (zones: zone/class/enter)
    zone_occupancy: dict[str, int] | None = None  # "zone/class" -> tracks inside now
    # histograms (runtime/histogram.py buckets; counts per bucket + overflow, and the sum), for /metrics
    latency_hist: tuple[list[int], float] | None = None  # end to end, decoded -> written by the sinks (ms)
    stage_hist: dict[str, tuple[list[int], float]] | None = None  # queue / infer / analyse (ms)
    events_written: int | None = None
    drained: bool | None = None
    health: dict[str, str] | None = None  # health stage: check -> ok | warning | failed
    evidence: dict[str, int] | None = None  # sinks: evidence writer counters (snapshots, misses, drops)


class OutboxCounters(msgspec.Struct, omit_defaults=True):
    """Numbers of one network sink's durable outbox (sinks stage), keyed by sink name in the heartbeat."""

    depth: int = 0  # events waiting for delivery (on disk)
    bytes: int = 0  # their payload bytes
    delivered: int = 0  # acknowledged by the target since the stage started
    retries: int = 0  # failed delivery rounds (each followed by a backoff delay)
    dropped_full: int = 0  # new events refused because the outbox was full
    rejected: int = 0  # events the target refused for good (e.g. HTTP 400/422), removed
    oldest_age_s: float = 0.0  # age of the oldest waiting event
    target_up: bool | None = None  # last delivery round succeeded
    last_error: str | None = None


class SinkHealth(msgspec.Struct, frozen=True, omit_defaults=True):
    """State of one sink (sinks stage), keyed by the sink's display name in the heartbeat.

    ``state`` is ``up`` or ``down``; a down sink is re-created with backoff and counts what it could not take.
    """

    state: str  # "up" | "down"
    error: str | None = None  # why it is down (redacted); None while up
    dropped: int = 0  # events this sink lost since the stage started: refused while down, or unflushed at a failure
    failures: int = 0  # failed opens, writes, flushes and closes since the stage started
    since: float = 0.0  # Unix time of the last change of state


class Heartbeat(msgspec.Struct, frozen=True, tag="heartbeat"):
    """stage -> supervisor, about once a second from the stage's main loop (so a stuck loop goes silent)."""

    stage: str
    pid: int
    streams: dict[str, StreamCounters]
    batches: int = 0
    mean_batch_size: float = 0.0
    infer_ms_p50: float = 0.0
    infer_hist: tuple[list[int], float] | None = None  # inference time per batch (ms)
    batch_hist: tuple[list[int], float] | None = None  # frames per batch
    outboxes: dict[str, OutboxCounters] = msgspec.field(default_factory=dict)  # sinks stage: sink name -> outbox
    sinks: dict[str, SinkHealth] | None = None  # sinks stage: sink display name -> health
    config_hash: str = ""  # digest of the parameters the stage runs now (streamd/runtime/params.py)
    fatal_error: str | None = None  # last words of a stage that is exiting because of an error


PipelineMessage = Union[FrameReady, StreamEnd, StreamRemoved, Reconfigure, Detections, TrackedFrame, LineCrossing,
                        ZoneEvent, CountUpdate, CameraHealth, HealthReset, DetectionTally]

encoder = msgspec.msgpack.Encoder()
pipeline_decoder = msgspec.msgpack.Decoder(PipelineMessage)
heartbeat_decoder = msgspec.msgpack.Decoder(Heartbeat)
