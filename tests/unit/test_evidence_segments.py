"""Clips without re-encoding: the decoder's packet hook writes rolling segments, the writer remuxes an event's clip."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from streamd.config.models import ClipConfig
from streamd.decode.sources import decode_frames
from streamd.evidence.segments import SegmentRecorder, build_clip, covering, keep_seconds, list_segments

FPS = 25


def frame_number(image: np.ndarray) -> int:
    """Frames carry their number in their colour: blue = (i % 25) * 10, green = (i // 25) * 20."""
    b, g = float(image[..., 0].mean()), float(image[..., 1].mean())
    return round(g / 20) * 25 + round(b / 10)


def make_video(path: Path, seconds: float) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(FPS)}  # 1 s GOP, B-frames on (x264 default)
        for i in range(round(seconds * FPS)):
            image = np.zeros((96, 160, 3), np.uint8)
            image[..., 0], image[..., 1] = (i % 25) * 10, (i // 25) * 20
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def record(video: Path, folder: Path, clips: ClipConfig, pts_offset: float = 0.0) -> SegmentRecorder:
    recorder = SegmentRecorder(folder, clips, "cam")
    with av.open(str(video)) as container:
        recorder.start(container, pts_offset)
        for _ in decode_frames(container, live=False, on_packet=recorder.packet):
            pass
    recorder.close()
    return recorder


def decode_clip(path: Path) -> tuple[list[int], float]:
    """Frame numbers in the clip and its duration by its frames' timestamps."""
    numbers, times = [], []
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        for frame in container.decode(video):
            numbers.append(frame_number(frame.to_ndarray(format="bgr24")))
            times.append(float(frame.time))
    return numbers, times[-1] - times[0] + 1 / FPS


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "numbers.mp4", 12.0)


def test_segments_cut_at_keyframes_and_cover_the_video(video: Path, tmp_path: Path) -> None:
    record(video, tmp_path, ClipConfig(pre_s=5, post_s=5, segment_s=2))
    segments = list_segments(tmp_path)
    assert len(segments) == 6
    assert segments[0].start_s == 0.0 and segments[-1].end_s == pytest.approx(12.0, abs=0.05)
    for a, b in zip(segments, segments[1:]):
        assert b.start_s == pytest.approx(a.end_s, abs=0.05)
    assert not list(tmp_path.glob("*.part"))


def test_clip_holds_the_event_and_lasts_the_configured_time(video: Path, tmp_path: Path) -> None:
    record(video, tmp_path / "seg", ClipConfig(pre_s=2, post_s=2, segment_s=2))
    event_s = 6.5  # frame 162
    chosen = covering(list_segments(tmp_path / "seg"), event_s - 2, event_s + 2)
    covered = build_clip(chosen, event_s - 2, event_s + 2, tmp_path / "clip.mp4")
    assert covered is not None
    numbers, duration = decode_clip(tmp_path / "clip.mp4")
    assert round(event_s * FPS) in numbers
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # every frame, in order, none damaged
    assert 4.0 <= duration <= 4.0 + 1.0 + 2 / FPS  # pre + post, plus at most one GOP before (start at a keyframe)
    assert numbers[0] / FPS <= event_s - 2 and numbers[-1] / FPS >= event_s + 2 - 1 / FPS
    with av.open(str(tmp_path / "clip.mp4")) as probe:  # faststart: the index (moov) comes before the data
        assert probe.format.name.startswith("mov,mp4")
    head = (tmp_path / "clip.mp4").read_bytes()[:4096]
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))


def test_clip_across_a_loop_of_the_file_keeps_time_monotonic(video: Path, tmp_path: Path) -> None:
    folder = tmp_path / "seg"
    recorder = SegmentRecorder(folder, ClipConfig(pre_s=3, post_s=3, segment_s=2), "cam")
    for offset in (0.0, 12.0):  # a looping file: the second pass continues the timeline
        with av.open(str(video)) as container:
            recorder.start(container, offset)
            for _ in decode_frames(container, live=False, on_packet=recorder.packet):
                pass
    recorder.close()
    chosen = covering(list_segments(folder), 9.0, 15.0)
    assert build_clip(chosen, 9.0, 15.0, tmp_path / "clip.mp4") is not None
    numbers, duration = decode_clip(tmp_path / "clip.mp4")
    assert 0 in numbers and 299 in numbers  # both sides of the loop
    assert 6.0 <= duration <= 7.0 + 2 / FPS


def test_old_segments_are_pruned(video: Path, tmp_path: Path) -> None:
    clips = ClipConfig(pre_s=0.5, post_s=0.5, segment_s=0.5)
    record(video, tmp_path, clips)
    segments = list_segments(tmp_path)
    assert segments[0].start_s > 0  # the oldest went
    assert segments[-1].end_s - segments[0].start_s <= keep_seconds(clips) + 1.5


def test_unwritable_folder_never_raises(video: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    recorder = record(video, blocker / "seg", ClipConfig())
    assert recorder.failures >= 1 and recorder.segments_written == 0
