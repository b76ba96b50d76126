"""Pydantic models of the daemon configuration. Pure: no file, network or model access here."""

from __future__ import annotations

import os
from collections import Counter
from datetime import time
from difflib import get_close_matches
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, available_timezones

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from streamd.config.fleet import FleetConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,47}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="Letters, digits, '_' or '-', at most 48 characters.")]
MAX_COORDINATE = 1_000_000.0
Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)]
Point = Annotated[tuple[Coordinate, Coordinate], Field(description="[x, y] in source-frame pixels.")]

SECRET_FIELDS = frozenset({"password", "token", "secret", "bearer_token"})
"""Field names whose values are credentials: error messages never echo them (see also the SecretStr fields)."""


class Strict(BaseModel):
    # allow_inf_nan=False: .inf/.nan is refused in every float field (a line at .inf silently never counts)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BackoffConfig(Strict):
    initial_s: float = Field(0.5, gt=0, le=60, description="First retry delay in seconds.")
    max_s: float = Field(30.0, gt=0, le=3600, description="Largest retry delay in seconds.")
    multiplier: float = Field(2.0, ge=1, le=10, description="Delay growth factor per failed attempt.")
    jitter: float = Field(0.2, ge=0, le=1, description="Random spread of each delay, as a fraction of it.")


class SourceRetryConfig(BackoffConfig):
    max_attempts: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Consecutive failed opens before the stream is marked failed; none = retry forever "
        "(default for live sources; files default to 3).",
    )
    open_timeout_s: float = Field(10.0, gt=0, le=300, description="Give up opening a source after this long.")
    read_timeout_s: float = Field(5.0, gt=0, le=300, description="Treat a live source as lost after this long without data.")


class FrozenCheckConfig(Strict):
    enabled: bool = Field(True, description="Alarm when the picture does not change while frames keep arriving.")
    after_s: float = Field(10.0, gt=0, le=3600, description="Seconds without change before the check fails.")
    pixel_noise: int = Field(6, ge=0, le=255, description="Grey levels a pixel of the downscaled picture may "
                             "change by noise and compression between samples.")
    max_changed: float = Field(
        0.0005, ge=0, le=1,
        description="Fraction of pixels changed beyond pixel_noise between samples below which nothing moved.",
    )


class BlackoutCheckConfig(Strict):
    enabled: bool = Field(True, description="Alarm on a dark, covered or near-uniform picture, or a brightness drop.")
    after_s: float = Field(3.0, gt=0, le=3600, description="Seconds the condition must hold before the state changes.")
    dark_level: float = Field(18.0, ge=0, le=255, description="Mean grey level below which the picture is black (failed).")
    min_contrast: float = Field(4.0, ge=0, le=128, description="Grey-level standard deviation below which the "
                                "picture is uniform: covered lens, test picture (failed).")
    drop_ratio: float = Field(0.4, gt=0, lt=1, description="Warning when brightness falls below this fraction of "
                              "the stream's learned baseline (lights out, iris stuck).")


class BlurCheckConfig(Strict):
    enabled: bool = Field(True, description="Alarm when sharpness falls well below the stream's learned baseline.")
    after_s: float = Field(5.0, gt=0, le=3600, description="Seconds the condition must hold before the state changes.")
    warning_ratio: float = Field(0.5, gt=0, lt=1, description="Sharpness (variance of the Laplacian, contrast-"
                                 "normalised) below this fraction of the baseline: warning.")
    failed_ratio: float = Field(0.3, gt=0, lt=1, description="Below this fraction of the baseline: failed.")


class MovedCheckConfig(Strict):
    enabled: bool = Field(True, description="Alarm when the view shifted or rotated against the reference learned at "
                          "start (POST /api/streams/<name>/health/reset learns it again).")
    after_s: float = Field(3.0, gt=0, le=3600, description="Seconds the condition must hold before the state changes.")
    warning_shift: float = Field(0.015, gt=0, le=1, description="Shift of the picture centre, as a fraction of the "
                                 "width, from which the check warns.")
    failed_shift: float = Field(0.03, gt=0, le=1, description="Shift (fraction of the width) from which it fails.")
    warning_deg: float = Field(1.0, gt=0, le=180, description="Rotation in degrees from which the check warns.")
    failed_deg: float = Field(2.0, gt=0, le=180, description="Rotation in degrees from which it fails.")


