"""Opening sources with PyAV: files, RTSP over TCP with timeouts, V4L2/USB devices."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import av
import numpy as np

from streamd.config.models import StreamConfig
from streamd.errors import SourceError
from streamd.redact import redact

# A packet gap this close to read_timeout_s means PyAV's timeout interrupted the read that delivered it.
STALL_FRACTION = 0.95

# A source that delivers this many packets in a row the decoder refuses is undecodable, not merely damaged.
MAX_CONSECUTIVE_BAD_PACKETS = 200
# A file whose decode ends this many frames (at least) short of its container's frame count was cut off.
TRUNCATION_TOLERANCE = 0.02
TRUNCATION_MIN_FRAMES = 2

# Low-latency demuxing for live sources: no B-frame reordering delay. RTSP keeps FFmpeg's probe buffer (with
# "fflags nobuffer" the packets read while probing, ~2 s of frames, were thrown away at every connect: objects
# passing then went uncounted) and probes for at most 0.5 s (opened in 0.6 s instead of 1.9 s, every frame kept).
_RTSP_OPTIONS = {"flags": "low_delay", "analyzeduration": "500000"}
_V4L2_OPTIONS = {"fflags": "nobuffer", "flags": "low_delay"}


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame; its pixels are converted only when asked for, once."""

    frame: av.VideoFrame
    pts_s: float

    @property
    def width(self) -> int:
        return int(self.frame.width)

    @property
    def height(self) -> int:
        return int(self.frame.height)

    @cached_property
    def image(self) -> np.ndarray:
        """H x W x 3 BGR uint8 (swscale)."""
        return self.frame.to_ndarray(format="bgr24")

    @cached_property
    def i420(self) -> np.ndarray | None:
        """The decoded planes as one I420 array (H * 3 / 2 x W, a copy without conversion), or None when the
        frame is not 4:2:0 video range with even sides (full-range yuvj, 4:2:2, RGB sources: use ``image``)."""
        if self.frame.format.name != "yuv420p" or self.frame.width % 2 or self.frame.height % 2:
            return None
        return self.frame.to_ndarray()


@dataclass
class DecodeStats:
    """What one pass of :func:`decode_frames` over a source met; filled while it runs."""

    frames: int = 0  # frames decoded in this pass (including any the caller skips)
    corrupt_packets: int = 0  # packets the demuxer flagged as corrupt or the decoder refused (skipped)
    corrupt_frames: int = 0  # frames decoded with concealed errors (damaged pixels, still delivered)


def expected_frames(container: av.container.InputContainer) -> int | None:
    """Frames the container says its video track holds: the index's frame count, else duration x frame rate;
    None when it tells neither (live sources, some raw streams)."""
    video = container.streams.video[0]
    if video.frames:
        return int(video.frames)
    rate = video.average_rate or video.guessed_rate
    if not rate:
        return None
    if video.duration and video.time_base:
        seconds = float(video.duration * video.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        return None
    return round(seconds * float(rate)) or None


def truncated(stats: DecodeStats, expected: int | None) -> bool:
    """True when a pass that reached the end of the file decoded clearly fewer frames than announced."""
    if expected is None:
        return False
    return expected - stats.frames >= max(TRUNCATION_MIN_FRAMES, expected * TRUNCATION_TOLERANCE)


def open_source(stream: StreamConfig) -> av.container.InputContainer:
    """Open the stream's source or raise SourceError with a redacted, actionable message."""
    kind = stream.kind
    options: dict[str, str] = {}
    fmt: str | None = None
    url = stream.url
    if kind == "rtsp":
        options = {"rtsp_transport": "tcp", **_RTSP_OPTIONS}
    elif kind == "v4l2":
        fmt = "v4l2"
        url = url.removeprefix("v4l2://")
        options = dict(_V4L2_OPTIONS)
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


def decode_frames(container: av.container.InputContainer, live: bool,
                  read_timeout_s: float | None = None, stats: DecodeStats | None = None,
                  on_packet: Callable[[av.Packet], None] | None = None) -> Iterator[DecodedFrame]:
    """Yield frames (pixels converted on demand). Live sources decode single-threaded: frame threading adds ~2
    frames of delay.

    ``read_timeout_s`` (live sources): a gap that long between packets is a stall. PyAV's own read timeout
    interrupts the blocked read, but the RTSP demuxer may hand over the truncated packet it was reading,
    which the decoder conceals, and only the next interrupted read raises: twice the timeout. Checking the
    gap per packet declares the stall after one.

    A packet the decoder refuses (damaged data, the cut-off last packet of a truncated file) is skipped and
    counted in ``stats``, as are frames decoded with concealed errors; only a long run of refused packets
    ends the pass with a SourceError.
    """
    stats = stats if stats is not None else DecodeStats()
    video = container.streams.video[0]
    video.thread_type = "SLICE" if live else "AUTO"
    fallback_rate = float(video.average_rate or 25)
    index = 0
    bad_in_a_row = 0
    last_packet = time.monotonic()
    for packet in container.demux(video):
        now = time.monotonic()
        if live and read_timeout_s is not None and now - last_packet >= read_timeout_s * STALL_FRACTION:
            raise SourceError(f"no data for {now - last_packet:.1f} s (read_timeout_s {read_timeout_s}): source stalled")
        last_packet = now
        if on_packet is not None:  # clips (streamd/evidence/segments.py): the encoded packet, before decoding
            on_packet(packet)
        if packet.is_corrupt:
            stats.corrupt_packets += 1
        try:
            frames = packet.decode()  # an empty packet at the end flushes the decoder
        except av.InvalidDataError as exc:
            if not packet.is_corrupt:
                stats.corrupt_packets += 1
            bad_in_a_row += 1
            if bad_in_a_row >= MAX_CONSECUTIVE_BAD_PACKETS:
                raise SourceError(f"{bad_in_a_row} packets in a row cannot be decoded ({exc}): the source "
                                  f"is not decodable video") from exc
            continue
        bad_in_a_row = 0
        for frame in frames:
            pts_s = float(frame.time) if frame.time is not None else index / fallback_rate
            index += 1
            stats.frames += 1
            if frame.is_corrupt:
                stats.corrupt_frames += 1
            yield DecodedFrame(frame=frame, pts_s=pts_s)
