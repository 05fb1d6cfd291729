"""What every figure needs: one style, consistent colours, writing a figure, the (layer x head) heat map,
side-by-side panels, head labels on scatter plots, a heads axis beside a percent axis, and a model name
short enough for a title.

Style. Importing this module applies ``STYLE`` (matplotlib rcParams): fonts readable where the report
shows the figure (ticks >= 9 pt at 100 % width), constrained layout (titles and labels never cut), light
grid, no top/right spines, and a colour cycle that avoids the reserved colours. ``COLORS`` maps the kinds
of heads and baselines to one colour each, everywhere: induction blue, FV orange, random grey.
``save_figure`` additionally wraps titles longer than their axes and raises any text smaller than the
readable size (scaled up for figures wider than the report's column, which the page shrinks to fit).
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from cycler import cycler

from ... import store

#: One colour per kind of head / baseline, used by every figure (matplotlib colour strings).
COLORS = {
    "induction": "#1f77b4",       # blue
    "fv": "#ff7f0e",              # orange
    "random": "#808080",          # grey
    "prev_token": "#2ca02c",      # green
    "duplicate": "#9467bd",       # purple
    "phase_change": "#d62728",    # crimson
    "chance": "#000000",
}
COLORS["FV"] = COLORS["fv"]
#: Colours for anything else (runs, tasks, layers): none of them is a reserved colour above.
CYCLE = ["#17becf", "#8c564b", "#e377c2", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173"]
REPORT_COLUMN_IN = 10.4   # the report's text column in inches at 96 CSS px per inch (1000 px)
MIN_FONT_PT = 9.0         # the smallest text at 100 % width

STYLE = {
    "font.size": 10.5,
    "axes.titlesize": 11.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 10.5,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": 9.5,
    "legend.frameon": False,
    "figure.titlesize": 12.5,
    "figure.constrained_layout.use": True,
    "figure.dpi": 100,
    "savefig.dpi": 120,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "axes.prop_cycle": cycler(color=CYCLE),
    "image.cmap": "viridis",
}


def use_style() -> None:
    """Apply ``STYLE`` to matplotlib (done on import; call again after ``plt.rcdefaults()``)."""
    mpl.rcParams.update(STYLE)


use_style()


def color_for(name: str) -> str:
    """The reserved colour of a ranking or series name by its kind ("fv excl. induction" -> FV's orange,
    "random heads" -> grey), else the first cycle colour."""
    n = str(name).lower().replace("-", "_").replace(" ", "_")
    for key in ("random", "fv", "induction", "prev_token", "duplicate"):
        if n.startswith(key):
            return COLORS[key]
    return CYCLE[0]


def _readable(fig) -> None:
    """Wrap titles longer than their axes; raise text below the readable size at the page's width."""
    from matplotlib.text import Text
    w_in = fig.get_figwidth()
    min_pt = MIN_FONT_PT * max(1.0, w_in / REPORT_COLUMN_IN)
    for ax in fig.axes:
        labels = ax.get_xticklabels() + ax.get_yticklabels()
        size = labels[0].get_fontsize() if labels else mpl.rcParams["xtick.labelsize"]
        size = size if isinstance(size, (int, float)) else MIN_FONT_PT
        if size < min_pt:
            ax.tick_params(axis="both", which="both", labelsize=min_pt)
        if ax.images:  # a grid over a heat map hides its cells
            ax.grid(False)
        width_in = ax.get_position().width * w_in
        for t in (ax.title, ax._left_title, ax._right_title):
            _wrap(t, width_in)
    if getattr(fig, "_suptitle", None) is not None:
        _wrap(fig._suptitle, w_in)
    for t in fig.findobj(Text):
        if t.get_text() and t.get_fontsize() < min_pt:
            t.set_fontsize(min_pt)


def _wrap(t, width_in: float) -> None:
    text = t.get_text()
    if not text or "\n" in text:
        return
    chars = max(12, int(width_in * 72 / (0.56 * t.get_fontsize())))
    if len(text) > chars:
        t.set_text(textwrap.fill(text, chars))


def figure_png(fig, dpi: int = 120, close: bool = True) -> bytes:
    """``fig`` as PNG bytes in the shared look (constrained layout, readable fonts, wrapped titles,
    nothing cut: bbox tight); closes the figure unless ``close=False``."""
    try:
        if fig.get_layout_engine() is None:
            fig.set_layout_engine("constrained")
        _readable(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.06, facecolor="white")
    finally:
        if close:
            plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out, write as a PNG (dpi 120) and close ``fig``; returns the path. Written atomically
    (``store.write_bytes``: temp file, fsync, rename), so a killed run never leaves half a PNG. Other
    suffixes (.svg, .pdf) are written in that format with the same layout."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt == "png":
        return store.write_bytes(path, figure_png(fig, dpi), kind="figure")
    try:
        if fig.get_layout_engine() is None:
            fig.set_layout_engine("constrained")
        _readable(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.06)
    finally:
        plt.close(fig)
    return store.write_bytes(path, buf.getvalue(), kind="figure")


