"""Figures of training runs: loss curves of several runs, and one run's losses and heads over training."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .common import save_figure


def loss_curves(path: str | Path, runs: dict, threshold: float | None = None, title: str = "",
                column: str = "train_loss") -> Path:
    """Loss against sequences seen, one line per run name (mean over its seeds, shaded min-max).

    runs: name -> list of metrics DataFrames (one per seed), each with columns sequences and ``column``."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, dfs) in enumerate(runs.items()):
        x = dfs[0].sequences.to_numpy()
        ys = np.stack([df[column].to_numpy()[: len(x)] for df in dfs])
        c = colors[i % len(colors)]
        ax.plot(x, ys.mean(0), color=c, label=name, lw=1.6)
        if len(dfs) > 1:
            ax.fill_between(x, ys.min(0), ys.max(0), color=c, alpha=0.15, lw=0)
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.axhline(np.log(2), color="k", ls=":", lw=1, label="ln 2 (chance in context)")
    ax.set_yscale("log")
    ax.set_xlabel("sequences seen")
    ax.set_ylabel(column.replace("_", " "))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)


def training_story(path: str | Path, df: pd.DataFrame, phase: dict | None, title: str = "",
                   transitions: list[dict] | None = None) -> Path:
    """Two panels of a training run's metrics.csv: losses (every transition shaded and its steepest point
    dashed, the phase change a solid line) and the heads (last-layer induction strength, best layer-0
    previous-token score) against sequences seen. ``transitions``: ``detect_transitions`` of the run
    (computed from df.train_loss when None)."""
    if transitions is None and "train_loss" in df:
        from ...train.phase import detect_transitions  # here: train imports report
        transitions = detect_transitions(df.sequences, df.train_loss, df.step if "step" in df else None)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4))
    x = df.sequences.to_numpy()
    a.plot(x, df.train_loss, label="train loss", lw=1.8)
    for col, lab in (("heldout_labels_loss", "held-out label pairs"), ("heldout_exemplars_loss", "held-out exemplars"),
                     ("heldout_classes_loss", "held-out classes")):
        if col in df:
            a.plot(x, df[col], label=lab, lw=1, alpha=0.8)
    a.axhline(np.log(2), color="k", ls=":", lw=1, label="ln 2")
    for i, t in enumerate(transitions or []):
        a.axvspan(max(t["start_sequences"], 1), t["end_sequences"], color="darkorange", alpha=0.12,
                  label="transitions (PELT)" if i == 0 else None)
        a.axvline(t["sequences"], color="darkorange", ls="--", lw=1,
                  label=f"transition {i + 1}{' (steepest)' if t['steepest'] else ''}: {t['sequences']:,}")
    if phase:
        a.axvline(phase["sequences"], color="crimson", lw=1.2, label=f"phase change ({phase['sequences']:,})")
        a.axvspan(max(phase["drop_start_sequences"], 1), phase["drop_end_sequences"], color="crimson", alpha=0.08)
    a.set_yscale("log")
    a.set_xlabel("sequences seen")
    a.set_ylabel("loss at the query")
    a.legend(fontsize=8, loc="lower left")
    a.set_title("loss", fontsize=10)
    strengths = [c for c in df.columns if c.startswith("ind_strength_")]
    for c in strengths:
        b.plot(x, df[c], lw=1, label=c.replace("ind_strength_", "").replace("L", "layer ").replace("H", " head "))
    prev0 = [c for c in df.columns if c.startswith("task_prev_L0H")]
    if prev0:
        b.plot(x, df[prev0].max(axis=1), color="k", ls="--", lw=1.5,
               label="best layer-0 head: label -> preceding exemplar")
    for t in transitions or []:
        b.axvline(t["sequences"], color="darkorange", ls="--", lw=1)
    if phase:
        b.axvline(phase["sequences"], color="crimson", lw=1.2)
    b.set_xlabel("sequences seen")
    b.set_ylabel("attention: correct label minus wrong label")
    b.set_title("last-layer heads' induction strength", fontsize=10)
    b.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
