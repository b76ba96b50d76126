"""Load a daemon config from YAML: ${ENV} substitution, pipeline files, paths, file:line errors."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streamd.config.models import DaemonConfig, PipelineConfig, source_kind
from streamd.errors import ConfigError
from streamd.redact import redact

_ENV = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Where:
    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class LoadedConfig:
    config: DaemonConfig
    path: Path


class _Document:
    """One YAML file parsed into plain data plus the source line of every key and item."""

    def __init__(self, path: Path, env: dict[str, str]):
        self.path = path
        self.where: dict[Loc, Where] = {}
        self.problems: list[str] = []
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from exc
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([f"{path}{line}: YAML syntax error: {problem}; check indentation and quoting"]) from exc
        finally:
            loader.dispose()
        if node is not None:
            self._index(node, ())
        self.data = self._substitute(data, (), env)

    def _index(self, node: yaml.Node, loc: Loc) -> None:
        self.where[loc] = Where(self.path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    self.problems.append(
                        f"{self.path}:{key_node.start_mark.line + 1}: key '{key}' appears twice in the same block; keep one"
                    )
                seen.add(key)
                self.where[loc + (key,)] = Where(self.path, key_node.start_mark.line + 1)
                self._index(value_node, loc + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, loc + (i,))

    def _substitute(self, value: Any, loc: Loc, env: dict[str, str]) -> Any:
        if isinstance(value, dict):
            return {k: self._substitute(v, loc + (str(k),), env) for k, v in value.items()}
        if isinstance(value, list):
            return [self._substitute(v, loc + (i,), env) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:

            def _replace(m: re.Match[str]) -> str:
                name, default = m.group("name"), m.group("default")
                if name in env:
                    return env[name]
                if default is not None:
                    return default
                self.problems.append(
                    f"{self.line_of(loc)}: {_dotted(loc)}: environment variable {name} is not set; "
                    f"export it or write ${{{name}:-default}}"
                )
                return ""

            return _ENV.sub(_replace, value)
        return value

    def line_of(self, loc: Loc) -> str:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.where:
                return str(self.where[loc[:end]])
        return str(self.path)


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> LoadedConfig:
    """Read, substitute, merge pipeline files, resolve paths and validate. Raises ConfigError."""
    path = Path(path).absolute()
    env = dict(os.environ) if env is None else env
    main = _Document(path, env)
    problems = list(main.problems)
    data = main.data
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: the file must be a mapping with at least a `streams:` list"])
    docs: dict[str, _Document] = {}  # pipeline name -> the document that defines it, when a separate file
    pipelines = data.get("pipelines") or {}
    if isinstance(pipelines, dict):
        for name, pipe in pipelines.items():
            _resolve_paths_in_pipeline(pipe, path.parent)
        for i, stream in enumerate(data.get("streams") or []):
            if not isinstance(stream, dict) or not isinstance(stream.get("pipeline"), str):
                continue
            name = stream["pipeline"]
            if name in pipelines or name in docs:
                continue
            found = _find_pipeline_file(name, path.parent)
            if found is None:
                problems.append(
                    f"{main.line_of(('streams', i, 'pipeline'))}: streams[{i}].pipeline: pipeline '{name}' is not "
                    f"defined; add it under `pipelines:` or create pipelines/{name}.yaml "
                    f"(known: {', '.join(sorted(pipelines)) or 'none'})"
                )
                continue
            doc = _Document(found, env)
            problems.extend(doc.problems)
            _resolve_paths_in_pipeline(doc.data, found.parent)
            docs[name] = doc
            pipelines[name] = doc.data
        data["pipelines"] = pipelines
    seen_names: dict[str, int] = {}
    for i, stream in enumerate(data.get("streams") or []):
        name = stream.get("name") if isinstance(stream, dict) else None
        if isinstance(name, str):
            if name in seen_names:
                problems.append(f"{main.line_of(('streams', i, 'name'))}: streams[{i}].name: stream name '{name}' "
                                f"is already used by streams[{seen_names[name]}]; stream names must be unique")
            seen_names.setdefault(name, i)
    for stream in data.get("streams") or []:
        if isinstance(stream, dict) and isinstance(stream.get("url"), str) and source_kind(stream["url"]) == "file":
            stream["url"] = _resolve(stream["url"], path.parent)
    counts = data.get("counts")
    if counts is None:
        counts = data["counts"] = {}
    if isinstance(counts, dict):
        counts["path"] = _resolve(counts["path"], path.parent) if isinstance(counts.get("path"), str) \
            else default_counts_path(path.parent, env)
    for sink in data.get("sinks") or []:
        if not isinstance(sink, dict):
            continue
        if sink.get("type") == "jsonl" and isinstance(sink.get("path"), str):
            sink["path"] = _resolve(sink["path"], path.parent)
        if isinstance(sink.get("ca_file"), str):
            sink["ca_file"] = _resolve(sink["ca_file"], path.parent)
        outbox = sink.get("outbox")
        if isinstance(outbox, dict) and isinstance(outbox.get("path"), str):
            outbox["path"] = _resolve(outbox["path"], path.parent)
    if problems:
        raise ConfigError(problems)
    try:
        config = DaemonConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(err, data, main, docs) for err in exc.errors()]) from None
    return LoadedConfig(config=config, path=path)


def _find_pipeline_file(name: str, config_dir: Path) -> Path | None:
    for folder in (config_dir / "pipelines", config_dir.parent / "pipelines", Path.cwd() / "pipelines"):
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def default_counts_path(config_dir: Path, env: dict[str, str]) -> str:
    """The state directory systemd gives the service ($STATE_DIRECTORY), else state/ beside the config file."""
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.join(state, "counts.db") if state else os.path.normpath(config_dir / "state" / "counts.db")


def _resolve(value: str, base: Path) -> str:
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else os.path.normpath(base / expanded)


def _resolve_paths_in_pipeline(pipe: Any, base: Path) -> None:
    if isinstance(pipe, dict):
        for key in ("model", "labels"):
            if isinstance(pipe.get(key), str):
                pipe[key] = _resolve(pipe[key], base)


def _describe(err: Any, data: Any, main: _Document, docs: dict[str, _Document]) -> str:
    # Drop loc parts that are not real keys (tagged-union names such as 'jsonl').
    loc: list[str | int] = []
    node = data
    parts = list(err["loc"])
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
            loc.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            loc.append(part)
        elif i == len(parts) - 1 and err["type"] in ("missing", "extra_forbidden"):
            loc.append(part)
    doc, doc_loc = main, tuple(loc)
    if len(loc) >= 2 and loc[0] == "pipelines" and loc[1] in docs:
        doc, doc_loc = docs[str(loc[1])], tuple(loc[2:])
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key; remove it or check its spelling"
        if len(loc) >= 3 and loc[0] == "pipelines":
            message += f" (allowed: {', '.join(PipelineConfig.model_fields)})"
    elif err["type"] == "missing":
        message = "required key is missing"
    got = err.get("input")
    suffix = ""
    if err["type"] not in ("missing", "extra_forbidden") and not isinstance(got, (dict, list)):
        suffix = f" (got {redact(repr(got))})"
    return f"{doc.line_of(doc_loc)}: {_dotted(tuple(loc))}: {message}{suffix}"


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
