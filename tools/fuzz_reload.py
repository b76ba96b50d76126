"""Reconfiguration fuzz: random edits, reloads, signals and crashes against a real daemon, with invariants
checked after every step.

    python -m tools.fuzz_reload --steps 200 [--seed N] [--out DIR]

A real `streamd run` with real-time looping streams on two models (the bundled FP32 and INT8 conveyor
models). Each step is one of: a valid edit (add, remove or change a stream; add, change or remove a pipeline;
switch a pipeline's model), an invalid edit (a bad byte, an unknown pipeline, a model that does not load),
SIGHUP, POST /api/reload, kill -9 of a random stage, SIGSTOP of a decoder for a moment. After each step:

- the daemon is alive;
- every enabled stream has new analysed frames within 10 s;
- every running stage reports the config hash the supervisor expects (it runs the current config);
- no event id appears twice in the JSONL sink (no count doubled);
- no /dev/shm ring of the daemon exists that is not the ring of a stream it runs (nothing leaked);
- the watch loop's systemd watchdog pings never paused more than 2 s.

Seeded: a failing run prints its seed and the steps so far; rerun with --seed to reproduce.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
MODELS = (REPO / "streamd" / "models" / "conveyor.onnx", REPO / "streamd" / "models" / "conveyor.int8.onnx")
FRAMES_WITHIN_S = 10.0
MAX_WATCHDOG_GAP_S = 2.0
WATCHDOG_USEC = 1_000_000  # pings every 0.5 s
MAX_STREAMS = 5


class InvariantBroken(AssertionError):
    pass


@dataclass
class World:
    """The config the daemon should be running (the last valid file)."""

    video: str
    state_dir: str
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {pipeline, enabled}
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {model, confidence, x}
    next_id: int = 10  # names it makes (s11, p12, ...) never collide with the initial s0-s3, p0-p1

    def config(self) -> dict[str, Any]:
        return {
            "streams": [{"name": n, "url": self.video, "pipeline": s["pipeline"], "enabled": s["enabled"],
                         "realtime": True, "loop": True} for n, s in self.streams.items()],
            "pipelines": {n: {"model": str(p["model"]), "confidence": p["confidence"],
                              "lines": [{"name": "exit", "points": [[p["x"], 360], [p["x"], 0]], "anchor": "center"}]}
                          for n, p in self.pipelines.items()},
            "sinks": [{"type": "jsonl", "path": f"{self.state_dir}/events.jsonl"}],
            "counts": {"path": f"{self.state_dir}/counts.db"},
            "supervisor": {"stats_interval_s": 5, "crash_loop_restarts": 100, "heartbeat_timeout_s": 10,
                           "restart": {"initial_s": 0.2, "max_s": 2.0}},
            "api": {"port": 0},
        }

    def enabled(self) -> set[str]:
        return {n for n, s in self.streams.items() if s["enabled"]}

    def new_name(self, prefix: str) -> str:
        self.next_id += 1
        return f"{prefix}{self.next_id}"


class WatchdogListener:
    """A NOTIFY_SOCKET as systemd would have it: records when WATCHDOG=1 pings arrive."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.pings: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if b"WATCHDOG=1" in data:
                self.pings.append(time.monotonic())

    def max_gap_since(self, since: float) -> float:
        stamps = [t for t in self.pings if t >= since] + [time.monotonic()]
        return max((b - a for a, b in zip(stamps, stamps[1:])), default=0.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Fuzzer:
    def __init__(self, seed: int, workdir: Path, video: Path, log: Any = print):
        self.rng = random.Random(seed)
        self.seed = seed
        self.workdir = workdir
        self.world = World(video=str(video), state_dir=str(workdir))
        self.cfg_path = workdir / "streamd.yaml"
        self.log = log
        self.steps: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.watchdog = WatchdogListener(workdir / "notify.sock")
        self.client = httpx.Client(timeout=10)

    # --- daemon --------------------------------------------------------------------------------------

    def start(self) -> None:
        w = self.world
        for i, model in enumerate(MODELS):
            w.pipelines[f"p{i}"] = {"model": model, "confidence": 0.35, "x": 320}
        for i in range(4):
            w.streams[f"s{i}"] = {"pipeline": f"p{i % 2}", "enabled": True}
        self._write(w.config())
        env = {**os.environ, "NOTIFY_SOCKET": str(self.watchdog.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        self.log_path = self.workdir / "daemon.log"
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamd", "run", str(self.cfg_path)],
                                     stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.url:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"api_listening"' in line:
                    self.url = json.loads(line)["url"].rstrip("/")
            self._alive()
            time.sleep(0.2)
        if not self.url:
            raise InvariantBroken("the daemon's API did not come up within 120 s")
        self.check(time.monotonic())

    def stop(self) -> int | None:
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                code = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait(10)
            self._log_file.close()
        self.client.close()
        self.watchdog.close()
        return code

    def _write(self, config: dict[str, Any] | str | bytes) -> None:
        data = config if isinstance(config, (str, bytes)) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.cfg_path.with_suffix(".tmp")
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, self.cfg_path)  # atomic, as editors and ConfigMap updates do

    def _alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise InvariantBroken(f"the daemon exited with {self.proc.returncode}")

    def _get(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.get(f"{self.url}{path}").json()
        return result

    # --- steps ---------------------------------------------------------------------------------------

    def step(self) -> None:
        actions = [(self.edit_valid, 5), (self.edit_invalid, 1), (self.sighup, 1), (self.api_reload, 1),
                   (self.kill_stage, 2), (self.stop_decoder, 1)]
        action = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
        began = time.monotonic()
        what = action()
        self.steps.append(what)
        self.log(f"step {len(self.steps)}: {what}")
        self.check(began)

    def _reload_and_wait(self, trigger: Any, expect_ok: bool | None, what: str) -> None:
        before = self._get("/api/streams")["reload"].get("at") or 0.0
        trigger()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self._alive()
            status = self._get("/api/streams")["reload"]
            if (status.get("at") or 0.0) > before and not status.get("in_progress"):
                if expect_ok is not None and status.get("ok") != expect_ok:
                    raise InvariantBroken(f"{what}: reload ok={status.get('ok')}, expected {expect_ok}: "
                                          f"{status.get('error')}")
                return
            time.sleep(0.1)
        raise InvariantBroken(f"{what}: the reload did not finish within 120 s")

    def edit_valid(self) -> str:
        w, rng = self.world, self.rng
        choices = ["add_stream", "change_stream", "add_pipeline", "change_pipeline", "switch_model"]
        if len(w.streams) > 1:
            choices += ["remove_stream", "toggle_stream"]
        unused = [p for p in w.pipelines if not any(s["pipeline"] == p for s in w.streams.values())]
        if unused:
            choices.append("remove_pipeline")
        kind = rng.choice(choices)
        if kind == "add_stream" and len(w.streams) >= MAX_STREAMS:
            kind = "change_pipeline"
        if kind == "add_stream":
            name = w.new_name("s")
            w.streams[name] = {"pipeline": rng.choice(sorted(w.pipelines)), "enabled": True}
            what = f"add stream {name} on {w.streams[name]['pipeline']}"
        elif kind == "remove_stream":
            name = rng.choice(sorted(w.streams))
            del w.streams[name]
            what = f"remove stream {name}"
        elif kind == "toggle_stream":
            name = rng.choice(sorted(w.streams))
            w.streams[name]["enabled"] = not w.streams[name]["enabled"]
            if not w.enabled():
                w.streams[name]["enabled"] = True
            what = f"stream {name} enabled={w.streams[name]['enabled']}"
        elif kind == "change_stream":
            name = rng.choice(sorted(w.streams))
            w.streams[name]["pipeline"] = rng.choice(sorted(w.pipelines))
            what = f"stream {name} -> pipeline {w.streams[name]['pipeline']}"
        elif kind == "add_pipeline":
            name = w.new_name("p")
            w.pipelines[name] = {"model": rng.choice(MODELS), "confidence": round(rng.uniform(0.3, 0.5), 2),
                                 "x": rng.choice([280, 320, 360])}
            stream = rng.choice(sorted(w.streams))
            w.streams[stream]["pipeline"] = name
            what = f"add pipeline {name} ({Path(w.pipelines[name]['model']).name}) for stream {stream}"
        elif kind == "change_pipeline":
            name = rng.choice(sorted(w.pipelines))
            w.pipelines[name]["confidence"] = round(rng.uniform(0.3, 0.5), 2)
            w.pipelines[name]["x"] = rng.choice([280, 320, 360])
            what = f"change pipeline {name}: confidence {w.pipelines[name]['confidence']}, line x {w.pipelines[name]['x']}"
        elif kind == "switch_model":
            name = rng.choice(sorted(w.pipelines))
            current = w.pipelines[name]["model"]
            w.pipelines[name]["model"] = MODELS[1] if current == MODELS[0] else MODELS[0]
            what = f"pipeline {name} -> model {Path(w.pipelines[name]['model']).name}"
        else:
            name = rng.choice(unused)
            del w.pipelines[name]
            what = f"remove pipeline {name}"
        self._reload_and_wait(lambda: self._write(w.config()), True, what)
        return what

    def edit_invalid(self) -> str:
        config = self.world.config()
        kind = self.rng.choice(["bad_byte", "unknown_pipeline", "missing_model", "not_yaml"])
        if kind == "bad_byte":
            data: bytes | dict[str, Any] = yaml.safe_dump(config, sort_keys=False).encode() + b"# S\xfcd\x00\n"
        elif kind == "unknown_pipeline":
            config["streams"][0]["pipeline"] = "nope"
            data = config
        elif kind == "missing_model":
            config["streams"].append({"name": "ghost", "url": self.world.video, "pipeline": "ghost", "realtime": True,
                                      "loop": True})
            config["pipelines"]["ghost"] = {"model": str(self.workdir / "missing.onnx")}
            data = config
        else:
            data = b"streams: [\n  - {name: x"
        self._reload_and_wait(lambda: self._write(data), False, f"invalid edit ({kind})")
        # the next trigger must not re-read the broken file as the "current" one: put the valid file back
        self._reload_and_wait(lambda: self._write(self.world.config()), True, "restore the valid file")
        return f"invalid edit ({kind}), then the valid file again"

    def sighup(self) -> str:
        assert self.proc is not None
        self._reload_and_wait(lambda: self.proc.send_signal(signal.SIGHUP), True, "SIGHUP")  # type: ignore[union-attr]
        return "SIGHUP"

    def api_reload(self) -> str:
        response = self.client.post(f"{self.url}/api/reload", timeout=130)
        if response.status_code != 200:
            raise InvariantBroken(f"POST /api/reload answered {response.status_code}: {response.text[:300]}")
        return "POST /api/reload"

    def kill_stage(self) -> str:
        stages = {n: s for n, s in self._get("/api/streams")["stages"].items() if s["state"] == "running" and s["pid"]}
        name = self.rng.choice(sorted(stages))
        try:
            os.kill(stages[name]["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
        return f"kill -9 {name}"

    def stop_decoder(self) -> str:
        stages = {n: s for n, s in self._get("/api/streams")["stages"].items()
                  if s["kind"] == "decoder" and s["state"] == "running" and s["pid"]}
        if not stages:
            return "SIGSTOP: no decoder running"
        name = self.rng.choice(sorted(stages))
        pause = round(self.rng.uniform(0.5, 3.0), 1)
        pid = stages[name]["pid"]
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(pause)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        return f"SIGSTOP {name} for {pause} s"

    # --- invariants ----------------------------------------------------------------------------------

    def check(self, began: float) -> None:
        self._alive()
        enabled = self.world.enabled()
        first = self._get("/api/streams")
        baseline = {n: first["streams"].get(n, {}).get("frames_analysed", 0) for n in enabled}
        deadline = time.monotonic() + FRAMES_WITHIN_S
        body = first
        while True:
            self._alive()
            body = self._get("/api/streams")
            streams, stages = body["streams"], body["stages"]
            stale = sorted(n for n in enabled if streams.get(n, {}).get("frames_analysed", 0) <= baseline[n])
            behind = sorted(n for n, s in stages.items() if s["state"] == "running" and s["config_hash"]
                            and not s["config_current"])
            if set(streams) != enabled:
                stale = sorted(set(stale) | (set(streams) ^ enabled))
            if not stale and not behind:
                break
            if time.monotonic() > deadline:
                raise InvariantBroken(f"within {FRAMES_WITHIN_S:.0f} s: streams without new frames {stale}, stages "
                                      f"not on the current config {behind}; streams: "
                                      f"{ {n: (s['state'], s.get('last_error')) for n, s in streams.items()} }")
            time.sleep(0.2)
        self._check_events()
        self._check_shm(body)
        gap = self.watchdog.max_gap_since(began)
        if gap > MAX_WATCHDOG_GAP_S:
            raise InvariantBroken(f"the watch loop's watchdog pings paused {gap:.2f} s")

    def _check_events(self) -> None:
        path = Path(self.world.state_dir) / "events.jsonl"
        if not path.exists():
            return
        seen: set[str] = set()
        for line in path.read_text().splitlines():
            if '"id"' not in line:
                continue
            event = json.loads(line)
            if event.get("type") not in ("line_crossing", "zone_event"):
                continue
            if event["id"] in seen:
                raise InvariantBroken(f"event {event['id']} written twice: a count doubled")
            seen.add(event["id"])

    def _check_shm(self, body: dict[str, Any]) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 5
        while True:
            rings = {s.get("ring") for s in self._get("/api/streams")["streams"].values()}
            segments = {p.name for p in Path("/dev/shm").glob(f"streamd-{self.proc.pid}-*")}
            leaked = segments - rings
            if not leaked:
                return
            if time.monotonic() > deadline:
                raise InvariantBroken(f"shared memory not freed: {sorted(leaked)}")
            time.sleep(0.2)


def run(steps: int, seed: int, workdir: Path | None = None, log: Any = print) -> list[str]:
    """Run ``steps`` random steps; raises InvariantBroken (with the seed and steps in its message) on failure."""
    from streamd.synth.conveyor import SceneConfig, render_video

    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="streamd-fuzz-")) if workdir is None else workdir
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "belt.mp4"
    if not video.exists():
        render_video(SceneConfig(seed=5, fps=10, seconds=6.0, belt_speed=18.0, density=1.0), video)
    fuzzer = Fuzzer(seed, folder, video, log)
    log(f"reload fuzz: seed {seed}, {steps} steps, in {folder}")
    try:
        fuzzer.start()
        for _ in range(steps):
            fuzzer.step()
    except InvariantBroken as exc:
        history = "\n  ".join(fuzzer.steps)
        raise InvariantBroken(f"seed {seed}, after step {len(fuzzer.steps)}: {exc}\nsteps:\n  {history}\n"
                              f"daemon log: {fuzzer.workdir / 'daemon.log'}") from None
    finally:
        code = fuzzer.stop()
        log(f"daemon stopped with exit code {code}")
    if own:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return fuzzer.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz_reload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="random steps to run (default 200)")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--out", type=Path, help="keep the daemon's folder (config, log, events) here")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    try:
        steps = run(args.steps, seed, args.out)
    except InvariantBroken as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"OK: {len(steps)} steps, seed {seed}, every invariant held after each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
