#!/usr/bin/python3
"""Live RTSP cameras from H.264 MP4 files, for the pipeline benchmark (run with the system python, which has `gi`).

    /usr/bin/python3 tools/bench_pipeline/rtsp_file_server.py --port 8560 --file clip.mp4 --mounts 4
    /usr/bin/python3 tools/bench_pipeline/rtsp_file_server.py --port 8560 --file a.mp4 --file b.mp4 --once

Serves ``rtsp://127.0.0.1:PORT/cam0`` .. ``/cam{N-1}``: one ``--file`` per mount (or one file on
``--mounts`` mounts). Factories are not shared, so each client gets its file from its start, sent
in real time (the pipeline runs on the clock, like a camera) without re-encoding, so the server costs
almost no CPU and every system under test reads the same pixels. ``--once``: each mount plays its
file to one client only; a later request for it (a reconnect after the end) is refused, so no client
sees a scene twice. Prints ``READY`` once listening.
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

# a launch line that cannot be built: a --once mount's later requests get "503 Service Unavailable"
SERVED = "( streamd_bench_mount_already_served name=pay0 )"


def launch_for(file: Path) -> str:
    return (f'( filesrc location="{file.resolve()}" ! qtdemux ! h264parse '
            f"! rtph264pay name=pay0 pt=96 config-interval=1 )")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--file", type=Path, action="append", required=True,
                        help="MP4 with one H.264 stream (no B-frames); once per mount, or once for --mounts mounts")
    parser.add_argument("--mounts", type=int, default=0, help="with one --file: serve it on /cam0 .. /cam{N-1}")
    parser.add_argument("--once", action="store_true", help="each mount plays to its first client only")
    args = parser.parse_args(argv)
    files: list[Path] = args.file
    if len(files) == 1:
        files = files * max(1, args.mounts)
    elif args.mounts and args.mounts != len(files):
        print(f"ERROR: --mounts {args.mounts} with {len(files)} --file (one file per mount)", file=sys.stderr,
              flush=True)
        return 1
    for file in dict.fromkeys(files):
        if not file.is_file():
            print(f"ERROR: {file} does not exist", file=sys.stderr, flush=True)
            return 1
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for i, file in enumerate(files):
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_for(file))
        factory.set_shared(False)
        if args.once:
            # the first client's media is built from the file; its SETUP and PLAY reuse that media (the
            # client caches it by path), every later DESCRIBE fails to build one
            factory.connect("media-configure", lambda f, _media: f.set_launch(SERVED))
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
