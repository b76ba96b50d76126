"""The built-in demo: a generated conveyor video, the bundled model, live counts, a check against truth."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from streamd.config.loader import load_config
from streamd.synth import CLASSES, SceneConfig, render_video
from streamd.synth.conveyor import GroundTruth

# Held-out scenes (never used for training): different belt speeds and product densities.
DEMO_SCENES = {
    1: SceneConfig(seed=1, belt_speed=6.0, density=1.2, seconds=20.0),
    2: SceneConfig(seed=2, belt_speed=9.0, density=0.8, seconds=20.0),
    3: SceneConfig(seed=3, belt_speed=4.0, density=1.8, seconds=20.0),
}


def package_file(*parts: str) -> Path:
    return Path(str(resources.files("streamd").joinpath(*parts)))


def cache_dir() -> Path:
    root = os.environ.get("STREAMD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "streamd")
    return Path(root) / "demo"


def ensure_scene(seed: int, out: TextIO = sys.stderr) -> tuple[Path, GroundTruth]:
    """The demo video and its truth, generated into the cache on first use."""
    config = DEMO_SCENES[seed]
    video = cache_dir() / f"conveyor-seed{seed}.mp4"
    truth_path = video.with_suffix(".json")
    if video.is_file() and truth_path.is_file():
        return video, GroundTruth.load(truth_path)

    def progress(done: int, total: int) -> None:
        if done % 30 == 0 or done == total:
            out.write(f"\rgenerating demo video {video.name}: {done}/{total} frames")
            out.flush()

    truth = render_video(config, video, truth_path, progress=progress)
    out.write("\n")
    return video, truth


@dataclass
class CountDisplay:
    """Live per-class counts on one terminal line (a plain line every few seconds when not a terminal)."""

    expected: dict[str, int]
    out: TextIO = sys.stdout
    _last: float = 0.0

    def counts(self, counters: dict[str, dict[str, Any]]) -> dict[str, int]:
        totals = dict.fromkeys(self.expected, 0)
        for stream in counters.values():
            for key, n in (stream.get("line_counts") or {}).items():
                _, name, _direction = key.split("/")
                totals[name] = totals.get(name, 0) + n
        return totals

    def update(self, counters: dict[str, dict[str, Any]]) -> None:
        tty = self.out.isatty()
        now = time.monotonic()
        if now - self._last < (0.25 if tty else 5.0):
            return
        self._last = now
        counts = self.counts(counters)
        frames = sum(int(c.get("frames_analysed", 0)) for c in counters.values())
        text = "  ".join(f"{name} {counts[name]}" for name in self.expected) + f"   (frame {frames})"
        self.out.write(f"\rcounting: {text}   " if tty else f"counting: {text}\n")
        self.out.flush()


def run_demo(seed: int = 1, int8: bool = False, realtime: bool = True, out: TextIO = sys.stdout) -> int:
    from streamd.app import Daemon
    from streamd.runtime.logging import configure_logging

    model = package_file("models", "conveyor.int8.onnx" if int8 else "conveyor.onnx")
    if not model.is_file():
        print(f"error: the bundled model {model} is missing; rebuild it as streamd/models/MODEL_CARD.md says",
              file=sys.stderr)
        return 1
    video, truth = ensure_scene(seed)
    state = tempfile.TemporaryDirectory(prefix="streamd-demo-")
    env = {**os.environ, "STREAMD_DEMO_VIDEO": str(video), "STREAMD_DEMO_MODEL": str(model),
           "STREAMD_DEMO_REALTIME": "true" if realtime else "false", "STREAMD_DEMO_STATE": state.name}
    loaded = load_config(package_file("data", "demo.yaml"), env=env)
    configure_logging(loaded.config.log_level, stage="supervisor")
    display = CountDisplay(expected={name: truth.counts[name] for name in CLASSES}, out=out)
    print(f"streamd demo: {video} ({'real time' if realtime else 'every frame, full speed'}), model {model.name}",
          file=out)
    daemon = Daemon(loaded, on_tick=display.update)
    with state:
        code = daemon.run()
    counted = display.counts(daemon.final_counters)
    exact = counted == display.expected
    summary = ", ".join(f"{name} {counted[name]}/{display.expected[name]}" for name in display.expected)
    print(f"\ncounted/expected: {summary} -> {'exact' if exact else 'MISMATCH'}", file=out)
    return code if exact else (code or 2)
