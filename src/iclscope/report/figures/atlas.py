"""Figure pieces of head-atlas results, shared by ``iclscope atlas`` and ``iclscope compare``: how
few-shot accuracy falls as the top heads of each ranking are ablated, and every head's induction score
against its FV score with the top heads of each kind labelled. Colours from ``COLORS`` (induction blue,
FV orange, random grey)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .common import COLORS, color_for, label_points, save_figure


def ablation_panel(ax, df: pd.DataFrame, title: str) -> None:
    """Accuracy (mean over tasks) against the percentage of heads ablated on matplotlib axes ``ax``, one
    line per ranking; random rankings averaged over their seeds with a 95 % band. ``df``: ablation.csv rows
    (ranking, fraction, seed, task, accuracy)."""
    mean = df.groupby(["ranking", "fraction", "seed"]).accuracy.mean().reset_index()
    for name, grp in mean.groupby("ranking"):
        g = grp.groupby("fraction").accuracy
        m = g.mean()
        x = m.index.to_numpy() * 100
        if name == "random":
            s, cnt = g.std(ddof=1), g.count()
            half = 1.96 * s / np.sqrt(cnt.clip(lower=1))
            ax.plot(x, m, color=COLORS["random"], ls="--", label=f"random heads ({int(cnt.max())} seeds, 95 % CI)")
            ax.fill_between(x, m - half, m + half, color=COLORS["random"], alpha=0.2)
        else:
            excl = "excl." in name
            ax.plot(x, m, color=color_for(name), ls="--" if excl else "-", marker="s" if excl else "o",
                    ms=4 if excl else 6, lw=1.2 if excl else 2, label=name)
    ax.set_xlabel("heads ablated (% of all heads)")
    ax.set_ylabel("few-shot accuracy (mean over tasks)")
    ax.set_title(title)
    ax.set_ylim(-0.02, 1.02)
    ax.legend()


def top_set(table: pd.DataFrame, col: str, k: int) -> list[tuple[int, int]]:
    """The ``k`` best heads by ``table[col]`` as (layer, head), best first (NaN last, ties by order)."""
    order = table.assign(_v=table[col].fillna(-np.inf)).sort_values("_v", ascending=False, kind="stable")
    return [(int(a), int(b)) for a, b in order[["layer", "head"]].head(k).to_numpy()]


def induction_fv_scatter(table: pd.DataFrame, path: str | Path, n_layers: int, top_k: int = 3,
                         title: str = "") -> Path:
    """Two panels. Left: every head's induction score (x) against its FV score (y); the top ``top_k``
    heads by induction in blue, by FV in orange (both: half of each), labelled "L3H5"; the others grey.
    Right: the mean of each score per layer against relative depth (layer / (n_layers - 1)), each scaled
    to its largest magnitude. ``table``: heads.csv rows (layer, head, induction, fv)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ind = top_set(table, "induction", top_k)
    fv = top_set(table, "fv", top_k)
    key = list(zip(table.layer.astype(int), table["head"].astype(int)))
    kind = np.array(["both" if h in ind and h in fv else "induction" if h in ind else "fv" if h in fv else "other"
                     for h in key])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10.4, 4.2), gridspec_kw={"width_ratios": [1.35, 1]})
    other = kind == "other"
    a.scatter(table.induction[other], table.fv[other], s=14, color="#b0b0b0", alpha=0.7, lw=0)
    for k, color in (("induction", COLORS["induction"]), ("fv", COLORS["fv"])):
        m = kind == k
        a.scatter(table.induction[m], table.fv[m], s=34, color=color, edgecolor="white", lw=0.5, zorder=3)
    m = kind == "both"
    if m.any():
        a.scatter(table.induction[m], table.fv[m], s=40, color=COLORS["induction"], edgecolor=COLORS["fv"], lw=2,
                  zorder=4)
    a.margins(0.15)
    a.set_xlabel("induction score")
    a.set_ylabel("FV score")
    a.set_title(title or f"every head; the top {top_k} of each kind labelled")
    handles = [Line2D([], [], ls="", marker="o", color=COLORS["induction"], label=f"top {top_k} induction"),
               Line2D([], [], ls="", marker="o", color=COLORS["fv"], label=f"top {top_k} FV"),
               Line2D([], [], ls="", marker="o", color="#b0b0b0", label="other heads")]
    if m.any():
        handles.insert(2, Line2D([], [], ls="", marker="o", color=COLORS["induction"], markeredgecolor=COLORS["fv"],
                                 markeredgewidth=2, label="top in both"))
    a.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(handles), fontsize=9,
             handletextpad=0.2, columnspacing=0.8)
    # label the top heads, best of either kind first
    both = [h for h in ind if h in fv]
    order = list(dict.fromkeys(both + [h for pair in zip(ind, fv) for h in pair] + ind + fv))
    rows = {h: i for i, h in enumerate(key)}
    pts = [rows[h] for h in order if h in rows]
    label_points(a, table.induction.to_numpy()[pts], table.fv.to_numpy()[pts],
                 [f"L{key[i][0]}H{key[i][1]}" for i in pts], max_labels=2 * top_k)
    depth = table.groupby("layer")[["induction", "fv"]].mean()
    rel = depth.index.to_numpy() / max(n_layers - 1, 1)
    for col, name in (("induction", "induction"), ("fv", "FV")):
        v = depth[col].to_numpy()
        b.plot(rel, v / (np.nanmax(np.abs(v)) or 1), marker="o", color=COLORS[col], label=f"{name} (layer mean)")
    b.axhline(0, color=COLORS["chance"], lw=0.6)
    b.set_xlabel("relative depth (0 = first layer, 1 = last)")
    b.set_ylabel("layer mean / its largest magnitude")
    b.set_title("where each kind sits")
    b.legend()
    return save_figure(fig, path)