class StarvationCheckConfig(Strict):
    enabled: bool = Field(False, description="Alarm when a stream that usually has detections has none (off by "
                          "default: many scenes are legitimately empty for long).")
    after_s: float = Field(120.0, gt=0, le=86400, description="Seconds without any detection before the check warns.")
    min_busy_fraction: float = Field(
        0.5, gt=0, le=1,
        description="Only streams whose history has detections in at least this fraction of minutes are checked.",
    )


class HealthConfig(Strict):
    """Camera health checks of one stream (streamd/health/): run on a small grey copy of 1-2 frames a second."""

    enabled: bool = Field(True, description="Run the camera health checks on this stream.")
    sample_fps: float = Field(2.0, gt=0, le=10, description="Frames checked per second.")
    learn_s: float = Field(5.0, ge=0, le=3600, description="Seconds at start (and after a reset) during which the "
                           "baselines (brightness, sharpness) and the reference view are learned.")
    clear_s: float = Field(3.0, ge=0, le=3600, description="A check goes back to ok after its condition is gone "
                           "this long (hysteresis).")
    frozen: FrozenCheckConfig = Field(default_factory=FrozenCheckConfig)
    blackout: BlackoutCheckConfig = Field(default_factory=BlackoutCheckConfig)
    blur: BlurCheckConfig = Field(default_factory=BlurCheckConfig)
    moved: MovedCheckConfig = Field(default_factory=MovedCheckConfig)
    starvation: StarvationCheckConfig = Field(default_factory=StarvationCheckConfig)


class ClipConfig(Strict):
    """Event clips of one stream (streamd/evidence/): encoded packets kept in rolling segments, remuxed, never re-encoded."""

    pre_s: float = Field(5.0, ge=0, le=120, description="Seconds of video before the event in its clip.")
    post_s: float = Field(5.0, ge=0, le=120, description="Seconds of video after the event in its clip.")
    segment_s: float = Field(2.0, ge=0.5, le=30, description="Length of the rolling segments (cut at keyframes).")


class StreamConfig(Strict):
    name: Name
    url: str = Field(description="File path, rtsp://..., or a V4L2 device (/dev/videoN or v4l2:///dev/videoN).")
    pipeline: Name = Field(description="Name of a pipeline in `pipelines:` or a file pipelines/<name>.yaml.")
    enabled: bool = Field(True, description="Set false to keep a stream in the file without running it.")
    realtime: bool | None = Field(
        None,
        description="Files only: pace frames at their timestamps and keep the newest frame (drops counted) "
        "instead of processing every frame as fast as possible. Live sources are always real time.",
    )
    loop: bool = Field(False, description="Files only: start again at the end instead of finishing.")
    playback_speed: float = Field(
        1.0, gt=0, le=100,
        description="Real-time files only: play at this multiple of the file's frame rate (replay recorded "
        "footage faster, or load-test: frames the pipeline cannot keep up with are dropped and counted).",
    )
    detect_fps: float | None = Field(
        None, gt=0, le=240,
        description="Analyse at most this many frames a second of the stream's time (evenly spaced by timestamp; "
        "the others are decoded, skipped and counted as frames_skipped). Tracking and counting are time-based, so "
        "counts stay exact at a few frames a second while inference costs a fraction. Default: every frame.",
    )
    ring_slots: int = Field(8, ge=3, le=256, description="Frames held in the stream's shared-memory ring.")
    # The ring reserves ring_slots x max_width x max_height x 3 bytes of /dev/shm from the start (8 x 1080p = 50 MB);
    # a 4K camera sets 3840 x 2160, and a larger frame fails its stream with an error that says so.
    max_width: int = Field(1920, ge=16, le=16384, description="Largest frame width the ring is sized for (4K: 3840).")
    max_height: int = Field(1080, ge=16, le=16384, description="Largest frame height the ring is sized for (4K: 2160).")
    options: dict[str, str] = Field(default_factory=dict, description="Extra FFmpeg demuxer options.")
    retry: SourceRetryConfig = Field(default_factory=SourceRetryConfig)
    health: HealthConfig = Field(default_factory=HealthConfig, description="Camera health checks (frozen, blackout, blur, moved); on by default.")
    clips: ClipConfig | None = Field(None, description="Keep encoded video and write an MP4 clip around each event (evidence).")

    @property
    def kind(self) -> Literal["file", "rtsp", "v4l2"]:
        return source_kind(self.url)

    @property
    def is_live(self) -> bool:
        return self.kind != "file"

    @property
    def is_realtime(self) -> bool:
        return self.is_live or bool(self.realtime)

    @property
    def is_finite(self) -> bool:
        return self.kind == "file" and not self.loop


