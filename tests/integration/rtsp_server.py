#!/usr/bin/python3
"""Minimal live RTSP server for the integration tests (run with the system python, which has `gi`).

    /usr/bin/python3 tests/integration/rtsp_server.py --port 8554 --path /cam --fps 15 --width 640 --height 360

Serves one live H.264 stream (a moving videotestsrc pattern) from a shared media factory on
127.0.0.1 only, and prints ``READY`` on stdout once the server socket is listening. Stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on (127.0.0.1)")
    parser.add_argument("--path", default="/cam", help="mount point, e.g. /cam")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    args = parser.parse_args(argv)
    if not args.path.startswith("/"):
        args.path = "/" + args.path
    return args


def launch_line(fps: int, width: int, height: int) -> str:
    # pattern=ball: a ball moving over a black background, so every frame differs.
    return (
        f"( videotestsrc is-live=true pattern=ball motion=sweep "
        f"! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=1000 threads=1 "
        f"! video/x-h264,profile=baseline "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Gst.init(None)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.fps, args.width, args.height))
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.path, factory)

    if server.attach(None) == 0:
        print(f"ERROR: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    bound = server.get_bound_port()
    if bound != args.port:
        print(f"ERROR: bound port {bound} instead of {args.port}", file=sys.stderr, flush=True)
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print("READY", flush=True)
    print(f"serving rtsp://127.0.0.1:{bound}{args.path}", file=sys.stderr, flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
