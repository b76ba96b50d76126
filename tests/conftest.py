"""Shared fixtures. Tests that need ../shared/media or system packages skip with a reason,
except when STREAMD_STRICT=1 (set by .ci/run), where a missing prerequisite fails the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MEDIA = Path(os.environ.get("STREAMD_MEDIA", REPO.parent / "shared" / "media"))
STRICT = os.environ.get("STREAMD_STRICT") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip (or fail under STREAMD_STRICT=1) when a prerequisite is missing."""
    if not condition:
        if STRICT:
            pytest.fail(f"prerequisite missing under STREAMD_STRICT=1: {reason}")
        pytest.skip(reason)


@pytest.fixture
def media() -> Path:
    require((MEDIA / "README.md").is_file(), f"shared media folder not found at {MEDIA} (set STREAMD_MEDIA)")
    return MEDIA


def _shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("streamd-*")}


def _owner_gone_or_me(name: str) -> bool:
    try:
        pid = int(name.split("-")[1])
    except (IndexError, ValueError):
        return True
    return pid == os.getpid() or not Path(f"/proc/{pid}").exists()


@pytest.fixture(autouse=True)
def no_leaked_shm() -> Iterator[None]:
    before = _shm_segments()
    yield
    # A segment is leaked when its owner (the pid in its name) is gone or is this test process;
    # segments of other live processes (a parallel test run) are theirs.
    leaked = {n for n in _shm_segments() - before if _owner_gone_or_me(n)}
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"


def make_clip(path: Path, frames: int = 60, fps: int = 30, size: tuple[int, int] = (320, 240),
              box_speed: int = 4) -> Path:
    """H.264 clip of a white square moving right over a dark background, written with PyAV."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for i in range(frames):
            image = np.full((height, width, 3), 30, np.uint8)
            x = (10 + i * box_speed) % (width - 40)
            image[height // 2 - 20 : height // 2 + 20, x : x + 40] = 230
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return make_clip(tmp_path / "clip.mp4")


def write_config(path: Path, config: dict) -> Path:
    """Write a daemon config; its HTTP API listens on a free port (logged as api_listening) unless set."""
    if "streams" in config and "api" not in config:
        config = {**config, "api": {"port": 0}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class DaemonProcess:
    """`streamd run CONFIG` as a real subprocess; its JSON log lines are parsed as they arrive."""

    def __init__(self, config: Path, env: dict[str, str] | None = None):
        self.log_path = config.with_suffix(".log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamd", "run", str(config)], stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, cwd=config.parent,
        )

    def events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

    def find(self, event: str, **fields: object) -> list[dict]:
        return [e for e in self.events() if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())]

    def wait_for(self, event: str, timeout: float = 60.0, **fields: object) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(event, **fields)
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {event} {fields} within {timeout}s; log:\n{self.log_path.read_text()[-4000:]}")

    def kill_every_start(self, stage: str, until: str, timeout: float) -> None:
        """kill -9 each process of ``stage`` as it starts, until the log has an ``until`` line for it or the
        daemon exits: a stage that keeps dying, whatever the cause."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline and not self.find(until, stage=stage):
            for started in self.find("stage_started", stage=stage):
                if started["pid"] not in killed:
                    killed.add(started["pid"])
                    try:
                        os.kill(started["pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.1)

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(10)


@pytest.fixture
def daemon_factory() -> Iterator:
    started: list[DaemonProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(config, env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
