"""streamd.decode.sources on damaged files: truncation against the container's frame count, corrupt packets."""

from __future__ import annotations

import random
from pathlib import Path

import av
import numpy as np
import pytest

from streamd.decode.sources import DecodeStats, decode_frames, expected_frames, truncated
from streamd.errors import SourceError

FRAMES = 90


def faststart_clip(path: Path, frames: int = FRAMES, size: tuple[int, int] = (160, 120)) -> Path:
    """H.264 MP4 with its index (moov) first, as cameras and web downloads write them: a cut-off copy still opens."""
    width, height = size
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "threads": "1"}
        rng = np.random.default_rng(0)
        for i in range(frames):
            image = rng.integers(0, 255, (height, width, 3), np.uint8)  # noise: every frame has real bytes
            image[:, (i * 3) % width] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut(src: Path, dst: Path, fraction: float) -> Path:
    """The first ``fraction`` of the bytes, as `head -c` leaves an interrupted copy."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def decode_all(path: Path, live: bool) -> DecodeStats:
    stats = DecodeStats()
    with av.open(str(path)) as container:
        frames = list(decode_frames(container, live=live, stats=stats))
    assert len(frames) == stats.frames
    return stats


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return faststart_clip(tmp_path_factory.mktemp("clips") / "clip.mp4")


def test_a_whole_file_is_not_truncated(clip: Path) -> None:
    with av.open(str(clip)) as container:
        assert expected_frames(container) == FRAMES
    stats = decode_all(clip, live=False)
    assert (stats.frames, stats.corrupt_packets, stats.corrupt_frames) == (FRAMES, 0, 0)
    assert not truncated(stats, FRAMES)


@pytest.mark.parametrize("live", [False, True], ids=["file-threads", "live-single-thread"])
def test_a_cut_off_file_decodes_what_it_has_and_reads_as_truncated(clip: Path, tmp_path: Path, live: bool) -> None:
    short = cut(clip, tmp_path / "short.mp4", 0.4)
    with av.open(str(short)) as container:
        assert expected_frames(container) == FRAMES  # the index at the front still announces every frame
    # Single-threaded decoding refuses the cut-off last packet (InvalidDataError): skipped and counted, not raised.
    stats = decode_all(short, live=live)
    assert 0 < stats.frames < FRAMES * 0.6
    assert truncated(stats, FRAMES)
    if live:
        assert stats.corrupt_packets >= 1


def test_damaged_bytes_are_counted_and_decoding_goes_on(clip: Path, tmp_path: Path) -> None:
    data = bytearray(clip.read_bytes())
    rng = random.Random(1)
    for _ in range(30):  # 30 runs of 32 random bytes in the second half (the index stays intact)
        at = rng.randrange(len(data) // 2, len(data) - 64)
        data[at : at + 32] = bytes(rng.randrange(256) for _ in range(32))
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    stats = decode_all(damaged, live=True)
    assert stats.corrupt_packets + stats.corrupt_frames > 0
    assert stats.frames > FRAMES // 2  # the damage cost at most some frames, never the rest of the file


@pytest.mark.parametrize(
    ("decoded", "expected", "short"),
    [(90, 90, False), (89, 90, False), (88, 90, True), (30, 90, True), (981, 1000, False), (980, 1000, True),
     (0, None, False), (10, None, False)],
)
def test_truncated_tolerates_a_frame_or_two(decoded: int, expected: int | None, short: bool) -> None:
    assert truncated(DecodeStats(frames=decoded), expected) is short


def test_a_stream_of_undecodable_packets_ends_with_a_source_error(clip: Path, tmp_path: Path) -> None:
    data = bytearray(clip.read_bytes())
    with av.open(str(clip)) as container:  # overwrite every packet's payload, keep the container intact
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size and p.pos is not None]
    rng = random.Random(2)
    for pos, size in spans:
        data[pos : pos + size] = bytes(rng.randrange(256) for _ in range(size))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(data))
    from streamd.decode import sources

    old = sources.MAX_CONSECUTIVE_BAD_PACKETS
    sources.MAX_CONSECUTIVE_BAD_PACKETS = 20
    try:
        with pytest.raises(SourceError, match="packets in a row cannot be decoded"):
            decode_all(garbage, live=True)
    finally:
        sources.MAX_CONSECUTIVE_BAD_PACKETS = old
