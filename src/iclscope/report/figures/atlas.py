"""Figure pieces of head-atlas results, shared by ``iclscope atlas`` and ``iclscope compare``: how
few-shot accuracy falls as the top heads of each ranking are ablated."""

from __future__ import annotations

import numpy as np
import pandas as pd


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
            ax.plot(x, m, color="grey", ls="--", label=f"random heads ({int(cnt.max())} seeds, 95 % CI)")
            ax.fill_between(x, m - half, m + half, color="grey", alpha=0.2)
        else:
            color = "tab:orange" if name.startswith("fv") else "tab:blue"
            excl = "excl." in name
            ax.plot(x, m, color=color, ls="--" if excl else "-", marker="s" if excl else "o",
                    ms=4 if excl else 6, lw=1.2 if excl else 2, label=name)
    ax.set_xlabel("heads ablated (% of all heads)")
    ax.set_ylabel("few-shot accuracy (mean over tasks)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
