"""Load a daemon config from YAML: ${ENV} substitution, pipeline files, paths, file:line errors."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streamd.config import checks
from streamd.config.models import NAME_PATTERN, SECRET_FIELDS, DaemonConfig, PipelineConfig, source_kind
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
    pipeline_files: tuple[Path, ...] = ()  # pipelines/<name>.yaml files the config uses (watched with it)

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path, *self.pipeline_files)


# Limits on what one config file may make the loader do. A real config is a few KiB with a handful of
# levels; these stop a hostile or corrupt file (an alias bomb, a huge or binary file) before it costs
# seconds or gigabytes, in `validate` and in the running daemon's reload alike.
MAX_CONFIG_BYTES = 1 << 20
"""Largest config (or pipeline) file read, in bytes."""
MAX_YAML_NODES = 250_000
"""Most values (scalars, lists and mappings) one file may hold once its YAML aliases are expanded."""
MAX_YAML_DEPTH = 50
"""Deepest nesting of lists and mappings in one file."""
MAX_PROBLEMS = 50
"""Problems listed in one ConfigError; the rest are counted."""

_TOO_DEEP = f"lists and mappings nested deeper than {MAX_YAML_DEPTH} levels; a streamd config needs fewer than 10"

# libyaml's parser and composer when present (several times faster than the pure-Python ones)
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _BadValue(Exception):
    """A scalar YAML resolved to a type but could not build (2024-13-45, an int of 5000 digits), with its line."""

    def __init__(self, line: int, error: Exception):
        super().__init__(str(error))
        self.line = line


class _Loader(_BaseLoader):
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, ArithmeticError) as exc:
            if node.start_mark is None:
                raise
            raise _BadValue(node.start_mark.line + 1, exc) from exc


def _read_text(path: Path) -> str:
    """The file as text, or a ConfigError that names the file, the line and byte of a bad byte, and the fix."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError([f"{path}: not a regular file; give the path of a YAML config file"])
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: the file is larger than {MAX_CONFIG_BYTES >> 10} KiB, the limit of a config "
                           f"file; is it the right file? (a config needs a few KiB)"])
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ConfigError([f"{path}:{_line_at(raw, nul)}: NUL byte at byte offset {nul}: this is not a text file "
                           f"(a binary, or a corrupt or half-written copy); remove the byte or restore the file"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}:{_line_at(raw, exc.start)}: byte 0x{raw[exc.start]:02x} at byte offset "
                           f"{exc.start} is not UTF-8; save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) "
                           f"or remove that character"]) from None
    return text.removeprefix("\ufeff")


def _line_at(raw: bytes | str, offset: int) -> int:
    if isinstance(raw, bytes):
        return raw.count(b"\n", 0, offset) + 1
    return raw.count("\n", 0, offset) + 1


def _event_line(event: yaml.Event) -> int:
    return event.start_mark.line + 1 if event.start_mark is not None else 1


