"""Perceptual hashes (the `imagehash` library) and a bounded near-duplicate filter.

Shared by frame extraction (drop near-identical consecutive frames) and `tools.dataset dedupe`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import imagehash

HashMethod = Literal["phash", "dhash", "ahash", "whash"]
HASH_METHODS: tuple[str, ...] = ("phash", "dhash", "ahash", "whash")


def _hash_function(method: str) -> Callable[..., imagehash.ImageHash]:
    try:
        import imagehash
    except ImportError as exc:  # the `tools` extra
        raise SystemExit("error: near-duplicate detection needs `imagehash`: pip install -e '.[tools]'") from exc
    functions = {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash,
                 "whash": imagehash.whash}
    if method not in functions:
        raise ValueError(f"unknown hash method {method!r}; use one of {', '.join(functions)}")
    return functions[method]


def perceptual_hash(image_bgr: np.ndarray, method: str = "phash") -> imagehash.ImageHash:
    """64-bit perceptual hash of a BGR uint8 image (as OpenCV and PyAV give them)."""
    from PIL import Image

    return _hash_function(method)(Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1])))


class NearDuplicateFilter:
    """Remembers the hashes of the last ``window`` kept images; an image within ``threshold`` bits
    (Hamming distance) of any of them is a near-duplicate.

    The window bounds memory and time on long videos; for a dataset, pass a window as large as it.
    """

    def __init__(self, threshold: int, method: str = "phash", window: int = 1000):
        if threshold < 0:
            raise ValueError("near-duplicate threshold must be >= 0 bits")
        self.threshold = threshold
        self.method = method
        self._hash = _hash_function(method)
        self._kept: deque[tuple[imagehash.ImageHash, str]] = deque(maxlen=window)

    def hash(self, image_bgr: np.ndarray) -> imagehash.ImageHash:
        from PIL import Image

        return self._hash(Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1])))

    def match(self, value: imagehash.ImageHash) -> tuple[str, int] | None:
        """The (name, distance) of the closest remembered image within the threshold, else None."""
        best: tuple[str, int] | None = None
        for kept, name in self._kept:
            distance = int(value - kept)
            if distance <= self.threshold and (best is None or distance < best[1]):
                best = (name, distance)
        return best

    def remember(self, value: imagehash.ImageHash, name: str) -> None:
        self._kept.append((value, name))
