"""The ONNX metadata streamd configures itself from (adapter, input size, precision, names): read and write."""

from __future__ import annotations

from pathlib import Path

import onnx


def read_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's metadata (key -> value), without loading external weight data."""
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Add or replace metadata entries of a loaded model."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value


def stamp(path: str | Path, values: dict[str, str]) -> None:
    """Add or replace metadata entries of the file at ``path``."""
    model = onnx.load(str(path))
    set_metadata(model, values)
    onnx.save(model, str(path))