def _parse(path: Path, text: str, on_node: Callable[[yaml.Node], None]) -> Any:
    """Compose one YAML document, pass its node tree to ``on_node``, construct it; every failure is a ConfigError."""
    try:
        _check_expansion(path, text)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            on_node(node)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise ConfigError([f"{path}:{_line_at(text, exc.position)}: character U+{code:04X} at character offset "
                           f"{exc.position} is not allowed in YAML (a control character); remove it"]) from None
    except _BadValue as exc:
        raise ConfigError([f"{path}:{exc.line}: this value cannot be read: {redact(str(exc))[:200]}; check dates, "
                           f"numbers and !!tags, or quote the value to keep it a string"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if "maximum nesting depth" in problem:  # libyaml's own limit (1000), met while scanning ahead
            raise ConfigError([f"{path}{line}: {_TOO_DEEP}"]) from None
        raise ConfigError([f"{path}{line}: YAML syntax error: {problem}; check indentation and quoting"]) from None
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
        # a scalar that matches a YAML type but cannot be built (2024-13-45, an int of 5000 digits)
        raise ConfigError([f"{path}: a value cannot be read: {redact(str(exc))[:200]}; check dates, numbers and "
                           f"!!tags, or quote the value to keep it a string"]) from None
    return data


def _check_expansion(path: Path, text: str) -> None:
    """Count what the document expands to (aliases included) from the parser's events, before composing it.

    One streaming pass, no tree built: each alias adds the size of the node it names, so 397 bytes of nested
    aliases (millions of values) are refused at the line where the count passes MAX_YAML_NODES.
    """
    loader = _Loader(text)
    try:
        count = 0
        sizes: dict[str, int] = {}  # anchor -> how many values its node expands to
        open_nodes: list[tuple[int, str | None]] = []  # (count when it started, anchor) of each open collection
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                open_nodes.append((count, event.anchor))
                count += 1
                if len(open_nodes) > MAX_YAML_DEPTH:
                    raise ConfigError([f"{path}:{_event_line(event)}: {_TOO_DEEP}"])
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                start, anchor = open_nodes.pop()
                if anchor is not None:
                    sizes[anchor] = count - start
            elif isinstance(event, yaml.ScalarEvent):
                count += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent) and event.anchor is not None:
                if any(anchor == event.anchor for _, anchor in open_nodes):
                    raise ConfigError([f"{path}:{_event_line(event)}: alias *{event.anchor} is inside the "
                                       f"block &{event.anchor} it names (a recursive structure); remove it"])
                count += sizes.get(event.anchor, 1)
            if count > MAX_YAML_NODES:
                raise ConfigError([f"{path}:{_event_line(event)}: the document expands to more than "
                                   f"{MAX_YAML_NODES} values (each *alias repeats the whole block its &anchor names, "
                                   f"so nested aliases multiply); a streamd config needs far fewer: remove the "
                                   f"nested aliases or split the file"])
    finally:
        loader.dispose()


class _Document:
    """One YAML file parsed into plain data plus the source line of every key and item."""

    def __init__(self, path: Path, env: dict[str, str]):
        self.path = path
        self.where: dict[Loc, Where] = {}
        self.problems: list[str] = []
        # indexed before construction, which rewrites merge keys (<<: *base) into the mapping's own keys
        data = _parse(path, _read_text(path), lambda node: self._index(node, ()))
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

            # no ${...} can end after the last '}': scanning there would be quadratic in hostile values
            end = value.rfind("}") + 1
            return _ENV.sub(_replace, value[:end]) + value[end:]
        return value

    def line_of(self, loc: Loc) -> str:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.where:
                return str(self.where[loc[:end]])
        return str(self.path)


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None, *,
                check_paths: bool = True) -> LoadedConfig:
    """Read, substitute, merge pipeline files, resolve paths and validate. Raises ConfigError, nothing else.

    ``check_paths`` also checks that every file the daemon writes (counts store, JSONL sinks, outboxes) can be
    created there (streamd.config.checks); turn it off for read-only uses such as `streamd counts`.
    """
    path = Path(path)
    env = dict(os.environ) if env is None else env
    try:
        path = path.absolute()
        return _load(path, env, check_paths)
    except ConfigError as exc:
        if len(exc.problems) > MAX_PROBLEMS:
            more = len(exc.problems) - MAX_PROBLEMS
            raise ConfigError(exc.problems[:MAX_PROBLEMS] + [f"... and {more} more problem(s)"]) from None
        raise
    except Exception as exc:  # noqa: BLE001 - a reload must never die of a file it cannot read
        raise ConfigError([f"{path}: cannot load the config: {type(exc).__name__}: {redact(str(exc))[:300]} "
                           f"(a streamd bug: please report it with the file)"]) from exc


def _load(path: Path, env: dict[str, str], check_paths: bool) -> LoadedConfig:
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
        for i, stream in enumerate(_list(data.get("streams"))):
            if not isinstance(stream, dict) or not isinstance(stream.get("pipeline"), str):
                continue
            name = stream["pipeline"]
            if name in pipelines or name in docs or not re.fullmatch(NAME_PATTERN, name):
                continue  # an invalid name is reported by validation; it never becomes a file name
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
    for i, stream in enumerate(_list(data.get("streams"))):
        name = stream.get("name") if isinstance(stream, dict) else None
        if isinstance(name, str):
            if name in seen_names:
                problems.append(f"{main.line_of(('streams', i, 'name'))}: streams[{i}].name: stream name '{name}' "
                                f"is already used by streams[{seen_names[name]}]; stream names must be unique")
            seen_names.setdefault(name, i)
    for stream in _list(data.get("streams")):
        if isinstance(stream, dict) and isinstance(stream.get("url"), str) and source_kind(stream["url"]) == "file":
            stream["url"] = _resolve(stream["url"], path.parent)
    counts = data.get("counts")
    if counts is None:
        counts = data["counts"] = {}
    if isinstance(counts, dict):
        if counts.get("path") is None:
            counts["path"] = default_counts_path(path.parent, env)
        elif isinstance(counts["path"], str):
            counts["path"] = _resolve(counts["path"], path.parent)  # anything else: validation reports its type
    for sink in _list(data.get("sinks")):
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
    if check_paths:
        path_problems = checks.check_paths(config)
        if path_problems:
            raise ConfigError([f"{main.line_of(p.loc)}: {p}" for p in path_problems])
    return LoadedConfig(config=config, path=path, pipeline_files=tuple(sorted({d.path for d in docs.values()})))


def _list(value: Any) -> list[Any]:
    """``value`` when it is a list, else [] (validation reports the wrong type with its line)."""
    return value if isinstance(value, list) else []


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
    if err["type"] in ("missing", "extra_forbidden"):
        pass
    elif any(part in SECRET_FIELDS for part in parts):
        suffix = " (value hidden)"  # a password or token, whatever its type or length, is never echoed
    elif not isinstance(got, (dict, list)):
        shown = redact(repr(got))
        suffix = f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
    return f"{doc.line_of(doc_loc)}: {_dotted(tuple(loc))}: {message}{suffix}"


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
