"""Checks of a validated config against this machine: can the daemon create and write every file it names?

The pydantic models stay pure (no I/O); `load_config` runs these after validation (``check_paths=True``), so
`streamd validate`, `streamd run` and a reload all refuse a counts store under a regular file or in /proc, a JSONL
sink in a read-only folder, and the like, with the field, the path and what to do — not a mkdir traceback later.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Literal

from streamd.config.models import DaemonConfig, JsonlSinkConfig, MqttSinkConfig, WebhookSinkConfig

Loc = tuple[str | int, ...]
Use = Literal["sqlite", "append", "rotate", "read"]

# Kernel file systems: they exist and look writable to root, but no file can be created in them.
VIRTUAL_ROOTS = ("/proc", "/sys")


@dataclass(frozen=True)
class PathProblem:
    """One path of the config that cannot work: ``loc`` is the field (("sinks", 1, "path")), ``message`` why."""

    loc: Loc
    message: str

    def __str__(self) -> str:
        return f"{dotted(self.loc)}: {self.message}"


def check_paths(config: DaemonConfig) -> list[PathProblem]:
    """Every file the daemon would write (or read, for CA bundles) that cannot work here, with the fix."""
    wanted: list[tuple[Loc, str, Use]] = []
    # with counts.url too: analytics records locally and the replicator ships the rows to PostgreSQL
    wanted.append((("counts", "path"), config.counts.path, "sqlite"))
    for i, sink in enumerate(config.sinks):
        if isinstance(sink, JsonlSinkConfig):
            wanted.append((("sinks", i, "path"), sink.path, "append" if sink.max_bytes is None else "rotate"))
        if isinstance(sink, (MqttSinkConfig, WebhookSinkConfig)) and sink.outbox.path:
            wanted.append((("sinks", i, "outbox", "path"), sink.outbox.path, "sqlite"))
        if isinstance(sink, MqttSinkConfig) and sink.ca_file:
            wanted.append((("sinks", i, "ca_file"), sink.ca_file, "read"))
    problems = []
    for loc, path, use in wanted:
        message = path_problem(path, use)
        if message is not None:
            problems.append(PathProblem(loc, message))
    return problems


def path_problem(path: str, use: Use = "append") -> str | None:
    """Why ``path`` cannot be used as ``use`` says, or None when it can.

    A file to write is usable when it is a writable regular file, or does not exist yet and its nearest existing
    ancestor is a writable folder (the daemon creates the folders between). ``sqlite`` and ``rotate`` also need
    the file's own folder writable (journal files, renames); ``append`` also takes a device or pipe
    (/dev/null, /dev/stdout); ``read`` needs a readable regular file.
    """
    try:
        return _problem(os.path.abspath(path), path, use)
    except (OSError, ValueError) as exc:  # an embedded NUL byte, a name too long, an I/O error
        return f"{path} cannot be checked: {exc}; give a plain file path"


def _problem(target: str, path: str, use: Use) -> str | None:
    if _under_virtual(target) or _under_virtual(os.path.realpath(target)):
        return (f"{path} is on a kernel file system ({', '.join(VIRTUAL_ROOTS)}) where files cannot be created; "
                f"choose a folder on a disk, e.g. /var/lib/streamd")
    uid = os.geteuid()
    if os.path.exists(target):
        mode = os.stat(target).st_mode
        if stat.S_ISDIR(mode):
            return f"{path} is a folder; give the path of a file in it, e.g. {os.path.join(path, 'x')}"
        if use == "read":
            if not stat.S_ISREG(mode) or not os.access(target, os.R_OK):
                return f"{path} is not a readable file for this user (uid {uid}); fix its permissions or the path"
            return None
        if not (stat.S_ISREG(mode) or (use == "append" and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)))):
            return f"{path} exists but is not a regular file; remove it or choose another path"
        if not os.access(target, os.W_OK):
            return (f"{path} is not writable by this user (uid {uid}); fix its owner or mode "
                    f"(chown/chmod) or choose another path")
        folder = os.path.dirname(target)
        if use in ("sqlite", "rotate") and not os.access(folder, os.W_OK | os.X_OK):
            return (f"{path}: its folder {folder} is not writable by this user (uid {uid}), which "
                    f"{'SQLite needs for its journal' if use == 'sqlite' else 'rotation needs to rename files'}; "
                    f"fix the folder's owner or mode or choose another path")
        return None
    if use == "read":
        return f"{path} does not exist; give the path of an existing file"
    ancestor = os.path.dirname(target)
    while not os.path.exists(ancestor):
        if os.path.lexists(ancestor):
            return f"{path} cannot be created: {ancestor} is a symbolic link to nothing; fix or remove the link"
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            break
        ancestor = parent
    if not os.path.isdir(ancestor):
        return (f"{path} cannot be created: {ancestor} is a file, not a folder; remove that file or choose "
                f"another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return (f"{path} cannot be created: the folder {ancestor} is not writable by this user (uid {uid}); "
                f"create the folder for this user (e.g. systemd StateDirectory=, a Docker volume) or choose "
                f"another path")
    return None


def _under_virtual(target: str) -> bool:
    return any(target == root or target.startswith(root + "/") for root in VIRTUAL_ROOTS)


def dotted(loc: Loc) -> str:
    """("sinks", 1, "path") -> sinks[1].path"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
