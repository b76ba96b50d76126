"""The benchmark's videos: conveyor scenes (streamd.synth) that the bundled model detects, encoded like a camera.

A short scene is rendered once at 640x360 (the size the synthetic scenes and the model were made for),
scaled to the wanted size and encoded with no B-frames and one key frame a second (what IP cameras
send, and what the RTSP server can pass through without re-encoding). Long clips repeat that unit by
remuxing its packets with shifted timestamps, so a 60 s clip costs one render of a few seconds.
Clips are cached by their parameters under the cache folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
from tqdm import tqdm

from streamd.synth.conveyor import ConveyorScene, SceneConfig

# S4's scenes: seeds the bundled model never saw (trained on 100-139, validated on 140-145): the demo's 1-3,
# then the test split 146-155 (tools/synth/dataset.scene_for), then further seeds of that recipe
S4_SEEDS = (1, 2, 3, *range(146, 156))


@dataclass(frozen=True)
class ClipSpec:
    width: int
    height: int
    fps: int
    seconds: float  # total length; the rendered unit repeats to reach it
    unit_seconds: float = 8.0
    seed: int = 3

    @property
    def name(self) -> str:
        return f"conveyor-{self.width}x{self.height}-{self.fps}fps-{self.seconds:g}s-u{self.unit_seconds:g}-s{self.seed}.mp4"


def _render_unit(spec: ClipSpec, path: Path) -> None:
    _encode(ConveyorScene(SceneConfig(seed=spec.seed, fps=spec.fps, seconds=spec.unit_seconds,
                                      belt_speed=12.0 * 15 / spec.fps, density=1.5)), spec.width, spec.height, path)


def _encode(scene: ConveyorScene, width: int, height: int, path: Path, crf: int = 23) -> None:
    spec = scene.config
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # no B-frames, a key frame every second, no lookahead: a camera's stream
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "crf": str(crf), "g": str(spec.fps),
                          "bf": "0"}
        frames = scene.config.frames
        for _, image, _ in tqdm(scene.frames(), total=frames, desc=f"render {width}x{height} seed {spec.seed}",
                                unit="frame", leave=False, disable=None):
            if image.shape[1] != width or image.shape[0] != height:
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def _repeat(unit: Path, path: Path, seconds: float) -> None:
    """Concatenate copies of ``unit`` (packets only, timestamps shifted) until ``seconds`` long."""
    tmp = path.with_name(path.name + ".part")
    with av.open(str(unit)) as src:
        in_stream = src.streams.video[0]
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in src.demux(in_stream) if p.size]
        tb = in_stream.time_base
        step = packets[1][1] - packets[0][1] if len(packets) > 1 else 1
        unit_ticks = max(p[1] for p in packets) - min(p[1] for p in packets) + step
        repeats = max(1, int(-(-seconds // float(unit_ticks * tb))))
        with av.open(str(tmp), "w", format="mp4") as dst:
            out = dst.add_stream_from_template(in_stream)
            for k in range(repeats):
                for data, pts, dts, key in packets:
                    packet = av.Packet(data)
                    packet.pts, packet.dts = pts + k * unit_ticks, dts + k * unit_ticks
                    packet.is_keyframe = key
                    packet.time_base = tb
                    packet.stream = out
                    dst.mux(packet)
    tmp.replace(path)


def clip(spec: ClipSpec, cache: Path) -> Path:
    """Path of a cached clip matching ``spec``, made on first use."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / spec.name
    if path.exists():
        return path
    unit = cache / ClipSpec(spec.width, spec.height, spec.fps, spec.unit_seconds, spec.unit_seconds, spec.seed).name
    if not unit.exists():
        _render_unit(spec, unit)
    if spec.seconds > spec.unit_seconds:
        _repeat(unit, path, spec.seconds)
    return path


def s4_scene_config(seed: int, seconds: float, fps: int = 15, lead_in_s: float = 4.0) -> SceneConfig:
    """A held-out conveyor scene at ``fps``: the demo's settings for seeds 1-3, the dataset recipe otherwise.

    No product crosses the line in the first or last ``lead_in_s`` seconds (the scene's margin): a client
    that loses the first frames of its connection (FFmpeg with ``fflags nobuffer`` drops the packets it read
    while probing the stream, about 2 s here) still sees every crossing."""
    from streamd.demo import DEMO_SCENES
    from tools.synth.dataset import scene_for

    base = DEMO_SCENES[seed] if seed in DEMO_SCENES else scene_for(seed)
    return dataclasses.replace(base, fps=fps, seconds=seconds, margin_frames=max(1, round(lead_in_s * fps)))


def s4_scene(seed: int, seconds: float, cache: Path, fps: int = 15,
             lead_in_s: float = 4.0) -> tuple[Path, dict[str, int]]:
    """The S4 clip of ``seed`` (640x360, encoded like a camera) and its truth: per-class counts of products whose
    centre crosses x = 320 from left to right, made on first use and cached with the truth next to it."""
    config = s4_scene_config(seed, seconds, fps, lead_in_s)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / (f"s4-conveyor-seed{seed}-{config.fps}fps-{config.seconds:g}s-m{config.margin_frames}"
                    f"-b{config.belt_speed:g}-d{config.density:g}.mp4")
    truth = path.with_suffix(".json")
    if path.exists() and truth.exists():
        return path, json.loads(truth.read_text())["counts"]
    scene = ConveyorScene(config)
    counts = scene.expected_counts()
    _encode(scene, config.width, config.height, path, crf=20)  # the quality of streamd.synth.render_video
    truth.write_text(json.dumps({"config": dataclasses.asdict(config), "counts": counts,
                                 "line_x": config.line_x}))
    return path, counts


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for p in container.demux(video=0) if p.size)
