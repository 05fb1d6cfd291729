"""When did the loss drop? ``detect_phase_change`` finds the abrupt fall in a training loss curve."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

def detect_phase_change(sequences, loss, steps=None, threshold: float | None = None) -> dict | None:
    """Find the abrupt drop in a loss curve.

    sequences, loss (and steps): 1-D arrays over evaluations. The curve is smoothed (running median of
    3). The phase change is the first evaluation from which the smoothed loss stays below ``threshold``
    to the end (default threshold: halfway, in log space, between the plateau and the final loss). The
    plateau is the loss level where the curve spends most evaluations before that crossing (the densest
    bin of a log-spaced histogram), the final value the mean of the last 10 % of points. The drop runs
    from where the loss last leaves the plateau (10 % of the way down to the final value) to where it
    gets within 10 % of the final value; its steepest point is the largest fall in loss per sequence
    inside it. Returns None when the loss never crosses the threshold or starts below it.
    """
    x = np.asarray(sequences, dtype=float)
    y = np.asarray(loss, dtype=float)
    st = np.asarray(steps if steps is not None else sequences, dtype=float)
    ok = np.isfinite(y) & (y > 0)
    x, y, st = x[ok], y[ok], st[ok]
    if len(y) < 4:
        return None
    ys = pd.Series(y).rolling(3, center=True, min_periods=1).median().to_numpy()
    final = float(ys[-max(1, len(ys) // 10):].mean())

    def plateau_before(c: int) -> float:
        logs = np.log(ys[:c])
        hist, edges = np.histogram(logs, bins=max(5, min(30, c // 2)))
        b = int(np.argmax(hist))
        inside = (logs >= edges[b]) & (logs <= edges[b + 1])
        return float(np.exp(np.median(logs[inside])))

    if threshold is None:
        threshold = math.exp((math.log(plateau_before(len(ys))) + math.log(max(final, 1e-12))) / 2)
    below = ys < threshold
    if not below[-1]:
        return None
    c = len(below) - 1
    while c > 0 and below[c - 1]:
        c -= 1
    if c == 0:
        return None  # below from the start: no plateau to leave
    plateau = plateau_before(c)
    span = max(plateau - final, 1e-12)
    begin = c
    while begin > 0 and ys[begin - 1] < plateau - 0.1 * span:
        begin -= 1
    end = c
    while end < len(ys) - 1 and ys[end] > final + 0.1 * span:
        end += 1
    lo, hi = max(begin - 1, 0), max(end, begin)
    slope = -(ys[lo + 1:hi + 1] - ys[lo:hi]) / np.maximum(x[lo + 1:hi + 1] - x[lo:hi], 1e-12)
    k = lo + int(np.argmax(slope)) + 1 if len(slope) else c
    return {"step": int(st[c]), "sequences": int(x[c]), "threshold": float(threshold), "plateau_loss": plateau,
            "final_loss": final, "steepest_step": int(st[k]), "steepest_sequences": int(x[k]),
            "drop_start_sequences": int(x[max(begin - 1, 0)]), "drop_end_sequences": int(x[end])}
