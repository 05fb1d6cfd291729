"""Did the heads that end as function-vector (FV) heads pass through an induction phase first, more often
than random heads would? (Yin & Steinhardt 2025, section on training dynamics.) And the reverse: were the
final induction heads FV heads first?

At each checkpoint a head is a *top induction head* if it is among the ``top`` heads by induction score
and its score is at least ``rel`` x the largest induction score at the final checkpoint; likewise for FV.
For each head among the final top FV heads: its FV onset is the first checkpoint at which it is a top FV
head; it *passed through an induction phase* if it was a top induction head at some checkpoint before its
FV onset. The fraction of final FV heads that did is compared with random head sets of the same size,
each random head given the onset of one FV head (so the windows are the same): mean, 95 % interval and
P(random >= observed). The reverse question is answered the same way. A fraction is a finding only when
P(random >= observed) < ``ALPHA`` (0.05); otherwise its text says "not distinguishable from the random
baseline".

``formation_baseline`` does the same for "heads form at step X": the rise of a score series over
checkpoints (the largest mean after a split minus mean before) against the same series in random
checkpoint orders.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


ALPHA = 0.05


def verdict(p: float | None, alpha: float = ALPHA) -> str:
    """"beats the random baseline" when p < alpha, else "not distinguishable from the random baseline"."""
    return "beats the random baseline" if p is not None and p < alpha else "not distinguishable from the random baseline"


def _rise(v: np.ndarray) -> np.ndarray:
    """v (R, C): per row, the largest mean(v[c:]) - mean(v[:c]) over split points c = 1..C-1."""
    C = v.shape[1]
    cs = np.cumsum(v, axis=1)
    total = cs[:, -1:]
    c = np.arange(1, C)
    before = cs[:, :-1] / c
    after = (total - cs[:, :-1]) / (C - c)
    return (after - before).max(axis=1)


def formation_baseline(values, n_random: int = 1000, seed: int = 0) -> dict:
    """Is there a rise in a score over checkpoints at all? values (C,): one score per checkpoint in
    training order (e.g. the best induction score). Statistic: the largest mean after a split minus mean
    before; baseline: the same statistic in ``n_random`` random orders of the checkpoints. Returns
    {rise, random_mean, random_95 (quantiles 2.5 / 97.5 %), p_random_ge_observed, n_random, verdict}."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 3:
        return {"rise": None, "p_random_ge_observed": None, "n_random": 0, "random_mean": None, "random_95": None,
                "verdict": "not distinguishable from the random baseline (fewer than 3 checkpoints)"}
    rng = np.random.default_rng(seed)
    obs = float(_rise(v[None])[0])
    draws = _rise(np.vstack([rng.permutation(v) for _ in range(n_random)]))
    p = float((draws >= obs - 1e-12).mean())
    return {"rise": obs, "random_mean": float(draws.mean()),
            "random_95": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))],
            "p_random_ge_observed": p, "n_random": n_random, "verdict": verdict(p)}


def default_top(n_heads_total: int) -> int:
    """The atlas's top set: 2 % of all heads, at least 3."""
    return max(3, round(0.02 * n_heads_total))


def _role_grids(long: pd.DataFrame, col: str, top: int, rel: float):
    """(values (C, N), in-top-set mask (C, N), threshold) for score ``col``; rows = checkpoints by order."""
    grid = long.pivot_table(index="order", columns="hid", values=col).sort_index()
    vals = grid.to_numpy(dtype=float)
    final_max = np.nanmax(vals[-1]) if np.isfinite(vals[-1]).any() else np.nan
    thr = rel * final_max if final_max > 0 else np.inf
    ranks = pd.DataFrame(vals).rank(axis=1, ascending=False, method="first").to_numpy()
    return vals, (ranks <= top) & (np.nan_to_num(vals, nan=-np.inf) >= thr), thr, list(grid.columns), ranks


