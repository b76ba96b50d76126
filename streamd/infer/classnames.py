"""Class-name lookup that accepts the common spellings of COCO names (darknet vs. ultralytics/torchvision)."""

from __future__ import annotations

_SYNONYMS = [
    {"motorcycle", "motorbike"},
    {"airplane", "aeroplane"},
    {"couch", "sofa"},
    {"tv", "tvmonitor", "tv monitor"},
    {"dining table", "diningtable"},
    {"potted plant", "pottedplant"},
    {"cell phone", "cellphone", "mobile phone"},
]


def class_index(names: list[str]) -> dict[str, int]:
    """Name -> class id for ``names``, plus every synonym of a name the model does not spell the same way."""
    index = {name: i for i, name in enumerate(names)}
    for group in _SYNONYMS:
        present = [index[n] for n in group if n in index]
        if present:
            for alias in group:
                index.setdefault(alias, present[0])
    return index
