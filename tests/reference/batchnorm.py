"""BatchNorm statistics of a freshly initialised network, re-estimated on real images (reference scripts).

A random-init network's BatchNorm layers still hold mean 0 / var 1, so activations shrink layer by layer and
every output looks alike. A few forward passes in train mode (no gradients) fix that without training.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def recalibrate_batchnorm(model: Any, batches: Iterable[Any]) -> int:
    """Reset every BatchNorm's running mean/var and re-estimate them as the plain average over ``batches``
    (each passed to ``model`` as is); the model is left in eval mode. Returns the number of layers."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every calibration batch
        m.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    model.eval()
    return len(norms)