def score_heatmaps(table: pd.DataFrame, path: str | Path, cols=("induction", "fv", "prev_token"),
                   titles: dict | None = None) -> Path:
    """One (layer x head) heat map per score in ``cols``, side by side with a colour bar each.
    ``table``: heads.csv rows (layer, head, and the columns)."""
    import matplotlib.pyplot as plt

    names = {"induction": "induction score", "fv": "FV score", "prev_token": "previous-token score",
             "duplicate": "duplicate-token score", **(titles or {})}
    L, H = int(table.layer.max()) + 1, int(table["head"].max()) + 1
    fig, axes = plt.subplots(1, len(cols), figsize=(10.4, max(2.8, 0.3 * L + 1.6)), squeeze=False)
    for ax, c in zip(axes[0], cols):
        grid = np.full((L, H), np.nan)
        grid[table.layer.to_numpy(dtype=int), table["head"].to_numpy(dtype=int)] = table[c].to_numpy(dtype=float)
        im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="upper")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        step = max(1, H // 8)
        ax.set_xticks(range(0, H, step))
        ax.set_yticks(range(0, L, max(1, L // 8)))
        ax.set_title(names.get(c, c))
        fig.colorbar(im, ax=ax, shrink=0.9)
    return save_figure(fig, path)


def ablation_wide(abl_sum: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """``ablation_summary`` rows as one row per ablated fraction: percent, k, ``value`` for each ranking,
    and the random heads' interval (CI low / CI high)."""
    wide = abl_sum.pivot_table(index=["percent", "k"], columns="ranking", values=value, sort=False).reset_index()
    wide.columns.name = None
    rnd = abl_sum[abl_sum.ranking == "random"][["percent", "ci_low", "ci_high"]]
    if len(rnd) and rnd.ci_low.notna().any():
        wide = wide.merge(rnd.rename(columns={"ci_low": "random CI low", "ci_high": "random CI high"}), on="percent",
                          how="left")
    return wide.sort_values("percent").reset_index(drop=True)
