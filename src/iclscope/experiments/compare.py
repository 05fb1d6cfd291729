"""``iclscope compare DIR1 DIR2 ...``: head-atlas results of several models side by side.

For each model (an ``iclscope atlas`` folder; a ``scores`` folder gives everything but the ablation):

- overlap of the top-k induction heads and the top-k FV heads, k a fraction of all heads, against the
  overlap of two random k-sets (hypergeometric: mean k^2/N, 95 % range, P(random >= observed));
- the rank (Spearman) and linear (Pearson) correlation of the two scores over all heads;
- where each kind sits: the relative depth layer / (n_layers - 1) of the top heads of each kind
  (``depth_fraction`` of all heads, at least 3), and its mean;
- the effect of ablating each kind (from ablation.csv: mean accuracy over the evaluation tasks, random
  heads averaged over their seeds), on the task prompts and, for testbed models, the copying prompts.

Every folder must come from the same task set (config.json "tasks" and "task_names"); otherwise the
comparison is refused naming the folder that differs. Results folder (a ``ResultsDir``: a non-empty folder
iclscope did not make is refused untouched; its config is the compared folders and labels, a rerun with
other fractions rewrites every table; every file is written atomically): overlap.csv, correlation.csv,
depth.csv, ablation.csv, overlap.png, depth.png, ablation.png, summary.json, report.html.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import IclscopeError
from ..report import Finding, ResultsDir, run_metadata, write_report
from ..report.figures import ablation_panel, save_figure
from ..report.figures.common import COLORS, CYCLE

FRACTIONS = (0.02, 0.05, 0.1, 0.2)


def load_results(dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[dict]:
    """Read each folder's config.json, heads.csv and (if present) ablation.csv; check the task sets."""
    if len(dirs) < 2:
        raise IclscopeError("compare needs at least two results folders")
    if labels is not None and len(labels) != len(dirs):
        raise IclscopeError(f"--labels: {len(labels)} labels for {len(dirs)} folders")
    out = []
    for d in dirs:
        d = Path(d).expanduser()
        if not (d / "config.json").exists():
            raise IclscopeError(f"{d}: not a results folder of `iclscope atlas` (no config.json)")
        try:
            cfg = json.loads((d / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise IclscopeError(f"{d}/config.json: unreadable ({e})") from None
        if cfg.get("command") not in ("atlas", "scores"):
            raise IclscopeError(f"{d}: holds results of `iclscope {cfg.get('command')}`, not of atlas or scores")
        if not (d / "heads.csv").exists():
            raise IclscopeError(f"{d}: no heads.csv (the atlas did not finish scoring; rerun it)")
        heads = pd.read_csv(d / "heads.csv")
        missing = {"layer", "head", "induction", "fv"} - set(heads.columns)
        if missing:
            raise IclscopeError(f"{d}/heads.csv: missing columns {', '.join(sorted(missing))}")
        abl = pd.read_csv(d / "ablation.csv") if (d / "ablation.csv").exists() else None
        out.append({"path": d, "cfg": cfg, "heads": heads, "ablation": abl,
                    "n_layers": int(heads.layer.max()) + 1, "n_heads": int(heads["head"].max()) + 1})
    ref = out[0]
    key = lambda e: (str(e["cfg"].get("tasks")), sorted(e["cfg"].get("task_names") or []))  # noqa: E731
    for e in out[1:]:
        if key(e) != key(ref):
            rt, rn = key(ref)
            et, en = key(e)
            what = (f"tasks folder {et!r} vs {rt!r}" if et != rt else
                    f"tasks {', '.join(en)} vs {', '.join(rn)}")
            raise IclscopeError(f"{e['path']} was scored on a different task set from {ref['path']} ({what}); "
                                f"compare results of one task set (rerun the atlas with the same --tasks)")
    names = list(labels) if labels else _labels([e["cfg"] for e in out])
    if len(set(names)) < len(names):  # the same model twice: add the results folder's name
        names = [f"{n} [{e['path'].name}]" for n, e in zip(names, out)]
    if len(set(names)) < len(names):
        names = [f"{n} #{i}" for i, n in enumerate(names)]
    for n, e in zip(names, out):
        e["label"] = n
    return out


def _labels(cfgs: list[dict]) -> list[str]:
    """Model names for the figures: the shortest path tails (at least two parts) that tell the models apart
    (e.g. seed_0/checkpoints/step_4000 vs seed_1/...), hub names as they are; "@revision" when given."""
    specs = [str(c.get("model", "?")) for c in cfgs]
    parts = [Path(s).parts for s in specs]
    longest = max(len(p) for p in parts)
    names = specs
    for n in range(2, max(longest, 2) + 1):
        names = ["/".join(p[-n:]) if Path(s).exists() else s for s, p in zip(specs, parts)]
        names = [nm + (f"@{c['revision']}" if c.get("revision") else "") for nm, c in zip(names, cfgs)]
        if len(set(names)) == len(names):
            return names
    return names


# ----------------------------------------------------------------------------------------------------
# Measures
# ----------------------------------------------------------------------------------------------------


def _top(heads: pd.DataFrame, col: str, k: int) -> set:
    order = heads.assign(_v=heads[col].fillna(-np.inf)).sort_values("_v", ascending=False, kind="stable")
    return {(int(a), int(b)) for a, b in order[["layer", "head"]].head(k).to_numpy()}


def hypergeom_pmf(N: int, K: int, n: int) -> np.ndarray:
    """P(X = x), x = 0..min(K, n): overlap of a fixed K-set with a random n-set out of N."""
    xs = range(min(K, n) + 1)
    return np.array([math.comb(K, x) * math.comb(N - K, n - x) / math.comb(N, n) for x in xs])


def overlap_table(entries: list[dict], fractions=FRACTIONS) -> pd.DataFrame:
    rows = []
    for e in entries:
        h = e["heads"]
        N = len(h)
        for f in fractions:
            k = max(1, round(f * N))
            obs = len(_top(h, "induction", k) & _top(h, "fv", k))
            pmf = hypergeom_pmf(N, k, k)
            cdf = np.cumsum(pmf)
            rows.append({"model": e["label"], "fraction": f, "k": k, "heads": N, "overlap": obs,
                         "jaccard": obs / (2 * k - obs), "random_mean": k * k / N,
                         "random_lo": int(np.searchsorted(cdf, 0.025)), "random_hi": int(np.searchsorted(cdf, 0.975)),
                         "p_random_ge_observed": float(pmf[obs:].sum())})
    return pd.DataFrame(rows)


def correlation_table(entries: list[dict]) -> pd.DataFrame:
    rows = []
    for e in entries:
        h = e["heads"]
        rows.append({"model": e["label"], "heads": len(h), "layers": e["n_layers"],
                     "spearman": float(h.induction.rank().corr(h.fv.rank())),
                     "pearson": float(h.induction.corr(h.fv)),
                     "max_induction": float(h.induction.max()), "max_fv": float(h.fv.max())})
    return pd.DataFrame(rows)


def depth_table(entries: list[dict], depth_fraction: float = 0.1) -> pd.DataFrame:
    """One row per (model, kind, top head): its layer and relative depth layer / (n_layers - 1)."""
    rows = []
    for e in entries:
        h, L = e["heads"], e["n_layers"]
        k = max(3, round(depth_fraction * len(h)))
        for kind in ("induction", "fv"):
            order = h.assign(_v=h[kind].fillna(-np.inf)).sort_values("_v", ascending=False, kind="stable").head(k)
            for rank, (_, r) in enumerate(order.iterrows()):
                rows.append({"model": e["label"], "kind": kind, "rank": rank + 1, "layer": int(r.layer),
                             "head": int(r["head"]), "score": float(r[kind]),
                             "rel_depth": int(r.layer) / max(L - 1, 1)})
    return pd.DataFrame(rows)


def ablation_table(entries: list[dict]) -> pd.DataFrame:
    """model, prompts (task / copy), ranking, fraction, accuracy (mean over tasks, then random seeds),
    drop (accuracy with nothing ablated minus accuracy)."""
    parts = []
    for e in entries:
        a = e["ablation"]
        if a is None:
            continue
        a = a.assign(prompts=np.where(a.task.str.startswith("copy:"), "copy", "task"))
        m = a.groupby(["prompts", "ranking", "fraction", "seed"]).accuracy.mean().groupby(
            ["prompts", "ranking", "fraction"]).mean().reset_index()
        base = m[m.fraction == 0].groupby("prompts").accuracy.mean()
        m["drop"] = m.prompts.map(base) - m.accuracy
        parts.append(m.assign(model=e["label"]))
    if not parts:
        return pd.DataFrame(columns=["model", "prompts", "ranking", "fraction", "accuracy", "drop"])
    return pd.concat(parts, ignore_index=True)[["model", "prompts", "ranking", "fraction", "accuracy", "drop"]]


# ----------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------


def overlap_figure(ov: pd.DataFrame, corr: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    for i, (name, g) in enumerate(ov.groupby("model", sort=False)):
        c = CYCLE[i % len(CYCLE)]
        x = g.fraction * 100
        a.plot(x, g.overlap / g.k, marker="o", color=c, label=f"{name}: observed")
        a.plot(x, g.random_mean / g.k, ls="--", color=c, lw=1, label=f"{name}: random k-sets (95 %)")
        a.fill_between(x, g.random_lo / g.k, g.random_hi / g.k, color=c, alpha=0.12)
    a.set_xlabel("top-k heads (% of all heads)")
    a.set_ylabel("overlap / k (top induction vs top FV)")
    a.set_ylim(-0.02, 1.02)
    a.set_title("overlap of the top induction and top FV heads")
    a.legend()
    xs = np.arange(len(corr))
    b.bar(xs - 0.18, corr.spearman, 0.36, label="Spearman (ranks)", color=CYCLE[0])
    b.bar(xs + 0.18, corr.pearson, 0.36, label="Pearson", color=CYCLE[1])
    b.axhline(0, color=COLORS["chance"], lw=0.8)
    b.set_xticks(xs)
    b.set_xticklabels(corr.model, rotation=15)
    b.set_ylim(-1, 1)
    b.set_title("correlation of induction and FV scores over all heads")
    b.legend()
    return save_figure(fig, path)


def depth_figure(depth: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(depth.model))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(models) + 2), 4))
    rng = np.random.default_rng(0)
    for j, (kind, color, dx) in enumerate((("induction", COLORS["induction"], -0.15), ("fv", COLORS["fv"], 0.15))):
        for i, m in enumerate(models):
            d = depth[(depth.model == m) & (depth.kind == kind)]
            ax.scatter(i + dx + rng.uniform(-0.05, 0.05, len(d)), d.rel_depth, color=color, s=16, alpha=0.7,
                       label=f"top {kind} heads" if i == 0 else None)
            ax.plot([i + dx - 0.1, i + dx + 0.1], [d.rel_depth.mean()] * 2, color=color, lw=3)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, rotation=15)
    ax.set_ylabel("relative depth (0 = first layer, 1 = last)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("where each kind sits (bars: means)")
    ax.legend()
    return save_figure(fig, path)


def ablation_figure(entries: list[dict], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    with_abl = [e for e in entries if e["ablation"] is not None]
    if not with_abl:
        return None
    has_copy = any(e["ablation"].task.str.startswith("copy:").any() for e in with_abl)
    rows = 2 if has_copy else 1
    fig, axes = plt.subplots(rows, len(with_abl), figsize=(5.5 * len(with_abl), 4.2 * rows), squeeze=False)
    for j, e in enumerate(with_abl):
        a = e["ablation"]
        is_copy = a.task.str.startswith("copy:")
        ablation_panel(axes[0][j], a[~is_copy], f"{e['label']}\ntask prompts")
        if has_copy:
            if is_copy.any():
                ablation_panel(axes[1][j], a[is_copy], f"{e['label']}\ncopying prompts")
            else:
                axes[1][j].set_visible(False)
    return save_figure(fig, path, dpi=110)


# ----------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------


def run_compare(dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
                fractions=FRACTIONS, depth_fraction: float = 0.1, log=print) -> dict:
    """``iclscope compare``: tables, figures and one HTML report in ``out``; returns the summary."""
    entries = load_results(dirs, labels)
    try:
        fractions = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise IclscopeError(f"--fractions must be numbers, got {fractions!r}") from None
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise IclscopeError(f"--fractions {fractions}: give fractions of heads in (0, 1] (0.05 is 5 % of the heads)")
    if not 0 < float(depth_fraction) <= 1:
        raise IclscopeError(f"--depth-fraction {depth_fraction}: give a fraction of heads in (0, 1]")
    cfg = {"command": "compare", "dirs": [str(e["path"].resolve()) for e in entries],
           "labels": [e["label"] for e in entries]}
    with ResultsDir(out, cfg, command="compare") as res:
        return _write(res, entries, fractions, depth_fraction, log)


ABOUT = ("Each model's head-atlas folder: the induction and FV score of every head, compared across models "
         "on the same task set.")


def _corr_words(r: float) -> str:
    """A correlation's sign and size in words (|r| < 0.1 negligible, < 0.3 weak, < 0.5 moderate, else strong)."""
    if not np.isfinite(r):
        return "undefined"
    a = abs(r)
    size = "negligible" if a < 0.1 else "weak" if a < 0.3 else "moderate" if a < 0.5 else "strong"
    return size if size == "negligible" else f"{size} {'positive' if r > 0 else 'negative'}"


def compare_findings(ov: pd.DataFrame, corr: pd.DataFrame, mean_depth: pd.DataFrame) -> list[Finding]:
    """Per model: the overlap of the top induction and FV heads at the fraction nearest 5 % of heads
    against random k-sets (hypergeometric; within noise when P(random >= observed) >= 0.05), and the rank
    correlation of the two scores with its sign and size against unrelated scores (within noise when
    |Spearman| < 1.96 / sqrt(n - 1))."""
    out = []
    for model, g in ov.groupby("model", sort=False):
        r = g.iloc[int((g.fraction - 0.05).abs().to_numpy().argmin())]
        p = float(r.p_random_ge_observed)
        out.append(Finding(
            f"{model}: {int(r.overlap)} of the top {int(r.k)} induction head{'s' if r.k > 1 else ''} (top "
            f"{100 * r.fraction:.0f} % of heads) {'are' if r.k > 1 else 'is'} also among the top {int(r.k)} FV heads "
            f"(P(random ≥ observed) = {p:.2g}).",
            value=int(r.overlap), interval=(float(r.random_lo), float(r.random_hi)), interval_kind="random 95 % range",
            baseline=f"random {int(r.k)}-sets: {r.random_mean:.2g}", within_noise=p >= 0.05))
    for _, r in corr.iterrows():
        n = int(r.heads)
        # the 95 % range of a rank correlation of n unrelated scores (normal approximation, 1.96 / sqrt(n - 1))
        half = 1.96 / math.sqrt(max(n - 1, 1))
        out.append(Finding(
            f"{r.model}: the induction and FV scores have a {_corr_words(r.spearman)} rank correlation over its "
            f"{n} heads (Spearman {r.spearman:.2f}, Pearson {r.pearson:.2f}).",
            value=float(r.spearman), baseline=f"unrelated scores: 0 ± {half:.2f} (95 %)",
            within_noise=bool(abs(r.spearman) < half)))
    return out


def _write(res, entries, fractions, depth_fraction, log) -> dict:
    import time
    t0 = time.time()
    ov = overlap_table(entries, fractions)
    corr = correlation_table(entries)
    depth = depth_table(entries, depth_fraction)
    abl = ablation_table(entries)
    for name, df in (("overlap.csv", ov), ("correlation.csv", corr), ("depth.csv", depth), ("ablation.csv", abl)):
        res.write_table(name, df)
    mean_depth = depth.groupby(["model", "kind"], sort=False).rel_depth.mean().unstack("kind").reset_index()
    mean_depth["fv_minus_induction"] = mean_depth.fv - mean_depth.induction
    side = None
    if len(abl):
        side = abl[abl.ranking.isin(["induction", "fv", "random"])].pivot_table(
            index=["model", "prompts", "fraction"], columns="ranking", values="accuracy").reset_index()
    figs = {"overlap": overlap_figure(ov, corr, res.file("overlap.png")),
            "depth": depth_figure(depth, res.file("depth.png")),
            "ablation": ablation_figure(entries, res.file("ablation.png"))}
    summary = {"models": [{"label": e["label"], "path": str(e["path"]), "model": e["cfg"].get("model"),
                           "revision": e["cfg"].get("revision"), "heads": len(e["heads"]),
                           "layers": e["n_layers"]} for e in entries],
               "tasks": entries[0]["cfg"].get("task_names"),
               "overlap": ov.to_dict("records"), "correlation": corr.to_dict("records"),
               "mean_relative_depth": mean_depth.to_dict("records")}
    res.write_json("summary.json", summary)
    write_report(res.file("report.html"), "Head atlas: " + " vs ".join(e["label"] for e in entries), [
        {"heading": "Models", "text": ABOUT, "table": corr.merge(pd.DataFrame(summary["models"])[["label", "model", "revision"]]
                                                                 .rename(columns={"label": "model", "model": "spec"}),
                                                                 on="model")[["model", "spec", "revision", "layers", "heads",
                                                                              "max_induction", "max_fv"]]},
        {"heading": "Overlap of the top induction and top FV heads", "figure": figs["overlap"],
         "text": "Observed overlap of the top-k sets against two random k-sets (hypergeometric: mean k²/N, 95 % "
                 "range, P(random ≥ observed)); the right panel: the correlation of the two scores over all heads.",
         "table": ov.drop(columns=["heads"])},
        {"heading": "Where each kind sits", "figure": figs["depth"], "table": mean_depth},
        *([{"heading": "Ablating each kind (accuracy; random: mean over seeds)", "figure": figs["ablation"],
            "table": side}] if side is not None else
          [{"heading": "Ablation", "text": "No folder holds ablation.csv (scores-only results)."}]),
    ], findings=compare_findings(ov, corr, mean_depth),
       metadata=run_metadata(started=t0, models=[e["label"] for e in entries], folders=[str(e["path"]) for e in entries]))
    log(corr.round(3).to_string(index=False))
    log(ov[["model", "k", "overlap", "random_mean", "p_random_ge_observed"]].round(3).to_string(index=False))
    log(mean_depth.round(3).to_string(index=False))
    res.mark_finished()
    log(f"results in {res.path}/ (report.html)")
    return summary
