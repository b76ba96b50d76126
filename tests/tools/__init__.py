"""Tests of the model tools (tools/). Their optional libraries come with the `tools` extra."""

from __future__ import annotations

import importlib.util

from tests.conftest import require


def needs(*modules: str) -> None:
    """Skip (fail under STREAMD_STRICT=1) when a library of the `tools` extra is missing."""
    for module in modules:
        require(importlib.util.find_spec(module) is not None,
                f"{module} is not installed: pip install -e '.[tools]'")