def source_kind(url: str) -> Literal["file", "rtsp", "v4l2"]:
    lowered = url.lower()
    if lowered.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if lowered.startswith("v4l2://") or lowered.startswith("/dev/video"):
        return "v4l2"
    return "file"


class LineConfig(Strict):
    name: Name
    points: tuple[Point, Point] = Field(description="Two [x, y] points in source-frame pixels.")
    classes: list[str] | None = Field(None, description="Count only these class names (default: all).")
    anchor: Literal["bottom_center", "center", "top_center"] = Field(
        "bottom_center", description="Point of the box that must cross the line."
    )
    min_distance_px: float = Field(
        2.0, ge=0, le=1000, description="A track counts only once it is this far past the line (hysteresis)."
    )

    @field_validator("points")
    @classmethod
    def _distinct(cls, points: tuple[Point, Point]) -> tuple[Point, Point]:
        if points[0] == points[1]:
            raise ValueError("the two points of a line must differ")
        return points


class ZoneConfig(Strict):
    name: Name
    polygon: list[Point] = Field(min_length=3, max_length=256,
                                 description="Polygon corners [[x, y], ...] in source-frame pixels.")
    classes: list[str] | None = Field(None, description="Watch only these class names (default: all).")
    anchor: Literal["bottom_center", "center", "top_center"] = Field(
        "bottom_center", description="Point of the box that decides whether it is inside."
    )
    min_distance_px: float = Field(
        2.0, ge=0, le=1000,
        description="Hysteresis: a track enters once this far inside the edge and exits once this far outside.",
    )
    exit_after_lost_s: float = Field(
        2.0, gt=0, le=3600, description="A track inside that is not seen for this long has exited (left unseen).",
    )

    @field_validator("polygon")
    @classmethod
    def _has_area(cls, polygon: list[Point]) -> list[Point]:
        xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
        area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(polygon))))
        if area < 1.0:
            raise ValueError("a zone polygon must enclose an area (its corners are on one line)")
        return polygon


class TrackerConfig(Strict):
    lost_track_s: float = Field(1.0, gt=0, le=60, description="Keep a lost track this many seconds for re-association.")
    activation_threshold: float = Field(0.5, ge=0, le=1, description="Confidence needed to start a track.")
    high_confidence: float = Field(0.5, ge=0, le=1, description="First-stage association threshold.")
    min_iou: float = Field(0.1, ge=0, le=1, description="Smallest IoU that links a detection to a track.")
    min_consecutive_frames: int = Field(1, ge=1, le=30, description="Frames before a new track gets an id.")
    iou_buffer: float = Field(
        0.3, ge=0, le=2,
        description="Buffered IoU (BIoU): boxes grow by this fraction of their size before matching, so objects "
        "that move far between analysed frames (fast belts, dropped frames) keep their track; 0 = plain IoU.",
    )


class PreprocessOverrides(Strict):
    """Single fields of the adapter's pre-processing defaults to override (unset: the adapter's default)."""

    letterbox: bool | None = Field(None, description="Keep the aspect ratio and pad (true) or stretch (false).")
    pad_position: Literal["center", "top_left"] | None = Field(None, description="Where the letterboxed image sits.")
    pad_value: int | None = Field(None, ge=0, le=255, description="Grey level of the padding.")
    rgb: bool | None = Field(None, description="Feed RGB (true) or BGR (false) channel order.")
    scale: float | None = Field(None, gt=0, description="Multiplied into the 0..255 pixel values, e.g. 0.00392 (1/255).")
    mean: tuple[float, float, float] | None = Field(None, description="Subtracted per channel after scaling.")
    std: tuple[float, float, float] | None = Field(None, description="Divided per channel after the mean.")
    resize: Literal["linear", "linear_float", "area"] | None = Field(
        None, description="How the frame is resampled: linear (OpenCV bilinear on 8-bit pixels), linear_float "
        "(bilinear on float pixels, as PyTorch, rfdetr and torchvision do), area (OpenCV INTER_AREA).")

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if std is not None and min(std) <= 0:
            raise ValueError("std values must be > 0")
        return std


