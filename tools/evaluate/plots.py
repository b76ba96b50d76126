"""PR curves and confusion matrix as PNG (matplotlib, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pr_curves(curves: dict[int, np.ndarray], names: dict[int, str], out: Path, top: int = 10) -> Path:
    """Precision-recall at IoU 0.5: every class thin, the ``top`` most frequent labelled, the mean bold."""
    plt = _plt()
    recall = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(7, 6))
    valid = {c: p for c, p in curves.items() if np.all(p > -1)}
    for c, p in valid.items():
        ax.plot(recall, p, color="grey", linewidth=0.5, alpha=0.5)
    ranked = sorted(valid, key=lambda c: -float(np.mean(valid[c])))[:top]
    for c in ranked:
        ax.plot(recall, valid[c], linewidth=1.2, label=f"{names[c]} {np.mean(valid[c]):.3f}")
    if valid:
        mean = np.mean(np.stack(list(valid.values())), axis=0)
        ax.plot(recall, mean, color="black", linewidth=2.5, label=f"all classes {np.mean(mean):.3f} mAP@0.5")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title="precision-recall (IoU 0.5)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = out / "pr_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion(matrix: np.ndarray, names: list[str], out: Path) -> Path:
    """Column-normalised (each true class sums to 1); the last row/column is background."""
    plt = _plt()
    labels = [*names, "background"]
    used = np.where((matrix.sum(axis=0) + matrix.sum(axis=1)) > 0)[0]  # hide classes with no boxes at all
    m = matrix[np.ix_(used, used)].astype(float)
    norm = m / np.maximum(m.sum(axis=0, keepdims=True), 1)
    size = max(6.0, 0.28 * len(used) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = [labels[i] for i in used]
    ax.set_xticks(range(len(used)), ticks, rotation=90, fontsize=7)
    ax.set_yticks(range(len(used)), ticks, fontsize=7)
    ax.set(xlabel="true", ylabel="predicted", title="confusion matrix (IoU 0.5, normalised per true class)")
    if len(used) <= 30:
        for i in range(len(used)):
            for j in range(len(used)):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = out / "confusion_matrix.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
