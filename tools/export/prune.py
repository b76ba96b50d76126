"""Global magnitude pruning of a torch detector before ONNX export.

The smallest ``amount`` of all convolution and linear weights (by absolute value, ranked across the whole
network, so layers with many small weights lose more) are set to zero with torch's own pruning utilities,
then made permanent. Dense ONNX Runtime kernels run a pruned model at the same speed: what pruning buys
is a file that compresses by about the pruned fraction, and a starting point for sparse runtimes or
fine-tuning. The export's accuracy gate decides whether the pruned model may ship.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def prune_magnitude(model: Any, amount: float) -> float:
    """Zero the ``amount`` fraction of smallest-magnitude conv/linear weights of ``model`` in place.

    Returns the fraction of those weights that are zero afterwards.
    """
    import torch
    from torch.nn.utils import prune

    if not 0.0 < amount < 1.0:
        raise ValueError(f"--prune must be between 0 and 1 (the fraction of weights to zero), got {amount}")
    layers = [(m, "weight") for m in model.modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and getattr(m, "weight", None) is not None]
    if not layers:
        raise ValueError("the model has no Conv2d or Linear weights to prune")
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in layers:
        prune.remove(module, name)  # bake the mask into the weight so export sees plain tensors
    total = sum(m.weight.numel() for m, _ in layers)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in layers)
    return zeros / total


def onnx_sparsity(path: str) -> float:
    """Fraction of zero values among an ONNX file's float weight initialisers of rank >= 2 (conv/gemm weights)."""
    import onnx
    from onnx import numpy_helper

    zeros = total = 0
    for init in onnx.load(path).graph.initializer:
        if len(init.dims) < 2 or init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        values = numpy_helper.to_array(init)
        zeros += int(np.count_nonzero(values == 0))
        total += values.size
    return zeros / max(total, 1)


def compressed_mb(path: str) -> float:
    """The file's size after zlib compression: what a pruned model saves on disk and over the wire."""
    import zlib
    from pathlib import Path

    return len(zlib.compress(Path(path).read_bytes(), 6)) / 1e6
