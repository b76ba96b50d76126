"""Command line: `streamd run [CONFIG]`, `streamd validate CONFIG`, `streamd --version`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamd import __version__
from streamd.errors import ConfigError, ModelError


def _cmd_validate(args: argparse.Namespace) -> int:
    from streamd.app import resolve_pipeline
    from streamd.config import load_config

    try:
        loaded = load_config(args.config)
        used = {s.pipeline for s in loaded.config.active_streams}
        for name in sorted(used):
            resolve_pipeline(name, loaded.config.pipelines[name])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ModelError as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 1
    cfg = loaded.config
    print(f"{loaded.path}: OK: {len(cfg.active_streams)} stream(s), {len(used)} pipeline(s), {len(cfg.sinks)} sink(s)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from streamd.app import Daemon
    from streamd.config import load_config
    from streamd.runtime.logging import configure_logging

    if not args.config:
        from streamd.demo import run_demo

        return run_demo(seed=args.demo_seed, int8=args.int8, realtime=not args.fast)
    path = Path(args.config)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    configure_logging(args.log_level or loaded.config.log_level, stage="supervisor")
    return Daemon(loaded).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamd", description="Real-time video analytics daemon.")
    parser.add_argument("--version", action="version", version=f"streamd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon on CONFIG; without one, the built-in conveyor demo")
    run.add_argument("config", nargs="?", help="daemon config YAML")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    demo = run.add_argument_group("built-in demo (no CONFIG)")
    demo.add_argument("--demo-seed", type=int, choices=[1, 2, 3], default=1, help="which held-out scene")
    demo.add_argument("--int8", action="store_true", help="use the INT8 model")
    demo.add_argument("--fast", action="store_true", help="every frame as fast as possible instead of real time")
    run.set_defaults(func=_cmd_run)
    validate = sub.add_parser("validate", help="check a config file (exit 0 valid, 1 invalid)")
    validate.add_argument("config")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
