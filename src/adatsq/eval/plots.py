"""Figures (PNG): sample grids, Fisher heatmaps, activation violins, Pareto frontiers, bit maps."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def to_display(image) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) in [0, 1]."""
    x = np.asarray(image, dtype=np.float32)
    return np.clip((x.transpose(1, 2, 0) + 1) / 2, 0, 1)


def sample_grid(rows: dict[str, np.ndarray], prompts: list[str], path: str | Path,
                title: str = "") -> Path:
    """Rows = methods (label -> images (K, 3, H, W)), columns = prompts."""
    k = len(prompts)
    fig, axes = plt.subplots(len(rows), k, figsize=(1.15 * k + 1.2, 1.25 * len(rows) + 0.6),
                             squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(k):
            ax = axes[r, c]
            ax.imshow(to_display(images[c]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(prompts[c], fontsize=6.5, wrap=True)
            if c == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
