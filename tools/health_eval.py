"""Camera health evaluation: detection delay per fault type and false alarms per hour on untouched clips.

    python -m tools.health_eval [--sources traffic,conveyor,...] [--faults frozen,black,...] [--json]

Each fault is injected into the decoded frames of a real clip (../shared/media/videos) or a synthetic conveyor
scene, written as H.264 with PyAV, decoded again and fed to streamd.health at the daemon's sample rate, with
the presentation time as the clock. A fault starts at ``FAULT_AT_S`` and lasts its check's ``after_s`` plus
``HOLD_S``; the delay is from its start to the first state change of the check that should see it, the clear
time from its end to that check's return to ok. Untouched clips are looped to ``--minutes`` each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from streamd.config.models import HealthConfig
from streamd.health.checks import CameraHealth, sample_of

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media" / "videos"
CLIPS = {"traffic": "Traffic.mp4", "traffic_hd": "TrafficHD_short.mp4", "bottle": "bottle-detection.mp4",
         "car": "car-detection.mp4"}
CONVEYORS = {"conveyor": 1, "conveyor2": 2, "conveyor3": 3}
FAULT_AT_S = 10.0  # after learning (5 s by default) and a few healthy seconds
HOLD_S = 5.0  # a fault lasts its check's after_s plus this
AFTER_S = 10.0  # healthy seconds after the fault: it must clear
CLIP_FPS = 10.0  # faulted clips are written at this rate (the checks sample 2 frames a second)

Fault = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (frame, frame at the fault's start) -> faulted frame


def _affine(frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    return cv2.warpAffine(frame, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def shift(frame: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """The view moved by ``fraction`` of the frame's width and of its height (a bumped camera)."""
    h, w = frame.shape[:2]
    return _affine(frame, np.float32([[1, 0, fraction * w], [0, 1, fraction * h]]))


def rotate(frame: np.ndarray, degrees: float = 3.0) -> np.ndarray:
    h, w = frame.shape[:2]
    return _affine(frame, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0))


