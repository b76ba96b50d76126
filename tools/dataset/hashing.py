"""Perceptual hashes (the `imagehash` library) and a bounded near-duplicate filter.

Shared by frame extraction (drop near-identical consecutive frames) and `tools.dataset dedupe`.
"""

from __future__ import annotations

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


def hash_bits(value: imagehash.ImageHash) -> int:
    """A 64-bit hash as one unsigned integer (for vectorised Hamming distances)."""
    bits = np.asarray(value.hash, dtype=bool).reshape(-1)
    if bits.size != 64:
        raise ValueError(f"expected a 64-bit hash, got {bits.size} bits; use hash size 8")
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


class NearDuplicateFilter:
    """Remembers the hashes of the last ``window`` kept images; an image within ``threshold`` bits
    (Hamming distance) of any of them is a near-duplicate.

    The window bounds memory and time on long videos; for a dataset, pass a window as large as it.
    Distances are computed for the whole window at once (numpy popcount), so 100k images stay fast.
    """

    def __init__(self, threshold: int, method: str = "phash", window: int = 1000):
        if threshold < 0:
            raise ValueError("near-duplicate threshold must be >= 0 bits")
        if window < 1:
            raise ValueError("near-duplicate window must be >= 1")
        self.threshold = threshold
        self.method = method
        self._hash = _hash_function(method)
        self._values = np.zeros(window, np.uint64)
        self._names: list[str] = [""] * window
        self._count = 0  # total remembered; the ring holds the last `window`

    def hash(self, image_bgr: np.ndarray) -> imagehash.ImageHash:
        from PIL import Image

        return self._hash(Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1])))

    def match(self, value: imagehash.ImageHash) -> tuple[str, int] | None:
        """The (name, distance) of the closest remembered image within the threshold, else None."""
        n = min(self._count, len(self._values))
        if n == 0:
            return None
        distances = np.bitwise_count(self._values[:n] ^ np.uint64(hash_bits(value)))
        best = int(distances.argmin())
        if int(distances[best]) > self.threshold:
            return None
        return self._names[best], int(distances[best])

    def remember(self, value: imagehash.ImageHash, name: str) -> None:
        slot = self._count % len(self._values)
        self._values[slot] = np.uint64(hash_bits(value))
        self._names[slot] = name
        self._count += 1
