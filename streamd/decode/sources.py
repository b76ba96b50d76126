"""Opening sources with PyAV: files, RTSP over TCP with timeouts, V4L2/USB devices."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from streamd.config.models import StreamConfig
from streamd.errors import SourceError
from streamd.redact import redact

# Low-latency demuxing for live sources: no input buffering, no B-frame reordering delay.
_LIVE_OPTIONS = {"fflags": "nobuffer", "flags": "low_delay"}


@dataclass(frozen=True)
class DecodedFrame:
    image: np.ndarray  # H x W x 3 BGR uint8
    pts_s: float


def open_source(stream: StreamConfig) -> av.container.InputContainer:
    """Open the stream's source or raise SourceError with a redacted, actionable message."""
    kind = stream.kind
    options: dict[str, str] = {}
    fmt: str | None = None
    url = stream.url
    if kind == "rtsp":
        options = {"rtsp_transport": "tcp", **_LIVE_OPTIONS}
    elif kind == "v4l2":
        fmt = "v4l2"
        url = url.removeprefix("v4l2://")
        options = dict(_LIVE_OPTIONS)
    options.update(stream.options)
    try:
        container = av.open(
            url, format=fmt, options=options,
            timeout=(stream.retry.open_timeout_s, stream.retry.read_timeout_s),
        )
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(f"stream {stream.name}: cannot open {redact(stream.url)}: {redact(str(exc))}") from exc
    if not container.streams.video:
        container.close()
        raise SourceError(f"stream {stream.name}: {redact(stream.url)} has no video track")
    return container


def decode_frames(container: av.container.InputContainer, live: bool) -> Iterator[DecodedFrame]:
    """Yield BGR frames. Live sources decode single-threaded: frame threading adds ~2 frames of delay."""
    video = container.streams.video[0]
    video.thread_type = "SLICE" if live else "AUTO"
    fallback_rate = float(video.average_rate or 25)
    for index, frame in enumerate(container.decode(video)):
        pts_s = float(frame.time) if frame.time is not None else index / fallback_rate
        yield DecodedFrame(image=frame.to_ndarray(format="bgr24"), pts_s=pts_s)
