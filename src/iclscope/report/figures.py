"""Figures shared by the commands (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def head_heatmap(df: pd.DataFrame, column: str, path: str | Path, title: str = "", cmap: str = "viridis") -> Path:
    """A (layer x head) heat map of ``df[column]``; df has columns layer, head, column."""
    L, H = int(df.layer.max()) + 1, int(df["head"].max()) + 1
    grid = np.full((L, H), np.nan)
    grid[df.layer.to_numpy(), df["head"].to_numpy()] = df[column].to_numpy()
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * H + 2), max(2.5, 0.4 * L + 1.5)))
    im = ax.imshow(grid, cmap=cmap, aspect="auto", origin="upper")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_title(title or column, fontsize=9)
    fig.colorbar(im, ax=ax, label=column)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