def role_transitions(long: pd.DataFrame, top: int | None = None, rel: float = 0.25, n_random: int = 1000,
                     seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """For the final top FV heads: were they top induction heads before their FV onset? And the reverse.

    ``long``: heads_over_training rows (order, step, layer, head, induction, fv). Returns (one row per
    (head, role), summary with the fractions and their random baselines); see the module docstring."""
    long = long.copy()
    long["hid"] = long.layer.astype(int) * 10_000 + long["head"].astype(int)
    n_total = long.hid.nunique()
    top = top or default_top(n_total)
    steps = long.groupby("order").step.first().sort_index()
    x = steps.to_numpy(dtype=float) if steps.notna().all() else steps.index.to_numpy(dtype=float)
    grids = {c: _role_grids(long, c, top, rel) for c in ("induction", "fv")}
    hids = grids["fv"][3]
    assert hids == grids["induction"][3]
    C = len(x)
    rows, summary = [], {"top": top, "rel_threshold": rel, "n_heads": n_total, "checkpoints": C,
                         "threshold": {c: float(g[2]) if np.isfinite(g[2]) else None for c, g in grids.items()}}
    rng = np.random.default_rng(seed)
    for role, other in (("fv", "induction"), ("induction", "fv")):
        vals, top_mask, _, _, _ = grids[role]
        ovals, otop, _, _, oranks = grids[other]
        final = [j for j in range(len(hids)) if top_mask[-1, j]]
        # ever_before[c, j]: head j was a top `other` head at some checkpoint < c
        ever_before = np.vstack([np.zeros((1, len(hids)), bool), np.logical_or.accumulate(otop, axis=0)[:-1]])
        onsets = []
        for j in final:
            onset = int(np.argmax(top_mask[:, j]))
            onsets.append(onset)
            before = otop[:onset, j]
            peak = int(np.nanargmax(ovals[:onset, j])) if onset else 0
            idx = np.flatnonzero(otop[:, j])
            rows.append({"role": role, "layer": hids[j] // 10_000, "head": hids[j] % 10_000,
                         f"final_{role}": float(vals[-1, j]), f"final_{other}": float(ovals[-1, j]),
                         "onset_step": x[onset], "onset_order": onset,
                         f"was_top_{other}_before": bool(before.any()),
                         f"first_top_{other}_step": x[idx[0]] if len(idx) else None,
                         f"last_top_{other}_step": x[idx[-1]] if len(idx) else None,
                         f"checkpoints_as_top_{other}_before": int(before.sum()),
                         f"max_{other}_before": float(np.nanmax(ovals[:onset, j])) if onset else None,
                         f"max_{other}_before_step": x[peak] if onset else None,
                         f"{other}_rank_at_max_before": int(oranks[peak, j]) if onset else None,
                         f"top_{other}_at_end": bool(otop[-1, j])})
        key = f"{role}_heads_through_{other}"
        if not final:
            summary[key] = {"n": 0, "fraction": None, "note": f"no head is a top {role} head at the final checkpoint"}
            continue
        observed = float(np.mean([ever_before[o, j] for o, j in zip(onsets, final)]))
        on = np.array(onsets)
        draws = np.empty(n_random)
        for i in range(n_random):
            heads = rng.choice(len(hids), size=len(final), replace=False)
            draws[i] = ever_before[rng.permutation(on), heads].mean()
        summary[key] = {"n": len(final), "fraction": observed, "heads": [_hname(hids[j]) for j in final],
                        "onset_steps": [x[o] for o in onsets],
                        "random_mean": float(draws.mean()),
                        "random_95": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))],
                        "p_random_ge_observed": float((draws >= observed - 1e-12).mean()), "n_random": n_random}
        summary[key]["verdict"] = verdict(summary[key]["p_random_ge_observed"])
    return pd.DataFrame(rows), summary


def _hname(hid: int) -> str:
    return f"L{hid // 10_000}H{hid % 10_000}"


def transition_text(s: dict) -> str:
    """The role-transition result in words."""
    def thr(v):
        return "none: no head scores above 0 at the end" if v is None else f">= {v:.3g}"

    lines = [f"Top sets: the {s['top']} best heads by each score at a checkpoint, with a score of at least "
             f"{s['rel_threshold']:g} x the final checkpoint's best (induction {thr(s['threshold']['induction'])}, "
             f"FV {thr(s['threshold']['fv'])})."]
    for key, role, other in (("fv_heads_through_induction", "FV", "induction"),
                             ("induction_heads_through_fv", "induction", "FV")):
        r = s.get(key, {})
        if r.get("fraction") is None:
            lines.append(r.get("note", f"no final {role} heads"))
            continue
        lines.append(f"{r['fraction']:.2f} of the {r['n']} final top {role} heads ({', '.join(r['heads'])}) were top "
                     f"{other} heads before their {role} onset; random head sets of the same size over the same "
                     f"windows: {r['random_mean']:.2f} (95 % {r['random_95'][0]:.2f}-{r['random_95'][1]:.2f}), "
                     f"P(random >= observed) = {r['p_random_ge_observed']:.3f}: "
                     + verdict(r["p_random_ge_observed"]) + ".")
    return "\n\n".join(lines)
