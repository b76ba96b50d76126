"""What a reload changes: which streams to start, stop or restart, and which settings need a full restart.

Pure: compares two validated configs. Streams are matched by name; a stream restarts when its own settings
or its pipeline's settings changed. Settings of the shared stages (inference, sinks, counts, supervisor,
api) are not applied live: the daemon keeps the running values and reports them as needing a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamd.config.models import DaemonConfig

# Top-level sections a running daemon cannot change without a restart (documented in README "Reload").
RESTART_SECTIONS = ("sinks", "inference", "supervisor", "counts", "api", "fleet", "log_level")


@dataclass(frozen=True)
class ConfigDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)  # settings or pipeline changed
    pipelines_changed: list[str] = field(default_factory=list)  # pipelines new or changed, used by active streams
    needs_restart: list[str] = field(default_factory=list)  # sections changed that only a restart applies

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.restarted or self.pipelines_changed or self.needs_restart)

    def summary(self) -> dict[str, list[str]]:
        return {k: v for k, v in {
            "added": self.added, "removed": self.removed, "restarted": self.restarted,
            "pipelines_changed": self.pipelines_changed, "needs_restart": self.needs_restart,
        }.items() if v}


def diff_configs(old: DaemonConfig, new: DaemonConfig) -> ConfigDiff:
    old_streams = {s.name: s for s in old.active_streams}
    new_streams = {s.name: s for s in new.active_streams}
    changed_pipelines = sorted(
        name for name, pipeline in new.pipelines.items()
        if old.pipelines.get(name) != pipeline and any(s.pipeline == name for s in new.active_streams)
    )
    added = sorted(set(new_streams) - set(old_streams))
    removed = sorted(set(old_streams) - set(new_streams))
    restarted = sorted(
        name for name in set(old_streams) & set(new_streams)
        if old_streams[name] != new_streams[name] or new_streams[name].pipeline in changed_pipelines
    )
    needs_restart = [section for section in RESTART_SECTIONS if getattr(old, section) != getattr(new, section)]
    return ConfigDiff(added, removed, restarted, changed_pipelines, needs_restart)
