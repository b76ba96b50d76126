"""Config fuzzer: hostile and corrupt variants of the shipped configs through the real `streamd validate`.

    python -m tools.fuzz_config [--cases N] [--seed S] [--jobs J] [--out DIR] [CONFIG ...]

Each case takes one config (default: configs/*.yaml), applies one to three random mutations (byte flips,
truncation, bad bytes, alias bombs, huge lists, deep nesting, oversized files, odd scalars, blocks of the
wrong type, shuffled lines) and runs `python -m streamd validate` on it in a subprocess. Every case must end
within 5 s of CPU time (--timeout; CPU, not wall time, so busy neighbours do not fail it; a process still
running after --wall seconds is a hang) and 1 GiB of memory, with exit 0 or 1 and no traceback (nor the
"streamd bug" line of the last-resort handler). The seed is printed first; a failing case is written to
--out with the command that repeats it, and the exit status is 1. Case K of seed S is always the same file,
so `--seed S` repeats a whole run.

The mutated file is validated in a temporary copy of the config's surroundings (its siblings and the folders
beside its folder are symbolic links), so relative model and pipeline paths still resolve and nothing is
written next to the real config.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT_S = 5.0
MUTATIONS_PER_CASE = (1, 3)

Mutation = Callable[[random.Random, bytes], bytes]


# --- mutations: bytes in, bytes out ----------------------------------------------------------------


def flip_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data or b"\n")
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= rng.randint(1, 255)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


BAD_BYTES = [b"\0", b"\xfc", b"\xff", b"\x01", b"\x1b", b"\x7f", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf",
             b"# S\xfcd\n", "\u202e\U0001f4a5\u00a0".encode()]


def bad_byte(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.choice(BAD_BYTES) + data[at:]


def alias_bomb(rng: random.Random, data: bytes) -> bytes:
    levels, width = rng.randint(3, 9), rng.randint(2, 10)
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    bomb = "\n".join(lines).encode() + b"\n"
    if rng.random() < 0.5:  # the last level as the value of a real key
        return bomb + re.sub(rb"(?m)^streams:.*$", f"streams: *l{levels - 1}".encode(), data, count=1)
    return data.rstrip(b"\n") + b"\n" + bomb


def merge_bomb(rng: random.Random, data: bytes) -> bytes:
    lines = ["m0: &m0 {a: 1, b: 2}"]
    for i in range(1, rng.randint(10, 40)):
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: {i}}}")
    return data.rstrip(b"\n") + b"\n" + "\n".join(lines).encode() + b"\n"


def huge_list(rng: random.Random, data: bytes) -> bytes:
    n = rng.choice([1_000, 50_000, 300_000])
    if rng.random() < 0.5:
        return data.rstrip(b"\n") + b"\nbig: [" + b", ".join([b"0"] * n) + b"]\n"
    # many streams: copies of the first one with new names
    match = re.search(rb"(?m)^  - (\{.*\}|name: .*)$", data)
    if match is None or not match.group(1).startswith(b"{"):
        return data + b"\nstreams:\n" + b"".join(b"  - {name: s%d, url: rtsp://h/%d, pipeline: p}\n" % (i, i)
                                                for i in range(min(n, 20_000)))
    first = match.group(1)
    copies = [re.sub(rb"name: [^,}]+", b"name: fz%d" % i, first) for i in range(min(n, 20_000))]
    return data[: match.end()] + b"".join(b"\n  - " + c for c in copies) + data[match.end():]


def deep_nesting(rng: random.Random, data: bytes) -> bytes:
    depth = rng.choice([20, 60, 500, 5_000, 100_000])
    if rng.random() < 0.5:
        return data.rstrip(b"\n") + b"\ndeep: " + b"[" * depth + b"]" * depth + b"\n"
    depth = min(depth, 2_000)  # block style: two spaces a level
    return data.rstrip(b"\n") + b"\ndeep:\n" + b"".join(b"  " * i + b"k:\n" for i in range(1, depth)) + b"  " * depth + b"v\n"


def oversize(rng: random.Random, data: bytes) -> bytes:
    return data + b"#" + b"x" * ((1 << 20) + rng.randint(0, 4096)) + b"\n"


ODD_SCALARS = [".inf", "-.inf", ".nan", "-1", "0", "1e309", "99999999999999999999999", "9" * 5000, "''", "null",
               "~", "[]", "{}", "2024-13-45", "2024-02-30T25:00:00", "!!binary ZZZ", "!!python/object:os.system x",
               "*undefined", "&a", "Mars/Olympus", "'\\0'", "\"\\0\"", "\"\\x00\"", "rtsp://u:p@w/d@h/x?token=t",
               "yes", "0x", "0o9", "'" + "A" * 10_000 + "'", "- a", "a: b: c", "%TAG", "@", "`", "|\n  x"]


def odd_scalar(rng: random.Random, data: bytes) -> bytes:
    values = list(re.finditer(rb"(?m)(?<=: )[^\s#{\[][^\n#]*$", data))
    if not values:
        return data + b"\nx: " + rng.choice(ODD_SCALARS).encode() + b"\n"
    m = rng.choice(values)
    return data[: m.start()] + rng.choice(ODD_SCALARS).encode() + data[m.end():]


def retype_block(rng: random.Random, data: bytes) -> bytes:
    """A whole block (streams:, sinks:, a pipeline, ...) replaced by one scalar or flow value."""
    lines = data.split(b"\n")
    heads = [i for i, line in enumerate(lines) if re.fullmatch(rb"( *)([A-Za-z_][\w-]*):\s*(#.*)?", line)]
    if not heads:
        return odd_scalar(rng, data)
    i = rng.choice(heads)
    indent = len(lines[i]) - len(lines[i].lstrip(b" "))
    end = i + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip(b" ")) > indent
                                or lines[end].lstrip().startswith(b"- ") and indent == 0):
        end += 1
    value = rng.choice(["5", "-1.5", "true", "null", "s", "[]", "{}", "[1, [2]]", "{a: {b: 1}}", "'${UNSET_X}'"])
    lines[i:end] = [lines[i].split(b":")[0] + b": " + value.encode()]
    return b"\n".join(lines)


def shuffle_lines(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    op = rng.choice(["delete", "duplicate", "swap", "dedent", "indent"])
    i = rng.randrange(len(lines))
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines[i:i] = [lines[i]] * rng.randint(1, 3)
    elif op == "swap":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "dedent":
        lines[i] = lines[i].lstrip()
    else:
        lines[i] = b" " * rng.randint(1, 7) + lines[i]
    return b"\n".join(lines)


MUTATIONS: dict[str, Mutation] = {
    "flip_bytes": flip_bytes, "truncate": truncate, "bad_byte": bad_byte, "alias_bomb": alias_bomb,
    "merge_bomb": merge_bomb, "huge_list": huge_list, "deep_nesting": deep_nesting, "oversize": oversize,
    "odd_scalar": odd_scalar, "retype_block": retype_block, "shuffle_lines": shuffle_lines,
}


# --- running cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    index: int
    source: Path
    mutations: tuple[str, ...]
    data: bytes


@dataclass(frozen=True)
class Outcome:
    case: Case
    rc: int | None  # None: killed at the wall-clock limit (a hang)
    cpu_s: float  # user + system CPU seconds of the validate process
    wall_s: float
    max_rss_mib: float
    output: str

    def problem(self, limits: Limits) -> str | None:
        """Why this case breaks the fuzz contract, or None."""
        if self.rc is None:
            return f"still running after {self.wall_s:.0f} s of wall time (a hang): killed"
        if self.cpu_s > limits.cpu_s:
            return f"took {self.cpu_s:.1f} s of CPU (limit {limits.cpu_s:g} s)"
        if self.max_rss_mib > limits.memory_mib:
            return f"used {self.max_rss_mib:.0f} MiB of memory (limit {limits.memory_mib:g} MiB)"
        if self.rc not in (0, 1):
            return f"exit status {self.rc} (want 0 or 1)"
        if "Traceback" in self.output:
            return "printed a traceback"
        if "a streamd bug" in self.output:
            return "hit the last-resort error handler (an exception nobody expected)"
        return None


@dataclass(frozen=True)
class Limits:
    """What one validate may cost. Time is CPU time: on a shared machine wall time measures the neighbours."""

    cpu_s: float = DEFAULT_TIMEOUT_S
    wall_s: float = 60.0
    memory_mib: float = 1024.0


def make_case(seed: int, index: int, configs: Sequence[Path]) -> Case:
    rng = random.Random(f"{seed}:{index}")
    source = rng.choice(list(configs))
    data = source.read_bytes()
    names = tuple(rng.sample(sorted(MUTATIONS), rng.randint(*MUTATIONS_PER_CASE)))
    for name in names:
        data = MUTATIONS[name](rng, data)
    return Case(index, source, names, data)


def sandbox(source: Path, root: Path) -> Path:
    """A folder under ``root`` laid out like the source's surroundings; returns where its config goes."""
    folder, around = source.parent, source.parent.parent
    for entry in around.iterdir():
        if entry != folder and not (root / entry.name).exists():
            (root / entry.name).symlink_to(entry)
    mirror = root / folder.name
    mirror.mkdir(exist_ok=True)
    for entry in folder.iterdir():
        if entry.name != source.name and not (mirror / entry.name).exists():
            (mirror / entry.name).symlink_to(entry)
    return mirror / source.name


