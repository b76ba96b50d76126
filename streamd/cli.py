"""Command line: `streamd run [CONFIG]`, `streamd validate CONFIG`, `streamd counts CONFIG`, `streamd events export`,
`streamd fleet status CONFIG`, `streamd model inspect MODEL`, `streamd --version`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamd import __version__
from streamd.errors import ConfigError, ModelError
from streamd.redact import redact


def _cmd_validate(args: argparse.Namespace) -> int:
    from streamd.config import load_config

    try:
        from streamd.app import resolve_pipeline

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
    except Exception as exc:  # noqa: BLE001 - validate answers with one error line, never a traceback
        print(f"error: {args.config}: cannot validate: {type(exc).__name__}: {redact(str(exc))[:300]} "
              f"(a streamd bug: please report it with the file)", file=sys.stderr)
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


def _cmd_counts(args: argparse.Namespace) -> int:
    import json
    import sqlite3
    from datetime import datetime, timezone

    from streamd.analytics.store import ShiftSchedule, hour_window
    from streamd.analytics.stores import open_count_store
    from streamd.config import load_config

    try:
        # reading needs no write access to the store's folder: skip the checks of paths the daemon writes
        counts_cfg = load_config(args.config, check_paths=False).config.counts
        store = open_count_store(counts_cfg, readonly=True)  # PostgreSQL (the whole fleet) when counts.url is set
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as exc:
        print(f"error: cannot read the counts store {counts_cfg.path}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the PostgreSQL store (counts.url): unreachable, refused, no schema yet
        from streamd.redact import redact

        print(f"error: cannot read the counts store {redact(counts_cfg.url or counts_cfg.path)}: "
              f"{redact(str(exc).strip())}", file=sys.stderr)
        return 1
    now = datetime.now(timezone.utc)
    start: datetime | None
    end: datetime | None
    schedule = ShiftSchedule.parse(counts_cfg.shifts, counts_cfg.timezone)
    if args.window == "shift":
        start, end = schedule.window(now)
    elif args.window == "hour":
        start, end = hour_window(now, schedule.timezone)
    else:
        start = end = None
    since, until = (start.timestamp(), end.timestamp()) if start and end else (None, None)
    rows = store.counts(args.stream, since=since, until=until)
    zones = store.zone_counts(args.stream, since=since, until=until)
    store.close()
    from streamd.health.store import HealthStore

    health_store = HealthStore(counts_cfg.path, readonly=True)
    unhealthy = health_store.unhealthy(since=since, until=until, stream=args.stream)
    health_store.close()
    window = f"{start.isoformat()} .. {end.isoformat()}" if start and end else "all time"
    if args.json:
        print(json.dumps({"window": args.window, "from": start.isoformat() if start else None,
                          "to": end.isoformat() if end else None,
                          "counts": [{"stream": s, "line": ln, "class": c, "direction": d, "count": n}
                                     for (s, ln, c, d), n in rows.items()],
                          "zones": [{"stream": s, "zone": z, "class": c, "visits": v.visits, "exits": v.exits,
                                     "mean_dwell_s": None if v.mean_dwell_s is None else round(v.mean_dwell_s, 3)}
                                    for (s, z, c), v in zones.items()],
                          "unhealthy": {s: {"seconds": u.seconds, "window_s": u.window_s, "checks": list(u.checks),
                                            "text": u.describe()} for s, u in unhealthy.items()}}))
        return 0
    print(f"counts ({args.window}: {window}) from {counts_cfg.path}")
    if not rows and not zones:
        print("  no crossings or zone visits recorded")
    for (stream, line, cls, direction), n in rows.items():
        print(f"  {stream:<16} {line:<12} {cls:<14} {direction:<5} {n:>8}")
    for (stream, zone, cls), visit in zones.items():
        dwell = "-" if visit.mean_dwell_s is None else f"{visit.mean_dwell_s:.1f} s"
        print(f"  {stream:<16} {zone:<12} {cls:<14} visits {visit.visits:>8}  mean dwell {dwell}")
    for stream, bad in unhealthy.items():  # counts recorded while the camera was unhealthy are not to be trusted
        print(f"  {stream:<16} camera health: {bad.describe()}")
    return 0


def _cmd_events_export(args: argparse.Namespace) -> int:
    from streamd.config import load_config
    from streamd.evidence.api import parse_time
    from streamd.evidence.export import export_events
    from streamd.evidence.query import QueryError

    try:
        loaded = load_config(args.config)
        since, until = parse_time(args.since, "--since"), parse_time(args.until, "--until")
    except (ConfigError, QueryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n = export_events(loaded.config, Path(args.out), since, until, stream=args.stream)
    print(f"{n} events written to {args.out}/events.csv and events.json, evidence files in {args.out}/files")
    return 0


def _cmd_fleet_status(args: argparse.Namespace) -> int:
    import json

    from streamd.api.fleet import FleetReader, FleetUnreachable
    from streamd.config import load_config
    from streamd.fleet.report import format_fleet_status

    try:
        config = load_config(args.config, check_paths=False).config
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not config.fleet.enabled or config.counts.url is None:
        print(f"error: {args.config}: not a fleet config: set fleet.enabled: true and counts.url (docs/fleet.md)",
              file=sys.stderr)
        return 1
    try:
        status = FleetReader(config.counts.url, timeout_s=args.timeout).read()
    except FleetUnreachable as exc:
        print(f"error: {args.config}: the fleet database (counts.url {redact(config.counts.url)}) did not answer: "
              f"{exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"owners": status.owners(), **status.as_dict()}, indent=2))
    else:
        print(format_fleet_status(status))
    return 0


def _cmd_model_inspect(args: argparse.Namespace) -> int:
    from streamd.infer.inspect import run_cli

    return run_cli(args)


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
    counts = sub.add_parser("counts", help="print durable line counts and zone visits from the store (daemon running or not)")
    counts.add_argument("config", help="the daemon config (gives the store path, time zone and shifts)")
    counts.add_argument("--stream", help="only this stream")
    counts.add_argument("--window", choices=["total", "hour", "shift"], default="total")
    counts.add_argument("--json", action="store_true", help="machine-readable output")
    counts.set_defaults(func=_cmd_counts)
    validate = sub.add_parser("validate", help="check a config file (exit 0 valid, 1 invalid)")
    validate.add_argument("config")
    validate.set_defaults(func=_cmd_validate)
    events = sub.add_parser("events", help="events and their evidence").add_subparsers(dest="events_command",
                                                                                     required=True)
    export = events.add_parser("export", help="events of a time window as CSV and JSON with their snapshots and clips")
    export.add_argument("config", help="the daemon config (gives the count store and the evidence folder)")
    export.add_argument("--since", help="from this time (Unix seconds or ISO 8601, e.g. 2026-12-01T08:00:00Z)")
    export.add_argument("--until", help="up to this time (exclusive)")
    export.add_argument("--stream", help="only this stream")
    export.add_argument("--out", required=True, help="folder to write events.csv, events.json and files/ into")
    export.set_defaults(func=_cmd_events_export)
    fleet = sub.add_parser("fleet", help="the fleet of nodes sharing counts.url").add_subparsers(
        dest="fleet_command", required=True)
    fleet_status = fleet.add_parser("status", help="members, which node owns which stream, lease ages, recent moves")
    fleet_status.add_argument("config", help="a fleet node's config (gives counts.url)")
    fleet_status.add_argument("--json", action="store_true", help="machine-readable output")
    fleet_status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the database")
    fleet_status.set_defaults(func=_cmd_fleet_status)
    model = sub.add_parser("model", help="model files").add_subparsers(dest="model_command", required=True)
    inspect = model.add_parser("inspect", help="adapter, input size, classes, batch axis, precision and latency "
                               "of MODEL as the daemon would read it")
    inspect.add_argument("model", help="ONNX model file")
    inspect.add_argument("--adapter", default="auto", help="force an adapter instead of detecting it")
    inspect.add_argument("--labels", help="class-names file, for models that carry none")
    inspect.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="for dynamic inputs")
    inspect.add_argument("--providers", nargs="+", help="ONNX Runtime providers in order (default: CPU)")
    inspect.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ORT default)")
    inspect.add_argument("--runs", type=int, default=20, help="timed runs after 3 warm-up runs (0: skip)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=_cmd_model_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