class EvidenceConfig(Strict):
    """Snapshots of every line crossing and zone event (streamd/evidence/); retention applies to each stream."""

    snapshots: bool = Field(False, description="Write a JPEG of the frame and a crop of the object for each event.")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of snapshots and crops.")
    max_width: int = Field(1280, ge=64, le=16384, description="Snapshots wider than this are scaled down (crops are not).")
    max_age_s: float = Field(30 * 86400, gt=0, le=10 * 365 * 86400,
                             description="Per stream: delete snapshots and clips older than this.")
    max_bytes: int = Field(2 << 30, ge=1 << 16, le=1 << 44,
                           description="Per stream: delete the oldest snapshots and clips beyond this many bytes.")


class PipelineConfig(Strict):
    model: str = Field(description="Path to an ONNX model file.")
    labels: str | None = Field(None, description="Class-names file (one per line) for models that carry none.")
    adapter: Literal["auto", "ultralytics", "ultralytics_e2e", "rtdetr", "yolox", "fastestdet", "rfdetr",
                     "torchvision"] = Field(
        "auto", description="Output decoder; auto reads the model's metadata, else its output names and shapes.")
    preprocess: PreprocessOverrides = Field(
        default_factory=PreprocessOverrides,
        description="Override the adapter's pre-processing defaults (letterbox, pad, channel order, scaling).")
    input_size: tuple[int, int] | None = Field(None, description="[height, width] for models with a dynamic input size.")
    confidence: float = Field(0.25, ge=0, le=1, description="Drop detections below this score.")
    iou: float = Field(0.45, gt=0, le=1, description="IoU threshold of non-maximum suppression.")
    class_agnostic_nms: bool = False
    max_detections: int = Field(300, ge=1, le=10000)
    classes: list[str] | None = Field(None, description="Keep only these class names (default: all).")
    roi: tuple[Point, Point] | None = Field(
        None, description="Region of interest: [[x1, y1], [x2, y2]] in source pixels. Only this rectangle is given "
        "to the model, at the model's full input size (a belt in a strip of the frame: small products come out "
        "larger, less is resized); boxes, lines and zones stay in source pixels. Clipped to the frame.")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    lines: list[LineConfig] = Field(default_factory=list)
    zones: list[ZoneConfig] = Field(default_factory=list)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig, description="Snapshots per event and their retention.")

    @model_validator(mode="after")
    def _roi_is_a_rectangle(self) -> PipelineConfig:
        if self.roi is not None:
            (x1, y1), (x2, y2) = self.roi
            if not (x2 - x1 >= 2 and y2 - y1 >= 2 and x2 > 0 and y2 > 0):
                raise ValueError(f"roi {[list(p) for p in self.roi]}: give the top-left corner first and the "
                                 f"bottom-right one second, at least 2 pixels apart on each axis")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> PipelineConfig:
        # lines and zones share one name space: counts and events are keyed by it
        names = Counter([line.name for line in self.lines] + [zone.name for zone in self.zones])
        dupes = sorted(n for n, seen in names.items() if seen > 1)
        if dupes:
            raise ValueError(f"line and zone names must be unique; repeated: {', '.join(dupes)}")
        return self


class InferenceConfig(Strict):
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference; unavailable ones are skipped (logged).",
    )
    intra_op_threads: int = Field(0, ge=0, le=256, description="ORT intra-op threads; 0 = ORT default.")
    inter_op_threads: int = Field(1, ge=0, le=256)
    spin: bool = Field(
        False, description="Let ORT worker threads busy-wait between runs: lower latency on an idle machine, "
        "but it steals CPU from decoders and tracking when cores are shared.",
    )
    max_batch: int = Field(4, ge=1, le=64, description="Send a batch once this many streams have a frame.")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="Or once the first frame of a batch waited this long.")


class JsonlSinkConfig(Strict):
    type: Literal["jsonl"]
    path: str = Field(description="File that receives one JSON event per line (appended).")
    include_tracks: bool = Field(False, description="Also write one `tracks` record per analysed frame.")
    max_bytes: int | None = Field(
        None, ge=1024, le=1 << 40,
        description="Rotate the file before it would grow past this size (whole lines only); none = never rotate.",
    )
    keep_files: int = Field(
        5, ge=1, le=1000, description="Rotated files kept as <path>.1 (newest) ... <path>.N; older ones are deleted.",
    )