def label_points(ax, xs, ys, labels, max_labels: int | None = 12, fontsize: float | None = None) -> list:
    """Label points of a scatter plot (e.g. heads as "L3H5") without labels covering each other: each
    label takes the first of eight offsets around its point whose box stays inside the axes and overlaps
    no label placed before nor the legend (draw the legend first); a label with no free place is left out. With ``max_labels``, only the first that many are labelled
    (pass the points in order of interest). Returns the placed annotations.

    xs, ys: (n,) data coordinates; labels: (n,) strings."""
    xs, ys = np.asarray(list(xs), dtype=float), np.asarray(list(ys), dtype=float)
    labels = [str(s) for s in labels]
    if not (len(xs) == len(ys) == len(labels)):
        from ...errors import IclscopeError
        raise IclscopeError(f"label_points: xs, ys and labels differ in length ({len(xs)}, {len(ys)}, {len(labels)})")
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    size = fontsize or max(MIN_FONT_PT, mpl.rcParams["xtick.labelsize"] if isinstance(
        mpl.rcParams["xtick.labelsize"], (int, float)) else MIN_FONT_PT)
    offsets = [(5, 5), (5, -12), (-5, 5), (-5, -12), (0, 9), (0, -15), (9, -3), (-9, -3)]
    frame = ax.get_window_extent(renderer)
    legend = ax.get_legend()
    placed, boxes = [], [legend.get_window_extent(renderer)] if legend is not None else []
    for i, (x, y, text) in enumerate(zip(xs, ys, labels)):
        if max_labels is not None and len(placed) >= max_labels:
            break
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        for dx, dy in offsets:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=size,
                              ha="left" if dx > 0 else "right" if dx < 0 else "center", va="bottom" if dy > 0 else "top",
                              bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
                              arrowprops=None, annotation_clip=True)
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            inside_axes = (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1)
            if inside_axes and not any(box.overlaps(b) for b in boxes):
                boxes.append(box)
                placed.append(ann)
                break
            ann.remove()
    return placed


def heads_and_percent_axis(ax, n_heads_total: int, axis: str = "x", label: str | None = None):
    """Beside a percent-of-heads axis (0-100 on ``ax``'s ``axis``), a secondary axis in numbers of heads
    (on top for x, right for y): "10 %" and "14 heads" for a model of 144 heads. Returns the secondary
    axis."""
    n = int(n_heads_total)
    if n <= 0:
        from ...errors import IclscopeError
        raise IclscopeError(f"heads_and_percent_axis: n_heads_total must be positive, got {n_heads_total}")
    fwd, inv = (lambda p: np.asarray(p) * n / 100.0), (lambda h: np.asarray(h) * 100.0 / n)
    sec = (ax.secondary_xaxis("top", functions=(fwd, inv)) if axis == "x"
           else ax.secondary_yaxis("right", functions=(fwd, inv)))
    (sec.set_xlabel if axis == "x" else sec.set_ylabel)(label or f"heads (of {n})")
    from matplotlib.ticker import MaxNLocator
    (sec.xaxis if axis == "x" else sec.yaxis).set_major_locator(MaxNLocator(integer=True, nbins=6))
    return sec


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
    ax.set_title(title or column)
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
                ax.bar(np.arange(len(x)) + (j - (len(series) - 1) / 2) * w, np.asarray(list(y)), w, label=label,
                       **_kind_color(label))
            ax.set_xticks(np.arange(len(x)))
            ax.set_xticklabels([str(v) for v in x])
        else:
            for label, y in series.items():
                ax.errorbar(x, np.asarray(list(y), dtype=float), yerr=p.get("err"), marker="o", label=label, capsize=3,
                            **_kind_color(label))
        if p.get("logy"):
            ax.set_yscale("log")
        if p.get("ylim"):
            ax.set_ylim(*p["ylim"])
        ax.set_title(p.get("title", ""))
        ax.set_xlabel(p.get("xlabel", ""))
        ax.legend()
    return save_figure(fig, path)


def _kind_color(label) -> dict:
    """``{"color": ...}`` for a series named after a reserved kind (induction, FV, random), else {}."""
    c = color_for(label)
    return {"color": c} if c != CYCLE[0] else {}


def short_name(spec) -> str:
    """A model spec short enough for a figure title: the last two path parts of an existing path, else the
    spec as given (a hub name)."""
    p = Path(str(spec))
    return "/".join(p.parts[-2:]) if p.exists() else str(spec)
