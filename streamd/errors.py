"""Exception hierarchy. Every message says what failed, where, and what to do about it."""

from __future__ import annotations


class StreamdError(Exception):
    """Base class of every error streamd raises on purpose."""


class ConfigError(StreamdError):
    """A configuration file is invalid. Carries one line per problem, each with file:line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class ModelError(StreamdError):
    """A model file cannot be loaded or its outputs cannot be interpreted."""


class SourceError(StreamdError):
    """A video source cannot be opened or read. Messages carry redacted URLs only."""


class RingError(StreamdError):
    """A shared-memory frame ring is missing, corrupt or was created with another layout."""
