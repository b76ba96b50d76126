"""structlog setup shared by the supervisor and every stage process."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from streamd.redact import redact


_MAX_DEPTH = 8  # deeper nesting in a log field is replaced by its redacted repr


def _redact_values(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        event[key] = redact_value(value)
    return event


def redact_value(value: Any, depth: int = 0) -> Any:
    """``value`` with credentials in every string redacted, also inside lists, tuples, sets and dicts (string keys too).

    Returns new containers (the caller's objects are never changed); numbers, booleans and None pass as they are;
    other objects whose repr would show a credential are replaced by the redacted repr.
    """
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth < _MAX_DEPTH:
        if isinstance(value, dict):
            return {(redact(k) if isinstance(k, str) else k): redact_value(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [redact_value(v, depth + 1) for v in value]
        if isinstance(value, (set, frozenset)):
            return [redact_value(v, depth + 1) for v in sorted(value, key=repr)]
    if isinstance(value, BaseException):
        return redact(str(value))
    text = repr(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def configure_logging(level: str = "info", json: bool | None = None, **bound: Any) -> None:
    """Configure structlog for this process: one event name per line, key=value fields.

    JSON lines when stderr is not a terminal (journald, docker, CI), coloured console otherwise.
    ``bound`` fields (e.g. ``stage="decode"``) are added to every line of this process.
    """
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    if bound:
        structlog.contextvars.bind_contextvars(**bound)
