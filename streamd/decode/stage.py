"""Decoder process of one stream: source state machine, pacing, shm ring writes, FrameReady messages."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Any

import av
import zmq

from streamd.config.models import StreamConfig
from streamd.decode.sampling import FrameSampler
from streamd.decode.sources import DecodedFrame, DecodeStats, decode_frames, expected_frames, open_source, truncated
from streamd.errors import SourceError
from streamd.evidence.segments import SegmentRecorder
from streamd.evidence.paths import segments_dir
from streamd.ipc import sockets
from streamd.ipc.messages import FrameReady, StreamCounters, StreamEnd, encoder
from streamd.infer.preprocess import letterbox_i420_into
from streamd.ipc.ring import FrameRing, FrameTooLarge
from streamd.redact import redact
from streamd.runtime.backoff import Backoff
from streamd.runtime.params import DecoderParams, expect
from streamd.runtime.stage import EXIT_FAILED, EXIT_OK, Stage

NUDGE_INTERVAL_S = 0.5  # re-announce the newest frame while blocked, so a restarted consumer finds it
FILE_DEFAULT_ATTEMPTS = 3


class SourceState(str, enum.Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKING_OFF = "backing_off"
    FINISHED = "finished"
    FAILED = "failed"


class DecoderStage(Stage):
    """params: DecoderParams (streamd/runtime/params.py)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        params = self.decoder_params = expect(self.spec.params, DecoderParams)
        self.stream: StreamConfig = params.stream
        self.ring = FrameRing.attach(params.ring)
        self.frames_out = sockets.push(self.ctx, params.inference_endpoint, hwm=self.ring.n_slots * 4)
        self.state = SourceState.CONNECTING
        self.frames_decoded = 0
        self.frames_skipped = 0  # above detect_fps: decoded, never written to the ring
        self.sampler = FrameSampler(self.stream.detect_fps) if self.stream.detect_fps else None
        self.reconnects = 0
        self.last_error: str | None = None
        self.warning: str | None = None  # the source is damaged (truncated file, corrupt packets), decoding goes on
        self.frames_expected: int | None = None  # files: frames the container announced
        self.truncated = False
        self._damage = DecodeStats()  # corruption met in finished passes over the source
        self._pass = DecodeStats()  # ... and in the current one
        self.backoff = Backoff(self.stream.retry)
        self.clips = (SegmentRecorder(segments_dir(Path(params.evidence_dir), self.stream.name), self.stream.clips,
                                      self.stream.name) if self.stream.clips and params.evidence_dir else None)
        self.log = self.log.bind(stream=self.stream.name, url=redact(self.stream.url))

    def counters(self) -> dict[str, StreamCounters]:
        return {
            self.stream.name: StreamCounters(
                state=self.state.value, frames_decoded=self.frames_decoded,
                frames_skipped=self.frames_skipped if self.sampler is not None else None,
                reconnects=self.reconnects, last_error=self.last_error,
                frames_expected=self.frames_expected,
                corrupt_packets=self._damage.corrupt_packets + self._pass.corrupt_packets,
                corrupt_frames=self._damage.corrupt_frames + self._pass.corrupt_frames,
                truncated=self.truncated or None, warning=self.warning,
            )
        }

    def _set_state(self, state: SourceState, **fields: Any) -> None:
        if state != self.state:
            self.log.info("source_state", state=state.value, previous=self.state.value, **fields)
            self.state = state
            self.beat(force=True)

    def run(self) -> int:
        if self.ring.eof_seq:  # restarted after the file already ended: only finish the hand-over
            return self._finish()
        max_attempts = self.stream.retry.max_attempts or (None if self.stream.is_live else FILE_DEFAULT_ATTEMPTS)
        failures = 0
        # After a restart mid-file, number frames on from the ring and skip those already written.
        frame_index = max(self._last_written_frame_index() + 1, self.decoder_params.start_frame)
        skip = frame_index if self.stream.is_finite else 0
        if skip:
            self.log.info("source_resume", frame=frame_index)
        pts_offset = 0.0
        while not self.stop.is_set():
            self._set_state(SourceState.CONNECTING)
            try:
                container = open_source(self.stream)
            except SourceError as exc:
                failures += 1
                self.last_error = str(exc)
                if max_attempts is not None and failures >= max_attempts:
                    self._set_state(SourceState.FAILED, error=self.last_error, attempts=failures)
                    self.log.error("source_failed", error=self.last_error, attempts=failures,
                                   hint="check the url and that the source is reachable; the other streams keep running")
                    self.beat(force=True)
                    return EXIT_FAILED
                self._back_off(self.last_error)
                continue
            try:
                ended, frame_index, pts_offset = self._pump(container, frame_index, skip, pts_offset)
                skip = 0
                failures = 0
            except FrameTooLarge as exc:
                return self._fail_frame_too_large(exc)
            except (av.FFmpegError, OSError, SourceError) as exc:
                self.last_error = f"stream {self.stream.name}: read failed: {redact(str(exc))}"
                ended = False
                failures += 1
                self._absorb(self._pass)
                if self.stream.is_finite:  # reopen after the frames already written, not from the start
                    frame_index = max(frame_index, self._last_written_frame_index() + 1)
                    skip = frame_index
            finally:
                container.close()
            if self.stop.is_set():
                break
            if ended and self.stream.kind == "file":
                if self.stream.loop:
                    continue
                self.ring.mark_eof()
                return self._finish()
            # Live source ended or broke: reconnect.
            self.reconnects += 1
            self._back_off(self.last_error or "source ended")
        return EXIT_OK

    def _fail_frame_too_large(self, exc: FrameTooLarge) -> int:
        """A frame larger than the ring's slots: every restart would meet it again, so fail the stream once."""
        name = self.stream.name
        self.last_error = (
            f"stream {name}: decoded frame {exc.width}x{exc.height} is larger than its ring's slots of "
            f"{exc.max_width}x{exc.max_height} (max_width x max_height); raise streams[i].max_width/max_height of "
            f"stream {name} in the config to at least max_width: {exc.width}, max_height: {exc.height}"
        )
        self._set_state(SourceState.FAILED, error=self.last_error)
        self.log.error("source_failed", error=self.last_error, width=exc.width, height=exc.height,
                       max_width=exc.max_width, max_height=exc.max_height,
                       hint="the other streams keep running")
        self.beat(force=True)
        return EXIT_FAILED

    def _end_of_pass(self, container: av.container.InputContainer, stats: DecodeStats) -> None:
        """The source ended: warn when a file had fewer frames than its container announced, or damaged data."""
        self._absorb(stats)
        problems = []
        expected = expected_frames(container) if self.stream.kind == "file" else None
        if expected is not None:
            self.frames_expected = expected
        if truncated(stats, expected):
            self.truncated = True
            problems.append(f"the file ended after {stats.frames} of the {expected} frames its container announced "
                            f"(truncated or cut off?)")
            self.log.warning("source_truncated", frames_expected=expected, frames_decoded=stats.frames,
                             corrupt_packets=stats.corrupt_packets, corrupt_frames=stats.corrupt_frames,
                             hint="the file is incomplete: copy or record it again")
        if stats.corrupt_packets or stats.corrupt_frames:
            problems.append(f"{stats.corrupt_packets} corrupt packets skipped, {stats.corrupt_frames} frames "
                            f"decoded with concealed errors")
            self.log.warning("source_corrupt", corrupt_packets=stats.corrupt_packets,
                             corrupt_frames=stats.corrupt_frames, frames_decoded=stats.frames)
        if problems:
            self.warning = f"stream {self.stream.name}: " + "; ".join(problems)

    def _absorb(self, stats: DecodeStats) -> None:
        self._damage.corrupt_packets += stats.corrupt_packets
        self._damage.corrupt_frames += stats.corrupt_frames
        self._pass = DecodeStats()

    def _back_off(self, reason: str) -> None:
        delay = self.backoff.next_delay()
        self._set_state(SourceState.BACKING_OFF, reason=reason, retry_in_s=round(delay, 2))
        self.sleep(delay)

    def _pump(self, container: av.container.InputContainer, frame_index: int, skip: int,
              pts_offset: float) -> tuple[bool, int, float]:
        """Decode until the source ends (True) or stop is requested (False); skip the first ``skip`` frames."""
        realtime = self.stream.is_realtime
        pace_files = self.stream.kind == "file" and realtime
        start_wall: float | None = None
        start_pts = 0.0
        last_pts = pts_offset
        stats = self._pass = DecodeStats()
        if self.clips is not None:
            self.clips.start(container, pts_offset)
        for decoded in decode_frames(container, live=self.stream.is_live,
                                     read_timeout_s=self.stream.retry.read_timeout_s, stats=stats,
                                     on_packet=self.clips.packet if self.clips is not None else None):
            if self.stop.is_set():
                return False, frame_index, pts_offset
            if skip > 0:
                skip -= 1
                continue
            pts = pts_offset + decoded.pts_s
            if self.sampler is not None and not self.sampler.keep(pts):
                # before pacing and conversion: a skipped frame costs its decode only (pixels convert lazily);
                # its index is used up, so frame numbers (resume points, event ids) stay the source's
                self.frames_decoded += 1
                self.frames_skipped += 1
                frame_index += 1
                last_pts = pts
                self.beat()
                continue
            if pace_files:
                if start_wall is None:
                    start_wall, start_pts = time.monotonic(), pts
                delay = start_wall + (pts - start_pts) / self.stream.playback_speed - time.monotonic()
                if delay > 0:
                    self.sleep(delay)
            elif not realtime:
                self._wait_for_space()
                if self.stop.is_set():
                    return False, frame_index, pts_offset
            self.ring.check_size(decoded.width, decoded.height)  # before "streaming": too large fails the stream
            if self.state != SourceState.STREAMING:
                self._set_state(SourceState.STREAMING, width=decoded.width, height=decoded.height)
                self.backoff.reset()
            seq, t_decoded = self._write(decoded, frame_index, pts)
            self._announce(seq, t_decoded)
            self.frames_decoded += 1
            frame_index += 1
            last_pts = pts
            self.beat()
        if self.clips is not None:
            self.clips.close()
        self._end_of_pass(container, stats)
        # Next loop of a looping file continues its timeline one frame after this one.
        step = 1.0 / float(container.streams.video[0].average_rate or 25)
        return True, frame_index, last_pts + step

    def _write(self, decoded: DecodedFrame, frame_index: int, pts: float) -> tuple[int, int]:
        """Into the ring: 4:2:0 frames as their I420 planes plus, when the inference stage asked for them, the
        model-ready pixels (converted and letterboxed here, once); any other frame as BGR. "Decoded" is stamped
        before the conversion: it is part of the frame's way to its result."""
        t_decoded = time.monotonic_ns()
        yuv = decoded.i420 if self.ring.fits_i420(decoded.width, decoded.height) else None
        if yuv is None:
            return self.ring.write(decoded.image, frame_index, pts, time.time(), t_decoded), t_decoded
        return self.ring.write_i420(yuv, decoded.width, decoded.height, frame_index, pts, time.time(), t_decoded,
                                    letterbox_i420_into), t_decoded

    def _wait_for_space(self) -> None:
        """Files at full speed: block until the consumer released a slot (back-pressure, no drops)."""
        last_nudge = time.monotonic()
        while not self.ring.can_write_without_drop() and not self.stop.is_set():
            self.stop.wait(0.0005)
            now = time.monotonic()
            if now - last_nudge >= NUDGE_INTERVAL_S:
                self._announce(self.ring.write_seq, time.monotonic_ns())
                last_nudge = now
            self.beat()

    def _announce(self, seq: int, t_decoded_ns: int) -> None:
        msg = FrameReady(stream=self.stream.name, pipeline=self.stream.pipeline, ring=self.ring.name, seq=seq,
                         realtime=self.stream.is_realtime, t_decoded_ns=t_decoded_ns)
        try:
            self.frames_out.send(encoder.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            pass  # consumer gone or saturated: the ring keeps the frame; the next message or nudge finds it

    def _finish(self) -> int:
        """The file ended: tell downstream until the supervisor, having seen it drained, stops us."""
        self._set_state(SourceState.FINISHED, frames=self.frames_decoded)
        end = encoder.encode(StreamEnd(stream=self.stream.name, ring=self.ring.name, last_seq=self.ring.eof_seq))
        while not self.stop.is_set():
            try:
                self.frames_out.send(end, zmq.NOBLOCK)
            except zmq.Again:
                pass
            self.sleep(1.0)
        return EXIT_OK

    def _last_written_frame_index(self) -> int:
        seq = self.ring.write_seq
        if seq == 0:
            return -1
        meta = self.ring.meta(seq)
        return meta.frame_index if meta else -1
