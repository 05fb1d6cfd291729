"""What every figure needs: writing a figure, the (layer x head) heat map, side-by-side panels, and a
model name short enough for a title."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ... import store


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out, write as a PNG (dpi 120) and close ``fig``; returns the path. Written atomically
    (``store.write_bytes``: temp file, fsync, rename), so a killed run never leaves half a PNG."""
    path = Path(path)
    try:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    finally:
        plt.close(fig)
    return store.write_bytes(path, buf.getvalue(), kind="figure")


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
    return save_figure(fig, path)


def line_panels(path: str | Path, panels: list[dict]) -> Path:
    """Side-by-side panels. Each: title, x, xlabel, series {label: y}, optional kind="bar", logy,
    ylim, err (error bars for a single series)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        x = np.asarray(list(p["x"]))
        series = p["series"]
        if p.get("kind") == "bar":
            w = 0.8 / len(series)
            for j, (label, y) in enumerate(series.items()):
                ax.bar(np.arange(len(x)) + (j - (len(series) - 1) / 2) * w, np.asarray(list(y)), w, label=label)
            ax.set_xticks(np.arange(len(x)))
            ax.set_xticklabels([str(v) for v in x])
        else:
            for label, y in series.items():
                ax.errorbar(x, np.asarray(list(y), dtype=float), yerr=p.get("err"), marker="o", label=label, capsize=3)
        if p.get("logy"):
            ax.set_yscale("log")
        if p.get("ylim"):
            ax.set_ylim(*p["ylim"])
        ax.set_title(p.get("title", ""), fontsize=10)
        ax.set_xlabel(p.get("xlabel", ""))
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def short_name(spec) -> str:
    """A model spec short enough for a figure title: the last two path parts of an existing path, else the
    spec as given (a hub name)."""
    p = Path(str(spec))
    return "/".join(p.parts[-2:]) if p.exists() else str(spec)