def blur(frame: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(frame, (0, 0), frame.shape[1] / 240)  # 4 px at 960 wide: a clearly soft picture


def darken(frame: np.ndarray, factor: float = 0.3) -> np.ndarray:
    return cv2.convertScaleAbs(frame, alpha=factor)


def black(frame: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(0).integers(0, 4, frame.shape, dtype=np.uint8)  # a capped lens is not 0 exactly
    return noise


# fault -> (the check that must see it, the frame transform)
FAULTS: dict[str, tuple[str, Fault]] = {
    "frozen": ("frozen", lambda frame, first: first),
    "black": ("blackout", lambda frame, first: black(frame)),
    "blur": ("blur", lambda frame, first: blur(frame)),
    "shift": ("moved", lambda frame, first: shift(frame)),
    "rotation": ("moved", lambda frame, first: rotate(frame)),
    "dark": ("blackout", lambda frame, first: darken(frame)),
}


def check_after_s(config: HealthConfig, check: str) -> float:
    sub = getattr(config, check)
    return float(sub.after_s)


# --- sources -----------------------------------------------------------------------------------------------

def decode(path: Path, fps: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """(presentation time, BGR frame) of a file; with ``fps``, only frames at least 1/fps apart."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        next_t = -1.0
        index = 0
        rate = float(stream.average_rate or 30)
        for frame in container.decode(stream):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else index / rate
            index += 1
            if fps is not None and t < next_t - 1e-6:
                continue
            next_t = t + 1.0 / fps if fps else 0.0
            yield t, frame.to_ndarray(format="bgr24")


def source_frames(source: str, seconds: float, fps: float, workdir: Path) -> Iterator[np.ndarray]:
    """``seconds`` of a source at ``fps``: a real clip looped, or a conveyor scene rendered (seeds 1-3)."""
    if source in CONVEYORS:
        from streamd.synth.conveyor import ConveyorScene, SceneConfig

        scene = ConveyorScene(SceneConfig(seed=CONVEYORS[source], seconds=seconds + 1))
        step = max(1, round(30 / fps))
        for i in range(0, int(seconds * 30), step):
            yield scene.render(i)[0]
        return
    frames = [frame for _, frame in decode(MEDIA / CLIPS[source], fps)]
    for i in range(int(seconds * fps)):
        yield frames[i % len(frames)]


def write_clip(frames: Iterator[np.ndarray], path: Path, fps: float) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "g": str(round(fps * 2))}
        opened = False
        for frame in frames:
            if not opened:
                stream.width, stream.height = frame.shape[1] // 2 * 2, frame.shape[0] // 2 * 2
                opened = True
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def faulted_clip(source: str, fault: str, path: Path, config: HealthConfig, fps: float = CLIP_FPS
                 ) -> tuple[float, float]:
    """Write ``source`` with ``fault`` from FAULT_AT_S for its check's after_s + HOLD_S; returns (start, end)."""
    check, transform = FAULTS[fault]
    start = FAULT_AT_S
    end = start + check_after_s(config, check) + HOLD_S
    total = end + AFTER_S

    def frames() -> Iterator[np.ndarray]:
        first: np.ndarray | None = None
        for i, frame in enumerate(source_frames(source, total, fps, path.parent)):
            t = i / fps
            if start <= t < end:
                if first is None:
                    first = frame
                frame = transform(frame, first)
            yield frame

    write_clip(frames(), path, fps)
    return start, end


# --- running the checks ------------------------------------------------------------------------------------

@dataclass
class Timeline:
    seconds: float = 0.0
    changes: list[tuple[float, str, str]] = field(default_factory=list)  # (t, check, new state)


def run_checks(samples: Iterator[tuple[float, np.ndarray]], config: HealthConfig) -> Timeline:
    health = CameraHealth(config)
    timeline = Timeline()
    for t, frame in samples:
        for change in health.update(sample_of(frame), t):
            timeline.changes.append((round(t, 2), change.check, change.state))
        timeline.seconds = t
    return timeline


def looped_samples(path: Path, config: HealthConfig, seconds: float) -> Iterator[tuple[float, np.ndarray]]:
    """A clip's frames at the sample rate, looped (with continuing time) to ``seconds``."""
    frames = list(decode(path, config.sample_fps))
    period = 1.0 / config.sample_fps
    for i in range(max(len(frames), int(seconds / period))):
        yield i * period, frames[i % len(frames)][1]


@dataclass
class FaultResult:
    source: str
    fault: str
    check: str
    after_s: float
    delay_s: float | None  # fault start -> first non-ok state of its check
    clear_s: float | None  # fault end -> that check back to ok
    other_alarms: list[str]  # other checks that left ok during the clip

    @property
    def ok(self) -> bool:
        return (self.delay_s is not None and self.delay_s <= self.after_s + 2.0 and self.clear_s is not None
                and not self.other_alarms)


def evaluate_fault(source: str, fault: str, config: HealthConfig, workdir: Path) -> FaultResult:
    path = workdir / f"{source}-{fault}.mp4"
    start, end = faulted_clip(source, fault, path, config)
    timeline = run_checks(decode(path, config.sample_fps), config)
    return fault_result(source, fault, config, timeline, start, end)


def fault_result(source: str, fault: str, config: HealthConfig, timeline: Timeline, start: float, end: float
                 ) -> FaultResult:
    check = FAULTS[fault][0]
    raised = [t for t, c, s in timeline.changes if c == check and s != "ok" and t >= start]
    cleared = [t for t, c, s in timeline.changes if c == check and s == "ok" and t >= end]
    others = sorted({f"{c}@{t}" for t, c, s in timeline.changes if c != check and s != "ok"})
    early = [f"{c}@{t}" for t, c, s in timeline.changes if c == check and s != "ok" and t < start]
    return FaultResult(source=source, fault=fault, check=check, after_s=check_after_s(config, check),
                       delay_s=round(raised[0] - start, 2) if raised else None,
                       clear_s=round(cleared[0] - end, 2) if cleared else None, other_alarms=early + others)


def evaluate_clean(source: str, config: HealthConfig, minutes: float, workdir: Path) -> tuple[float, list[str]]:
    """(seconds played, alarms) of an untouched source looped to ``minutes``."""
    if source in CONVEYORS:
        path = workdir / f"{source}-clean.mp4"
        write_clip(source_frames(source, 60.0, CLIP_FPS, workdir), path, CLIP_FPS)
    else:
        path = MEDIA / CLIPS[source]
    timeline = run_checks(looped_samples(path, config, minutes * 60), config)
    alarms = [f"{c}={s}@{t}" for t, c, s in timeline.changes if s != "ok"]
    return timeline.seconds, alarms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.health_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--sources", default="traffic,bottle,car,conveyor",
                        help="comma-separated: traffic, traffic_hd, bottle, car, conveyor, conveyor2, conveyor3")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated: " + ", ".join(FAULTS))
    parser.add_argument("--clean", default="traffic,traffic_hd,bottle,car,conveyor,conveyor2,conveyor3",
                        help="untouched sources for false alarms")
    parser.add_argument("--minutes", type=float, default=10.0, help="each untouched source is looped this long")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = HealthConfig()
    results: list[FaultResult] = []
    clean: dict[str, tuple[float, list[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="health-eval-") as tmp:
        workdir = Path(tmp)
        for source in filter(None, args.sources.split(",")):
            for fault in filter(None, args.faults.split(",")):
                results.append(evaluate_fault(source, fault, config, workdir))
        for source in filter(None, args.clean.split(",")):
            clean[source] = evaluate_clean(source, config, args.minutes, workdir)
    hours = sum(s for s, _ in clean.values()) / 3600
    alarms = sum(len(a) for _, a in clean.values())
    if args.json:
        print(json.dumps({"faults": [asdict(r) for r in results],
                          "clean": {s: {"seconds": round(sec, 1), "alarms": a} for s, (sec, a) in clean.items()},
                          "false_alarms_per_hour": round(alarms / hours, 2) if hours else None}, indent=2))
    else:
        print(f"{'fault':<9} {'check':<9} {'T s':>5}  " + "  ".join(f"{s:>14}" for s in dict.fromkeys(
            r.source for r in results)))
        for fault in dict.fromkeys(r.fault for r in results):
            row = [r for r in results if r.fault == fault]
            cells = [("miss" if r.delay_s is None else f"{r.delay_s:.1f}/{'-' if r.clear_s is None else r.clear_s}")
                     + ("" if r.ok else "!") for r in row]
            print(f"{fault:<9} {row[0].check:<9} {row[0].after_s:>5.1f}  " + "  ".join(f"{c:>14}" for c in cells))
        print("cells: detection delay / clear time after the fault ended, seconds; ! = outside T + 2 s, not "
              "cleared, or another check alarmed")
        for r in results:
            if r.other_alarms:
                print(f"  {r.source} {r.fault}: other alarms {', '.join(r.other_alarms)}")
        print(f"\nuntouched clips, looped to {args.minutes:g} min each:")
        for source, (seconds, found) in clean.items():
            print(f"  {source:<11} {seconds / 60:6.1f} min  alarms {len(found)}" + (f"  {found[:5]}" if found else ""))
        rate = "n/a" if not hours else f"{alarms / hours:.2f}"
        print(f"false alarms per hour: {rate} ({alarms} in {hours * 60:.1f} min)")
    failed = [r for r in results if not r.ok]
    return 1 if failed or alarms else 0


if __name__ == "__main__":
    sys.exit(main())
