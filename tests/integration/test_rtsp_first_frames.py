"""A camera's first frames are not lost at connect: every frame an RTSP server sends, from the first, is decoded
(FFmpeg's "fflags nobuffer" used to throw away the ~2 s it read while probing: products passing then went
uncounted at every reconnect)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.config.models import StreamConfig
from streamd.decode.sources import DecodeStats, decode_frames, open_source
from streamd.synth.conveyor import SceneConfig, render_video
from tests.conftest import require
from tests.integration.test_rtsp import _gi_rtsp_available

pytestmark = pytest.mark.integration


def test_every_frame_from_the_first_is_decoded(tmp_path: Path) -> None:
    ok, why = _gi_rtsp_available()
    require(ok, f"the GStreamer RTSP server is needed: {why}")
    from tools.bench_pipeline.systems import RtspServer

    video = tmp_path / "belt.mp4"
    render_video(SceneConfig(seed=5, seconds=6.0, fps=15), video)
    with RtspServer(video, once=True) as server:
        stream = StreamConfig(name="cam", url=server.urls[0], pipeline="p")
        container = open_source(stream)
        pts: list[float] = []
        try:
            for frame in decode_frames(container, live=True, read_timeout_s=3.0, stats=DecodeStats()):
                pts.append(frame.pts_s)
        except Exception:  # noqa: BLE001 - the server ends the stream after the file (EOF or a stall)
            pass
        finally:
            container.close()
    assert len(pts) == 90, f"{len(pts)} of 90 frames decoded; first at {pts[:1]} s"