class ZmqSinkConfig(Strict):
    type: Literal["zmq"]
    endpoint: str = Field("tcp://127.0.0.1:5560", description="ZeroMQ PUB endpoint to bind.")
    include_tracks: bool = Field(True, description="Also publish one `tracks` message per analysed frame.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith(("tcp://", "ipc://")):
            raise ValueError("endpoint must start with tcp:// or ipc://, e.g. tcp://127.0.0.1:5560")
        return value


class OutboxConfig(Strict):
    """Durable on-disk queue in front of a network sink: events survive an outage of the target and a restart."""

    path: str | None = Field(
        None, description="SQLite file of this sink's outbox; default: outbox-<sink name>.db in the state directory "
        "($STATE_DIRECTORY under systemd, else ./state).",
    )
    max_rows: int = Field(100_000, ge=1, le=100_000_000, description="Most events held; new events beyond it are dropped (counted, logged).")
    max_bytes: int = Field(256 << 20, ge=1 << 16, le=1 << 40, description="Most payload bytes held; beyond it new events are dropped.")
    batch: int = Field(100, ge=1, le=10_000, description="Events sent per delivery round (MQTT: in flight at once).")
    retry: BackoffConfig = Field(
        default_factory=lambda: BackoffConfig(initial_s=0.5, max_s=10.0),
        description="Delay between delivery attempts while the target is down.",
    )
    shutdown_grace_s: float = Field(
        3.0, ge=0, le=60, description="On stop, keep delivering queued events this long; the rest wait for the next start.",
    )


def _no_wildcards(value: str) -> str:
    if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
        raise ValueError("topic prefix must be non-empty, without + # or a leading/trailing '/', e.g. streamd or site1/streamd")
    return value


class MqttSinkConfig(Strict):
    type: Literal["mqtt"]
    name: Name = Field("mqtt", description="Names this sink's outbox and MQTT client id; unique among sinks.")
    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    client_id: str | None = Field(
        None, max_length=128, description="MQTT client id; default streamd-<host name>-<sink name> (stable across restarts).",
    )
    username: str | None = Field(None, description="Broker user; ${ENV} substitution works here.")
    password: SecretStr | None = Field(None, description="Broker password, e.g. ${MQTT_PASSWORD}; never logged.")
    tls: bool = Field(False, description="Connect with TLS (system CA store unless ca_file is set).")
    ca_file: str | None = Field(None, description="PEM bundle that signs the broker's certificate.")
    topic_prefix: str = Field("streamd", max_length=200, description="First topic levels of everything published.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive; the broker publishes the last will after 1.5x this.")
    ack_timeout_s: float = Field(10.0, gt=0, le=300, description="Wait this long for PUBACKs of a batch before backing off.")
    include_counts: bool = Field(True, description="Publish count_update totals, retained, per line/class/direction.")
    include_tracks: bool = Field(False, description="Also publish one `tracks` message per analysed frame (through the outbox).")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)

    _prefix = field_validator("topic_prefix")(_no_wildcards)


class WebhookSinkConfig(Strict):
    type: Literal["webhook"]
    name: Name = Field("webhook", description="Names this sink's outbox; unique among sinks.")
    url: str = Field(description="Endpoint that receives one HTTP POST with a JSON body per event.")
    secret: SecretStr | None = Field(
        None, description="Sign each body with HMAC-SHA256: header X-Streamd-Signature: sha256=<hex>; never logged.",
    )
    bearer_token: SecretStr | None = Field(None, description="Send Authorization: Bearer <token>; never logged.")
    timeout_s: float = Field(10.0, gt=0, le=300, description="Connect and read timeout of one request.")
    verify_tls: bool = Field(True, description="Check the endpoint's TLS certificate (https only).")
    include_counts: bool = Field(True, description="Also POST count_update totals.")
    include_tracks: bool = Field(False, description="Also POST one `tracks` record per analysed frame (through the outbox).")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://, e.g. https://example.com/streamd/events")
        return value


SinkConfig = Annotated[
    JsonlSinkConfig | ZmqSinkConfig | MqttSinkConfig | WebhookSinkConfig, Field(discriminator="type")
]


