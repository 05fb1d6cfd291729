"""How the heads and accuracy change over training, drawn: score trajectories of the final top heads,
(checkpoint x head) heat maps, accuracy at each checkpoint (and the training run's own evaluation
conditions), and the role-transition paths with their random baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...report.figures import save_figure
from ...report.figures.common import COLORS, label_points

# a testbed run's evaluation conditions (columns of its metrics.csv) and their labels
METRIC_LABELS = {"stored_repeat_acc": "stored task, repeated query",
                 "stored_novel_acc": "stored task, novel query (FV route)",
                 "fresh_repeat_acc": "fresh mapping, repeated query (copying)",
                 "conflict_acc": "conflict: the task's answer wins over the copied label"}


def _x(long_or_ck: pd.DataFrame) -> tuple[str, str]:
    """The column for the x axis and its label: step when every checkpoint has one, else order."""
    if long_or_ck.step.notna().all():
        return "step", "training step"
    return "order", "checkpoint (in the given order)"


def trajectories_figure(long: pd.DataFrame, top: int, path: Path, title: str = "") -> Path:
    """The induction, FV and previous-token scores of the final top-``top`` heads of each kind at every
    checkpoint (FV with a band of its spread over tasks)."""
    import matplotlib.pyplot as plt

    xcol, xlabel = _x(long)
    last = long[long.order == long.order.max()]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, col in zip(axes, ("induction", "fv", "prev_token")):
        best = last.sort_values(col, ascending=False, kind="stable").head(top)
        for _, r in best.iterrows():
            d = long[(long.layer == r.layer) & (long["head"] == r["head"])].sort_values("order")
            ax.plot(d[xcol], d[col], marker="o", ms=3, label=f"L{int(r.layer)}H{int(r['head'])}")
            if col == "fv" and "fv_task_std" in d:
                ax.fill_between(d[xcol], d[col] - d.fv_task_std, d[col] + d.fv_task_std, alpha=0.12)
        if xcol == "step":
            ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{col} score")
        ax.set_title(f"{col}: the final top-{top} heads" + (" (band: spread over tasks)" if col == "fv" else ""),
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def heatmaps_figure(long: pd.DataFrame, path: Path, title: str = "") -> Path:
    """(checkpoint x head) heat maps of the induction, FV and previous-token scores."""
    import matplotlib.pyplot as plt

    cols = ("induction", "fv", "prev_token")
    ck = long.groupby("order").first().sort_index()
    labels = [f"{int(s)}" if pd.notna(s) else n for s, n in zip(ck.step, ck.checkpoint)]
    heads = long[["layer", "head"]].drop_duplicates().sort_values(["layer", "head"])
    hl = [f"L{int(a)}H{int(b)}" for a, b in heads.to_numpy()]
    fig, axes = plt.subplots(1, 3, figsize=(max(12, 0.3 * len(hl) * 3 + 4), max(3.5, 0.22 * len(ck) + 1.5)))
    for ax, col in zip(axes, cols):
        g = long.pivot_table(index="order", columns=["layer", "head"], values=col).sort_index()
        im = ax.imshow(g.to_numpy(), aspect="auto", cmap="magma" if col == "fv" else "viridis", interpolation="nearest")
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=6)
        step = max(1, len(hl) // 32)
        ax.set_xticks(range(0, len(hl), step))
        ax.set_xticklabels(hl[::step], rotation=90, fontsize=6)
        ax.set_xlabel("head")
        ax.set_ylabel("training step" if ck.step.notna().all() else "checkpoint")
        ax.set_title(f"{col} score", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def accuracy_figure(ck: pd.DataFrame, path: Path, metrics: pd.DataFrame | None = None, title: str = "") -> Path:
    """Few-shot accuracy at each checkpoint (evaluation tasks; copying prompts), and, for a training-lab
    run, the run's own evaluation conditions from metrics.csv (finer in steps)."""
    import matplotlib.pyplot as plt

    xcol, xlabel = _x(ck)
    n = 2 if metrics is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4), squeeze=False)
    a = axes[0][0]
    a.plot(ck[xcol], ck.accuracy, marker="o", label="few-shot accuracy (evaluation tasks)")
    if "copy_accuracy" in ck and ck.copy_accuracy.notna().any():
        a.plot(ck[xcol], ck.copy_accuracy, marker="s", label="copying prompts (fresh mapping, repeated query)")
    if xcol == "step":
        a.set_xscale("symlog", linthresh=1)
    a.set_xlabel(xlabel)
    a.set_ylabel("first-token accuracy")
    a.set_ylim(-0.02, 1.02)
    a.set_title("at each analysed checkpoint", fontsize=9)
    a.legend(fontsize=8)
    if metrics is not None:
        b = axes[0][1]
        for col, lab in METRIC_LABELS.items():
            if col in metrics:
                b.plot(metrics.step, metrics[col], label=lab, lw=1.5)
        b.set_xscale("symlog", linthresh=1)
        b.set_xlabel("training step")
        b.set_ylim(-0.02, 1.02)
        b.set_title("the run's evaluation conditions (metrics.csv)", fontsize=9)
        b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def transitions_figure(long: pd.DataFrame, trans: pd.DataFrame, summary: dict, path: Path, title: str = "") -> Path:
    """Each final top FV head's path in the (induction score, FV score) plane (and, dashed, each final top
    induction head's), coloured by training progress; and the random baselines."""
    import matplotlib.pyplot as plt
    from matplotlib import cm, colormaps

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    C = long.order.nunique()
    cmap = colormaps["plasma"]
    ends: dict = {}  # head -> its final (induction, FV) point, labelled once after the legend is drawn
    for role, ls in (("fv", "-"), ("induction", "--")):
        for _, r in trans[trans.role == role].iterrows() if len(trans) else []:
            key = (int(r.layer), int(r["head"]))
            d = long[(long.layer == key[0]) & (long["head"] == key[1])].sort_values("order")
            a.plot(d.induction, d.fv, ls=ls, lw=1.2, color=COLORS[role], alpha=0.6)
            a.scatter(d.induction, d.fv, c=d.order / max(C - 1, 1), cmap=cmap, s=18, zorder=3, vmin=0, vmax=1)
            ends.setdefault(key, (float(d.induction.iloc[-1]), float(d.fv.iloc[-1])))
    thr = summary.get("threshold", {})
    if thr.get("induction") is not None:
        a.axvline(thr["induction"], color=COLORS["induction"], ls=":", lw=1, label="top-induction threshold")
    if thr.get("fv") is not None:
        a.axhline(thr["fv"], color=COLORS["fv"], ls=":", lw=1, label="top-FV threshold")
    sm = cm.ScalarMappable(cmap=cmap)
    sm.set_array([0, 1])
    fig.colorbar(sm, ax=a, label="training progress (first to last checkpoint)")
    a.set_xlabel("induction score")
    a.set_ylabel("FV score")
    a.set_title("paths of the final top FV heads (solid) and top induction heads (dashed)")
    a.margins(0.12)
    if a.get_legend_handles_labels()[0]:
        a.legend(loc="upper left")
    fig.canvas.draw()  # the layout first, so that the labels are placed where they will be drawn
    label_points(a, [p[0] for p in ends.values()], [p[1] for p in ends.values()],
                 [f"L{k[0]}H{k[1]}" for k in ends], max_labels=None)
    labels, obs, means, lo, hi = [], [], [], [], []
    for key, lab in (("fv_heads_through_induction", "FV heads that were\ninduction heads first"),
                     ("induction_heads_through_fv", "induction heads that were\nFV heads first")):
        s = summary.get(key, {})
        if s.get("fraction") is None:
            continue
        labels.append(lab)
        obs.append(s["fraction"])
        means.append(s["random_mean"])
        lo.append(s["random_mean"] - s["random_95"][0])
        hi.append(s["random_95"][1] - s["random_mean"])
    xs = np.arange(len(labels))
    if labels:
        b.bar(xs - 0.18, obs, 0.36, label="observed", color=COLORS["fv"])
        b.bar(xs + 0.18, means, 0.36, yerr=[lo, hi], capsize=4, label="random head sets (95 %)", color=COLORS["random"], alpha=0.5)
        for xi, o, m in zip(xs, obs, means):
            b.annotate(f"{o:.2f}", (xi - 0.18, o), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                       textcoords="offset points")
            b.annotate(f"{m:.2f}", (xi + 0.18, m), ha="center", va="bottom", fontsize=8, xytext=(8, 2),
                       textcoords="offset points")
        b.set_xticks(xs)
        b.set_xticklabels(labels, fontsize=8)
    b.set_ylim(0, 1.05)
    b.set_ylabel("fraction of heads")
    b.set_title("passed through the other role first")
    b.legend()
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