def validate_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "streamd", "validate", str(path)]


def run_case(case: Case, work: Path, limits: Limits, env: dict[str, str],
             command: Callable[[Path], list[str]] = validate_command) -> Outcome:
    root = work / f"case{case.index}"
    root.mkdir()
    target = sandbox(case.source, root)
    target.write_bytes(case.data)
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(command(target), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=root)
        killed = False
        peak_kib = 0
        while True:  # wait4 gives this child's own CPU time; its peak memory is sampled from /proc
            peak_kib = max(peak_kib, _peak_rss_kib(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > limits.wall_s:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                killed = True
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        output = out.read().decode(errors="replace")
    return Outcome(case, None if killed else proc.returncode, usage.ru_utime + usage.ru_stime,
                   time.monotonic() - start, peak_kib / 1024, output)


def _peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory since its exec (VmHWM). Not wait4's ru_maxrss: for a child forked from a
    large parent (a test runner that ran daemons) that counts the parent's memory at fork time."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def default_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONVEYOR_VIDEO", "/dev/null")  # configs/conveyor.yaml's video, as the docs validate it
    media = REPO.parent / "shared" / "media"
    if media.is_dir():
        env.setdefault("STREAMD_MEDIA", str(media))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def fuzz(configs: Sequence[Path], cases: int, seed: int, out: Path, *, jobs: int = 2,
         limits: Limits = Limits(), command: Callable[[Path], list[str]] = validate_command,
         log: Callable[[str], None] = print) -> list[Outcome]:
    """Run ``cases`` mutated configs; returns the failing outcomes (each also written to ``out``)."""
    env = default_env()
    failures: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as tmp:
        work = Path(tmp)
        all_cases = [make_case(seed, i, configs) for i in range(cases)]
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            outcomes = list(pool.map(lambda c: run_case(c, work, limits, env, command), all_cases))
    for outcome in outcomes:
        problem = outcome.problem(limits)
        if problem is None:
            continue
        failures.append(outcome)
        case = outcome.case
        out.mkdir(parents=True, exist_ok=True)
        saved = out / f"fuzz-{seed}-{case.index}-{case.source.name}"
        saved.write_bytes(case.data)
        log(f"FAIL case {case.index} ({case.source.name}: {', '.join(case.mutations)}): {problem}\n"
            f"  file: {saved} (validate it from {case.source.parent} for the same relative paths)\n"
            f"  repeat: python -m tools.fuzz_config --seed {seed} --cases {case.index + 1}\n"
            f"  output: {outcome.output.strip()[-2000:]}")
    exits = sorted({str(o.rc) for o in outcomes})
    log(f"fuzz_config: {len(outcomes)} case(s), {len(failures)} failure(s); exit statuses {', '.join(exits)}; "
        f"most CPU {max((o.cpu_s for o in outcomes), default=0):.2f} s (limit {limits.cpu_s:g} s), "
        f"most memory {max((o.max_rss_mib for o in outcomes), default=0):.0f} MiB, "
        f"longest wall {max((o.wall_s for o in outcomes), default=0):.1f} s")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz_config", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", type=Path, help="configs to mutate (default: configs/*.yaml)")
    parser.add_argument("--cases", type=int, default=200, help="how many mutated files (default 200)")
    parser.add_argument("--seed", type=int, help="repeat a run (default: a new random seed, printed)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="validate runs at once")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="CPU seconds one validate may take (default 5)")
    parser.add_argument("--wall", type=float, default=Limits.wall_s,
                        help="wall-clock seconds after which a validate counts as hung and is killed (default 60)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"), help="where failing files are written")
    args = parser.parse_args(argv)
    configs = [p.resolve() for p in args.configs] or sorted((REPO / "configs").glob("*.yaml"))
    missing = [str(p) for p in configs if not p.is_file()]
    if not configs or missing:
        print(f"error: no such config: {', '.join(missing) or 'configs/*.yaml is empty'}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 32)
    print(f"fuzz_config: seed {seed} ({args.cases} cases over {', '.join(p.name for p in configs)})", flush=True)
    failures = fuzz(configs, args.cases, seed, args.out, jobs=args.jobs,
                    limits=Limits(cpu_s=args.timeout, wall_s=args.wall))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
