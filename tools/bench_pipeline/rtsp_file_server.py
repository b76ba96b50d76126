#!/usr/bin/python3
"""Live RTSP cameras from one H.264 MP4 file, for the pipeline benchmark (run with the system python, which has `gi`).

    /usr/bin/python3 tools/bench_pipeline/rtsp_file_server.py --port 8560 --file clip.mp4 --mounts 4

Serves ``rtsp://127.0.0.1:PORT/cam0`` .. ``/cam{N-1}``: each client gets the file from its start, sent
in real time (the pipeline runs on the clock, like a camera) without re-encoding, so the server costs
almost no CPU and every system under test reads the same pixels. Prints ``READY`` once listening.
Unlike tests/integration/rtsp_server.py (a synthetic pattern, encoded live) this plays real scenes
that the benchmark's model detects, so tracking and events get real load.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--file", type=Path, required=True, help="MP4 with one H.264 stream (no B-frames)")
    parser.add_argument("--mounts", type=int, default=1, help="serve /cam0 .. /cam{N-1}")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        print(f"ERROR: {args.file} does not exist", file=sys.stderr, flush=True)
        return 1
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    launch = (f'( filesrc location="{args.file.resolve()}" ! qtdemux ! h264parse '
              f"! rtph264pay name=pay0 pt=96 config-interval=1 )")
    mounts = server.get_mount_points()
    for i in range(args.mounts):
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(False)
        mounts.add_factory(f"/cam{i}", factory)
    if server.attach(None) == 0:
        print(f"ERROR: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print("READY", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
