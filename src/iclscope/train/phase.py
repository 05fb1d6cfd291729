"""When did the loss drop? ``detect_transitions`` finds every abrupt fall in a training loss curve,
``detect_phase_change`` names one of them the phase change, ``phase_summary`` returns both.

Method (``detect_transitions``). The log loss is split into straight-line segments by PELT (the exact
penalised changepoint search of Killick et al. 2012, from the ``ruptures`` library; cost: least-squares
line per segment against sequences seen, at least 3 evaluations per segment). The penalty follows the
BIC rule: each changepoint adds three parameters (its place, a slope and an intercept), so a changepoint
is kept only if it lowers the squared error by more than ``3 * sigma**2 * ln(n)``, with ``n`` the number
of evaluations and ``sigma`` the evaluation-to-evaluation noise of the log loss, estimated robustly from
first differences (1.4826 x their median absolute deviation / sqrt 2, so a steady trend does not count as
noise). A segment is a *transition* when (a) it is not the first segment (a fall from the start has no
plateau to leave), (b) from the end of the previous segment's line to the end of its own the loss falls
by at least ``min_fall`` (default 10 %) and by at least 4 x the local noise scale (``sigma`` of the log
loss over it and its neighbouring segments: noise in a loss near 0 is not a fall), and (c) that fall per sequence is at least ``steeper`` (2) times
the fall per sequence of each neighbouring segment. Adjacent transition segments (a drop that bends) are
one transition. A flat or steadily decaying curve has no transition. The *steepest* transition is the one
with the largest fall in log loss per sequence.

Reported per transition: ``step``/``sequences`` (its steepest point: the largest fall in the smoothed
loss, running median of 3, per sequence inside it), ``start_*``/``end_*``, ``loss_before``/``loss_after``
(the fitted lines' loss where it starts and ends) and ``steepest`` (True for exactly one transition).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import IclscopeError

MIN_FALL = 0.1
STEEPER = 2.0
NOISE_FALLS = 4.0


def _clean(sequences, loss, steps):
    x = np.asarray(sequences, dtype=float)
    y = np.asarray(loss, dtype=float)
    st = np.asarray(steps if steps is not None else sequences, dtype=float)
    if not (x.shape == y.shape == st.shape) or x.ndim != 1:
        raise IclscopeError(f"phase detection: sequences, loss and steps must be 1-D of one length, got "
                            f"{x.shape}, {y.shape}, {st.shape}")
    ok = np.isfinite(y) & (y > 0) & np.isfinite(x)
    return x[ok], y[ok], st[ok]


def noise_scale(z) -> float:
    """Robust evaluation-to-evaluation noise of a series z (n,): 1.4826 x MAD of first differences / sqrt 2."""
    d = np.diff(np.asarray(z, dtype=float))
    if len(d) == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))


def bic_penalty(z) -> float:
    """The changepoint penalty of ``detect_transitions``: 3 * sigma**2 * ln(n) (BIC; see the module docstring)."""
    n = len(z)
    return 3.0 * max(noise_scale(z), 1e-6) ** 2 * math.log(max(n, 2))


def _segments(x, z, penalty: float) -> list[tuple[int, int]]:
    """PELT segments [(start, end)) of z (n,) against x (n,) with a least-squares line per segment."""
    import ruptures as rpt

    n = len(z)
    if n < 6:
        return [(0, n)]
    xs = (x - x[0]) / max(x[-1] - x[0], 1e-12)
    signal = np.column_stack([z, xs, np.ones(n)])  # CostLinear: column 0 regressed on the others
    algo = rpt.Pelt(custom_cost=rpt.costs.CostLinear(), min_size=3, jump=1).fit(signal)
    bks = algo.predict(pen=penalty)
    starts = [0] + bks[:-1]
    return list(zip(starts, bks))


def _line(x, z, a: int, b: int):
    """Least-squares line over z[a:b] against x[a:b]: a function of x."""
    if b - a < 2 or np.ptp(x[a:b]) == 0:
        m = float(np.mean(z[a:b]))
        return lambda t: m
    k, c = np.polyfit(x[a:b], z[a:b], 1)
    return lambda t: float(k * t + c)


def detect_transitions(sequences, loss, steps=None, penalty: float | None = None, min_fall: float = MIN_FALL,
                       steeper: float = STEEPER) -> list[dict]:
    """Every abrupt fall in a loss curve (see the module docstring for the method and its rules).

    sequences, loss (and steps): 1-D arrays over evaluations (non-finite or non-positive losses are
    dropped). ``penalty``: the PELT penalty in squared log-loss units (default ``bic_penalty``).
    Returns a list (in training order) of {step, sequences, start_step, start_sequences, end_step,
    end_sequences, loss_before, loss_after, fall_per_sequence, steepest}; empty when there is none.
    """
    if not 0 < min_fall < 1:
        raise IclscopeError(f"min_fall={min_fall}: must be a fraction in (0, 1)")
    x, y, st = _clean(sequences, loss, steps)
    if len(y) < 6:
        return []
    z = np.log(y)
    segs = _segments(x, z, bic_penalty(z) if penalty is None else float(penalty))
    lines = [_line(x, z, a, b) for a, b in segs]
    falls, rates = [], []
    for k, (a, b) in enumerate(segs):
        x0 = x[segs[k - 1][1] - 1] if k else x[a]
        z0 = lines[k - 1](x0) if k else lines[k](x[a])
        fall = z0 - lines[k](x[b - 1])
        falls.append(fall)
        rates.append(fall / max(x[b - 1] - x0, 1e-12))
    is_t = []
    for k in range(len(segs)):
        nb = [rates[j] for j in (k - 1, k + 1) if 0 <= j < len(segs)]
        local = noise_scale(z[segs[max(k - 1, 0)][0]:segs[min(k + 1, len(segs) - 1)][1]])
        is_t.append(k > 0 and falls[k] >= max(-math.log(1 - min_fall), NOISE_FALLS * local) and rates[k] > 0
                    and all(rates[k] >= steeper * max(r, 0) for r in nb))
    groups, k = [], 0
    while k < len(segs):
        if is_t[k]:
            j = k
            while j + 1 < len(segs) and is_t[j + 1]:
                j += 1
            groups.append((k, j))
            k = j + 1
        else:
            k += 1
    zs = pd.Series(z).rolling(3, center=True, min_periods=1).median().to_numpy()
    out = []
    for k, j in groups:
        i0, i1 = segs[k - 1][1] - 1, segs[j][1] - 1  # last point of the plateau before, last point of the drop
        before, after = lines[k - 1](x[i0]), lines[j](x[i1])
        slope = -(zs[i0 + 1:i1 + 1] - zs[i0:i1]) / np.maximum(x[i0 + 1:i1 + 1] - x[i0:i1], 1e-12)
        p = i0 + int(np.argmax(slope)) + 1 if len(slope) else i1
        out.append({"step": int(st[p]), "sequences": int(x[p]), "start_step": int(st[i0]), "start_sequences": int(x[i0]),
                    "end_step": int(st[i1]), "end_sequences": int(x[i1]), "loss_before": float(math.exp(before)),
                    "loss_after": float(math.exp(after)),
                    "fall_per_sequence": float((before - after) / max(x[i1] - x[i0], 1e-12)), "steepest": False})
    if out:
        max(out, key=lambda t: t["fall_per_sequence"])["steepest"] = True
    return out


def _threshold_crossing(x, y, st, threshold: float) -> dict | None:
    """The first evaluation from which the smoothed loss stays below ``threshold`` to the end (the
    single-threshold protocol of the few-shot reference setup), with the plateau and drop around it."""
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


def detect_phase_change(sequences, loss, steps=None, threshold: float | None = None,
                        transitions: list[dict] | None = None) -> dict | None:
    """The phase change of a loss curve: one dict (keys below) or None.

    With a ``threshold`` (the few-shot reference protocol of Singh et al.: train loss below 0.4 ln 2):
    the first evaluation from which the smoothed loss (running median of 3) stays below it to the end;
    ``method`` = "threshold". Without one: the steepest of ``detect_transitions`` (computed unless
    ``transitions`` is given); ``method`` = "steepest transition", ``threshold`` = None.

    Keys: step, sequences (the crossing, or the steepest transition's steepest point), method, threshold,
    plateau_loss (the loss before the drop), final_loss (mean of the last 10 % of the smoothed curve),
    steepest_step, steepest_sequences, drop_start_sequences, drop_end_sequences, and ``transition``: the
    index into the transitions list of the transition it lies in (None when it lies in none).
    """
    x, y, st = _clean(sequences, loss, steps)
    if transitions is None:
        transitions = detect_transitions(x, y, st)
    if threshold is not None:
        if not threshold > 0:
            raise IclscopeError(f"phase threshold {threshold}: must be a loss > 0")
        pc = _threshold_crossing(x, y, st, float(threshold))
        if pc is None:
            return None
        inside = [i for i, t in enumerate(transitions) if t["start_sequences"] <= pc["sequences"] <= t["end_sequences"]]
        return {**pc, "method": "threshold", "transition": inside[0] if inside else None}
    if not transitions:
        return None
    i = next(i for i, t in enumerate(transitions) if t["steepest"])
    t = transitions[i]
    ys = pd.Series(y).rolling(3, center=True, min_periods=1).median().to_numpy()
    return {"step": t["step"], "sequences": t["sequences"], "method": "steepest transition", "threshold": None,
            "plateau_loss": t["loss_before"], "final_loss": float(ys[-max(1, len(ys) // 10):].mean()),
            "steepest_step": t["step"], "steepest_sequences": t["sequences"],
            "drop_start_sequences": t["start_sequences"], "drop_end_sequences": t["end_sequences"], "transition": i}


def phase_summary(sequences, loss, steps=None, threshold: float | None = None) -> dict:
    """{"transitions": detect_transitions(...), "phase_change": detect_phase_change(...)} for a run summary:
    every transition, and the one called the phase change (its ``transition`` key indexes the list)."""
    x, y, st = _clean(sequences, loss, steps)
    tr = detect_transitions(x, y, st)
    return {"transitions": tr, "phase_change": detect_phase_change(x, y, st, threshold, transitions=tr)}