class SupervisorConfig(Strict):
    heartbeat_timeout_s: float = Field(15.0, gt=0, le=600, description="Restart a stage silent for this long.")
    restart: BackoffConfig = Field(default_factory=BackoffConfig)
    crash_loop_restarts: int = Field(5, ge=1, le=100, description="This many restarts within the window is a crash loop.")
    crash_loop_window_s: float = Field(60.0, gt=0, le=3600)
    stats_interval_s: float = Field(10.0, gt=0, le=3600, description="Log per-stream fps, drops and latency this often.")
    stop_timeout_s: float = Field(10.0, gt=0, le=120, description="Kill a stage that has not stopped after this long.")


class CountsConfig(Strict):
    path: str = Field("state/counts.db", description="SQLite file of durable counts (relative: to the config file). "
                      "Default: counts.db in $STATE_DIRECTORY under systemd, else state/counts.db beside the config.")
    timezone: str = Field("UTC", description="IANA time zone of hour and shift windows, e.g. Europe/Berlin.")
    shifts: list[str] = Field(
        default_factory=lambda: ["06:00", "14:00", "22:00"], min_length=1,
        description="Local start times of shifts; a shift runs until the next start.",
    )
    url: str | None = Field(
        None, repr=False, max_length=2048,
        description="PostgreSQL count store shared by a fleet, e.g. postgresql://user:${PGPASSWORD}@host/db; "
                    "replaces `path` when set. The password is never logged.",
    )

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            from streamd.redact import redact

            raise ValueError(f"counts.url {redact(value)!r} is not a PostgreSQL URL: write "
                             "postgresql://user:${PGPASSWORD}@host:5432/dbname (or leave it out for SQLite at `path`)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if not _is_zone(value):
            same = [name for name in _zone_names() if name.lower() == value.lower()]
            close = same or get_close_matches(value, _zone_names(), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(f"{value!r} is not an IANA time zone; {hint}use a name such as UTC, Europe/Berlin or "
                             "America/New_York (`python -c 'import zoneinfo; print(zoneinfo.available_timezones())'`)")
        return value

    @field_validator("shifts")
    @classmethod
    def _times(cls, shifts: list[str]) -> list[str]:
        for value in shifts:
            try:
                time.fromisoformat(value)
            except ValueError:
                raise ValueError(f"shift start {value!r} is not a time like 06:00") from None
        return shifts


@lru_cache(maxsize=256)
def _is_zone(name: str) -> bool:
    # the time zone database is read-only system data (like the Python standard library), not config I/O
    try:
        ZoneInfo(name)
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError (absolute or odd keys), OSError
        return False
    return True


@lru_cache(maxsize=1)
def _zone_names() -> list[str]:
    return sorted(available_timezones())


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class ApiConfig(Strict):
    enabled: bool = Field(True, description="Serve the HTTP API, metrics and live preview.")
    host: str = Field("127.0.0.1", description="Bind address; anything but loopback requires `token`.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one (logged).")
    token: str | None = Field(
        None, min_length=16, repr=False,
        description="Bearer token every endpoint except /healthz and /readyz requires (use ${STREAMD_API_TOKEN}).",
    )

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiConfig:
        if self.enabled and self.host not in LOOPBACK_HOSTS and not self.token:
            raise ValueError(
                f"api.host {self.host} is reachable from other machines: set api.token (16+ characters, e.g. "
                "token: ${STREAMD_API_TOKEN}) or bind 127.0.0.1"
            )
        return self


class DaemonConfig(Strict):
    streams: list[StreamConfig] = Field(min_length=1)
    pipelines: dict[Name, PipelineConfig] = Field(default_factory=dict)
    sinks: list[SinkConfig] = Field(default_factory=list)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    counts: CountsConfig = Field(default_factory=CountsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig, description="Run as one node of a fleet sharing "
                               "counts.url (PostgreSQL); see docs/fleet.md.")
    watch_config: bool = Field(True, description="Reload when the config file changes (also on SIGHUP and POST /api/reload).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _fleet_needs_postgres(self) -> DaemonConfig:
        if self.fleet.enabled and not self.counts.url:
            raise ValueError("fleet.enabled needs counts.url: the nodes of a fleet share one PostgreSQL "
                             "(counts.url: postgresql://user:${PGPASSWORD}@host/db)")
        return self

    @field_validator("sinks")
    @classmethod
    def _distinct_sinks(cls, sinks: list[SinkConfig]) -> list[SinkConfig]:
        # two sinks on one file, endpoint or outbox would garble or crash each other at run time
        names: dict[str, int] = {}
        files: dict[str, tuple[int, str]] = {}
        endpoints = _Endpoints()
        for i, sink in enumerate(sinks):
            if isinstance(sink, (MqttSinkConfig, WebhookSinkConfig)):
                if sink.name in names:
                    raise ValueError(
                        f"sinks[{i}]: sink name '{sink.name}' is already used by sinks[{names[sink.name]}]; give each "
                        f"mqtt/webhook sink its own `name:` (it names the sink's outbox and client id)")
                names[sink.name] = i
            for field, path in _sink_files(sink):
                if path in files:
                    j, other = files[path]
                    raise ValueError(f"sinks[{i}].{field}: {path} is already used by sinks[{j}].{other}; two sinks "
                                     f"cannot share one file: give each its own path")
                files[path] = (i, field)
            if isinstance(sink, ZmqSinkConfig):
                taken = endpoints.check(sink.endpoint, i)
                if taken is not None:
                    raise ValueError(f"sinks[{i}].endpoint: {sink.endpoint} is already bound by sinks[{taken}]; "
                                     f"one endpoint takes one zmq sink: use another port")
        return sinks

    @model_validator(mode="after")
    def _references(self) -> DaemonConfig:
        names = Counter(s.name for s in self.streams)
        dupes = sorted(n for n, seen in names.items() if seen > 1)
        if dupes:
            raise ValueError(f"stream names must be unique; repeated: {', '.join(dupes)}")
        for i, stream in enumerate(self.streams):
            if stream.pipeline not in self.pipelines:
                raise ValueError(
                    f"streams[{i}] ({stream.name}): pipeline '{stream.pipeline}' is not defined; "
                    f"add it under `pipelines:` or as pipelines/{stream.pipeline}.yaml "
                    f"(known: {', '.join(sorted(self.pipelines)) or 'none'})"
                )
            if stream.is_live and (stream.realtime is False or stream.loop):
                raise ValueError(f"streams[{i}] ({stream.name}): `realtime: false` and `loop` apply to files only")
            if stream.playback_speed != 1.0 and not (stream.kind == "file" and stream.realtime):
                raise ValueError(f"streams[{i}] ({stream.name}): `playback_speed` applies to files with `realtime: true`")
        return self

    @property
    def active_streams(self) -> list[StreamConfig]:
        return [s for s in self.streams if s.enabled]


def _sink_files(sink: JsonlSinkConfig | ZmqSinkConfig | MqttSinkConfig | WebhookSinkConfig) -> list[tuple[str, str]]:
    """(field, path) of each file a sink writes that the config names."""
    if isinstance(sink, JsonlSinkConfig):
        return [("path", os.path.normpath(sink.path))]
    if isinstance(sink, (MqttSinkConfig, WebhookSinkConfig)) and sink.outbox.path:
        return [("outbox.path", os.path.normpath(sink.outbox.path))]
    return []


class _Endpoints:
    """Endpoints bound so far; tcp://*:5560 (or 0.0.0.0) also takes tcp://127.0.0.1:5560 and the reverse."""

    def __init__(self) -> None:
        self.exact: dict[str, int] = {}
        self.wildcard_port: dict[str, int] = {}
        self.any_port: dict[str, int] = {}

    def check(self, endpoint: str, index: int) -> int | None:
        """The index of the sink that already binds ``endpoint``, else None (and ``endpoint`` is recorded)."""
        port: str | None = None
        wildcard = False
        if endpoint.startswith("tcp://"):
            host, _, port = endpoint[len("tcp://"):].rpartition(":")
            wildcard = host in ("*", "0.0.0.0", "[::]", "::")
        if endpoint in self.exact:
            return self.exact[endpoint]
        if port is not None:
            taken = (self.any_port if wildcard else self.wildcard_port).get(port)
            if taken is not None:
                return taken
            self.any_port.setdefault(port, index)
            if wildcard:
                self.wildcard_port.setdefault(port, index)
        self.exact[endpoint] = index
        return None
