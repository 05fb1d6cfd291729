"""``iclscope scores`` and ``iclscope atlas``: score every head as an induction head and as a function-vector
(FV) head, ablate the top heads of each kind, and build function vectors (Yin & Steinhardt 2025; Todd et al. 2024).

Results folder (an ``iclscope.report.ResultsDir``: a non-empty folder iclscope did not make is refused
untouched; each stage's table is written atomically as soon as it is done and reused on a rerun when the
settings it depends on are the same, so a killed run loses at most the stage it was in; the top-level
tables are rebuilt from the stages on every run; see ``run_atlas`` for the stage keys):

    heads.csv            layer, head, induction, induction_segments, prev_token, duplicate, fv, fv_task_std
    fv_per_task.csv      task, layer, head, score, sem
    ablation.csv         ranking, fraction, k, seed, task, accuracy
    function_vectors.csv task, layer, zero_shot_acc, with_fv_acc, few_shot_acc
    *.png, report.html

Task sets. Scoring tasks and evaluation tasks are kept disjoint: by default the FV scores come from the
alphabetical first half of the tasks, the ablation study and the function vectors evaluate on the other
half; with fewer than 4 tasks every task is used for both, and the report says so. ``score_tasks`` /
``eval_tasks`` choose the lists (both are in config.json).

Protocol. The published protocol (Todd et al.'s code; ``iclscope.tasks.Protocol``) is the default; every
choice is written in config.json's ``protocol`` block and explained in docs/protocol.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import IclscopeError
from ...heads import ranked_heads
from ...report import Finding, ResultsDir, run_metadata, write_report
from ...report.figures import head_heatmap, save_figure, short_name
from .ablation import DEFAULT_MEASURES, ablation_figure, ablation_study, ablation_summary, check_measures
from .scoring import score_grid, attention_key, fv_key, score_heads
from ...tasks.protocol import Protocol
from .tasks import FRACTIONS, build_eval_prompts, copy_prompts, default_shots, default_tasks, split_tasks
from .vectors import function_vectors, fv_summary


def scatter_and_layers(table: pd.DataFrame, path: Path, n_layers: int, top_k: int = 3) -> Path:
    """Every head's induction score against its FV score, the top ``top_k`` of each kind coloured
    (induction blue, FV orange) and labelled, beside the layer means against relative depth
    (``iclscope.report.figures.atlas.induction_fv_scatter``)."""
    from ...report.figures.atlas import induction_fv_scatter

    return induction_fv_scatter(table, path, n_layers, top_k)


def _load(spec, revision=None, dtype=None, device=None, device_map=None):
    from ... import load
    return load(spec, revision=revision, dtype=dtype, device=device, device_map=device_map)


def _check_int(name: str, v, lo: int, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise IclscopeError(f"{name} must be an integer >= {lo}, got {v!r}")


def check_score_settings(k=None, n_clean: int = 100, n_corrupt: int = 25, seed: int = 0) -> None:
    """The scoring settings, checked before anything is loaded or written (one-line IclscopeError)."""
    _check_int("--shots (k)", k, 0, allow_none=True)
    _check_int("--n-clean", n_clean, 1)
    _check_int("--n-corrupt", n_corrupt, 1)
    _check_int("--seed", seed, 0)


def check_ablation_settings(fractions, how: str, positions: str, random_seeds: int, n_eval: int) -> list[float]:
    """The ablation settings, checked before anything is loaded or written; returns the fractions."""
    try:
        fr = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise IclscopeError(f"--fractions must be numbers, got {fractions!r}") from None
    if not fr:
        raise IclscopeError("--fractions: give at least one fraction of heads to ablate")
    bad = [f for f in fr if not (0.0 <= f <= 1.0)]
    if bad:
        raise IclscopeError(f"--fractions: {bad[0]!r} is not a fraction of heads in [0, 1] (the CLI takes percents)")
    if how not in ("mean", "zero"):
        raise IclscopeError(f"--how {how!r}: choose mean or zero")
    if positions not in ("final", "all"):
        raise IclscopeError(f"--positions {positions!r}: choose final or all")
    _check_int("--random-seeds", random_seeds, 0)
    _check_int("--n-eval", n_eval, 1)
    return fr


def folder_config(command: str, model_spec, revision, dtype, tasks_dir, tasks: dict, protocol=None,
                  score_tasks=None, eval_tasks=None) -> dict:
    """What defines a scores / atlas folder: the command, the model (spec, revision, dtype), the task set,
    which tasks score and which evaluate, and the protocol (``protocol``: every choice by name, see
    docs/protocol.md). Everything else is a stage key (a change recomputes that stage; a change here is
    refused)."""
    cfg = {"command": command, "model": str(model_spec), "revision": revision,
           "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
           "tasks": str(tasks_dir), "task_names": sorted(tasks),
           "protocol": Protocol.make(protocol).to_dict()}
    if score_tasks is not None:
        cfg["score_tasks"] = sorted(score_tasks)
    if eval_tasks is not None:
        cfg["eval_tasks"] = sorted(eval_tasks)
    return cfg


def _z_threshold(n_tests: int, alpha: float = 0.05) -> float:
    """The one-sided z a maximum over ``n_tests`` noisy scores must pass (Bonferroni), at least 2."""
    from statistics import NormalDist

    return max(2.0, NormalDist().inv_cdf(1 - alpha / max(1, n_tests)))


def top_head_evidence(table: pd.DataFrame) -> dict:
    """The best induction head and the best FV head with their uncertainty, and whether either is
    distinguishable from its baseline: induction against ``induction_baseline`` (the same targets on
    unrepeated sequences), FV against zero; each with ``induction_sem`` / ``fv_sem``. A top score chosen
    from many heads must pass the Bonferroni z for that many heads (at least 2 sem). ``verdict`` says in
    words what can be claimed (on a random model: nothing)."""
    z = _z_threshold(len(table))
    out: dict = {"z_threshold": z}
    words = []
    for kind, base_col, sem_col, against in (("induction", "induction_baseline", "induction_sem", "the random baseline"),
                                             ("fv", None, "fv_sem", "zero")):
        if sem_col not in table or (base_col is not None and base_col not in table):
            out[kind] = None
            continue
        base = table[base_col] if base_col else 0.0
        excess = table[kind] - base
        i = int(excess.fillna(-np.inf).to_numpy().argmax())
        row = table.iloc[i]
        sem = float(row[sem_col]) if pd.notna(row[sem_col]) else float("nan")
        ex = float(excess.iloc[i])
        ok = bool(np.isfinite(sem) and ex > z * sem and ex > 0)
        out[kind] = {"head": [int(row.layer), int(row["head"])], "score": float(row[kind]),
                     "baseline": float(base if base_col is None else row[base_col]), "excess": ex, "sem": sem,
                     "distinguishable": ok}
        name = "induction head" if kind == "induction" else "FV head"
        words.append(f"top {name} {int(row.layer)}.{int(row['head'])}: {float(row[kind]):.4f}, "
                     f"{ex:.4f} +- {sem:.4f} above {against}"
                     + ("" if ok else f" (not distinguishable from {against}: needs > {z:.1f} sem)"))
    found = [k for k in ("induction", "fv") if out.get(k) and out[k]["distinguishable"]]
    out["verdict"] = "; ".join(words) + (
        ". No head is distinguishable from its baseline: these rankings are noise (e.g. an untrained model)."
        if not found else ".")
    return out


def _heatmaps(res: ResultsDir, table: pd.DataFrame, cols, title) -> dict:
    return {c: head_heatmap(table, c, res.file(f"{c}.png"), title=title(c)) for c in cols}


def run_scores(model_spec: str, out: str | Path, tasks_dir=None, revision=None, dtype=None, device=None,
               k: int | None = None, n_clean: int = 100, n_corrupt: int = 25, seed: int = 0, log=print,
               model=None, protocol=None, score_tasks=None) -> pd.DataFrame:
    """``iclscope scores``: heads.csv, fv_per_task.csv and a heat map per score in ``out``.

    protocol: ``"published"`` (default), ``"iclscope"``, a dict of fields or an ``iclscope.tasks.Protocol``;
    score_tasks: the task names to score (default all). Folder config (a change is refused): command, model,
    revision, dtype, tasks, task_names, protocol, score_tasks. Stages: "attention" (n, half, seed, induction
    definition) and "fv-<task>" per task (task, k, n_clean, n_corrupt, seed, method, protocol)."""
    check_score_settings(k, n_clean, n_corrupt, seed)
    protocol = Protocol.make(protocol)
    model = model or _load(model_spec, revision, dtype, device)
    k = default_shots(model, k)
    tasks = default_tasks(model, tasks_dir)
    if score_tasks is not None:
        tasks, _, _ = split_tasks(tasks, score_tasks, score_tasks)
    with ResultsDir(out, folder_config("scores", model_spec, revision, dtype, tasks_dir, tasks, protocol,
                                       score_tasks=None if score_tasks is None else list(tasks)),
                    command="scores") as res:
        table, _ = score_heads(model, tasks, res, k, n_clean, n_corrupt, seed, log, protocol)
        _heatmaps(res, table, ("induction", "prev_token", "duplicate", "fv"), lambda c: f"{model_spec}: {c} score")
        res.mark_finished()
        log(f"results in {res.path}/ (heads.csv, heat maps)")
    return table


def ranking_key(seed: int, score_tasks, k: int, n_clean: int, n_corrupt: int, protocol=None) -> dict:
    """The inputs of the head rankings (the attention and FV stage keys) as part of a later stage's key."""
    return {"attention": attention_key(seed, protocol),
            "fv": [fv_key(t, k, n_clean, n_corrupt, seed, protocol) for t in sorted(score_tasks)]}


def run_atlas(model_spec: str, out: str | Path, tasks_dir=None, revision=None, dtype=None, device=None,
              device_map=None, k: int | None = None, n_clean: int = 100, n_corrupt: int = 25, n_eval: int = 50,
              fractions=FRACTIONS, how: str = "mean", positions: str = "final", random_seeds: int = 5,
              seed: int = 0, log=print, model=None, protocol=None, score_tasks=None, eval_tasks=None,
              measures=DEFAULT_MEASURES, text_dir=None) -> dict:
    """``iclscope atlas``: scores, the ablation study, function vectors, figures and one HTML report.

    protocol: ``"published"`` (default), ``"iclscope"``, a dict of fields or an ``iclscope.tasks.Protocol``
    (docs/protocol.md). score_tasks / eval_tasks: the task names that score and that evaluate (default the
    alphabetical halves; unknown names are refused in one line). Folder config (a change is refused, naming
    the keys): command, model, revision, dtype, tasks, task_names, protocol, score_tasks, eval_tasks. Stages, each reused when finished with the same key: "attention" (n, half, seed),
    "fv-<task>" per scoring task (task, k, n_clean, n_corrupt, seed, method), "ablation" (fractions, how,
    positions, exclusion, random_seeds, n_eval, k, eval seed, evaluation tasks, ranking inputs) and
    "function_vectors" (n, k, seed, top, evaluation tasks, ranking inputs). Every input is checked before
    the folder is opened; the finished marker is written last."""
    t0 = time.time()
    check_score_settings(k, n_clean, n_corrupt, seed)
    fractions = check_ablation_settings(fractions, how, positions, random_seeds, n_eval)
    measures = check_measures(measures, text_dir)  # ablation measures (docs/ablation.md)
    protocol = Protocol.make(protocol)
    model = model or _load(model_spec, revision, dtype, device, device_map)
    k = default_shots(model, k)
    tasks = default_tasks(model, tasks_dir)
    score_t, eval_t, disjoint = split_tasks(tasks, score_tasks, eval_tasks)
    with ResultsDir(out, folder_config("atlas", model_spec, revision, dtype, tasks_dir, tasks, protocol,
                                       list(score_t), list(eval_t)),
                    command="atlas") as res:
        log(f"atlas of {model_spec} ({model.n_layers} layers x {model.n_heads} heads); scoring tasks: "
            f"{', '.join(score_t)}; evaluation tasks: {', '.join(eval_t)}"
            + ("" if disjoint else " (overlapping: fewer than 4 tasks, or chosen so)"))
        return _atlas(model, model_spec, res, score_t, eval_t, disjoint, k, n_clean, n_corrupt, n_eval, fractions,
                      how, positions, random_seeds, seed, log, t0, protocol, measures, text_dir)


def _atlas(model, model_spec, res, score_t, eval_t, disjoint, k, n_clean, n_corrupt, n_eval, fractions, how,
           positions, random_seeds, seed, log, t0, protocol, measures=DEFAULT_MEASURES, text_dir=None) -> dict:
    table, _ = score_heads(model, score_t, res, k, n_clean, n_corrupt, seed, log, protocol)
    figs = _heatmaps(res, table, ("induction", "fv", "prev_token"), lambda c: f"{c} score")
    from ...report.figures.atlas import score_heatmaps
    figs["scores"] = score_heatmaps(table, res.file("scores.png"))
    n_top = max(1, round(0.02 * len(table)))
    figs["scatter"] = scatter_and_layers(table, res.file("induction_vs_fv.png"), model.n_layers, max(n_top, 3))
    top_ind = set(ranked_heads(score_grid(table, "induction", model))[:max(n_top, 3)])
    top_fv = set(ranked_heads(score_grid(table, "fv", model))[:max(n_top, 3)])
    overlap = {"top_k": max(n_top, 3), "induction": sorted(top_ind), "fv": sorted(top_fv),
               "overlap": sorted(top_ind & top_fv),
               "spearman_induction_fv": float(pd.Series(table.induction).rank().corr(pd.Series(table.fv).rank()))}
    ranks = ranking_key(seed, score_t, k, n_clean, n_corrupt, protocol)
    st = res.stage("ablation", {"fractions": list(fractions), "how": how, "positions": positions, "exclusion": 0.02,
                                "random_seeds": random_seeds, "n_eval": n_eval, "k": k, "eval_seed": seed + 1,
                                "eval_tasks": sorted(eval_t), "ranking": ranks,
                                "measures": list(measures), "text_dir": None if text_dir is None else str(text_dir)})
    log("  " + st.describe())
    if not st.done:
        eval_prompts = {n: build_eval_prompts(model, t, k, n_eval, seed + 1, protocol) for n, t in eval_t.items()}
        eval_prompts.update(copy_prompts(model, n_eval, seed + 1))
        abl_res = ablation_study(model, eval_prompts, table, fractions, how, positions, random_seeds=random_seeds,
                                 log=log, measures=measures, text_dir=text_dir)
        st.write_table("ablation.csv", abl_res.per_task)
        if abl_res.token_loss is not None:
            st.write_table("ablation_token_loss.csv", abl_res.token_loss)
        st.write_json("ablation_protocol.json", {**abl_res.protocol, "notes": abl_res.notes})
        st.finish()
    abl = pd.read_csv(st.file("ablation.csv"), dtype={"task": str, "ranking": str})
    res.write_table("ablation.csv", abl)
    abl_tl = pd.read_csv(st.file("ablation_token_loss.csv"), dtype={"ranking": str}) \
        if st.file("ablation_token_loss.csv").exists() else None
    if abl_tl is not None:
        res.write_table("ablation_token_loss.csv", abl_tl)
    abl_protocol = json.loads(st.file("ablation_protocol.json").read_text())
    res.write_json("ablation_protocol.json", abl_protocol)
    figs["ablation"] = ablation_figure(abl, res.file("ablation.png"),
                                       f"{how}-ablating the top heads ({positions} position)",
                                       token_loss=abl_tl)
    sf = res.stage("function_vectors", {"n": n_eval, "k": k, "seed": 1, "top": None, "eval_tasks": sorted(eval_t),
                                        "ranking": ranks, "fv_bias": protocol.fv_bias, "fv_layer": protocol.fv_layer})
    log("  " + sf.describe())
    if not sf.done:
        sf.write_table("function_vectors.csv", function_vectors(model, eval_t, table, k=k, n=n_eval,
                                                                protocol=protocol))
        sf.finish()
    fvt = pd.read_csv(sf.file("function_vectors.csv"), dtype={"task": str})
    res.write_table("function_vectors.csv", fvt)
    is_copy = abl.task.str.startswith("copy:")
    curve = abl[~is_copy].groupby(["ranking", "fraction"]).accuracy.mean().unstack(0)
    copy_curve = abl[is_copy].groupby(["ranking", "fraction"]).accuracy.mean().unstack(0) if is_copy.any() else None
    summary = {"model": str(model_spec), "heads": len(table), "top_heads": overlap,
               "top_head_evidence": top_head_evidence(table), "protocol": protocol.to_dict(),
               "max_induction": float(table.induction.max()), "max_fv": float(table.fv.max()),
               "accuracy_by_fraction": {r: {str(f): float(v) for f, v in curve[r].items()} for r in curve},
               "copy_accuracy_by_fraction": None if copy_curve is None else
               {r: {str(f): float(v) for f, v in copy_curve[r].items()} for r in copy_curve},
               "function_vectors": fv_summary(fvt), "disjoint_tasks": disjoint,
               "seconds": round(time.time() - t0, 1)}
    res.write_json("summary.json", summary)
    write_atlas_report(res, summary, table, abl, abl_tl, copy_curve, fvt, figs, abl_protocol,
                       run_metadata(started=t0, model=str(model_spec), prompts_per_task=n_eval,
                                    scoring_prompts=n_clean, shots=k, seeds=random_seeds,
                                    protocol=protocol_name(protocol)))
    res.mark_finished()
    log("accuracy on task prompts:\n" + curve.round(3).to_string())
    if copy_curve is not None:
        log("accuracy on copying prompts:\n" + copy_curve.round(3).to_string())
    log(f"top induction heads {sorted(top_ind)}; top FV heads {sorted(top_fv)}; overlap {sorted(top_ind & top_fv)}")
    log(summary["top_head_evidence"]["verdict"])
    fs = summary["function_vectors"]
    log(f"function vector ({fs['heads']} heads): {fs['verdict']}; zero-shot accuracy "
        f"{fs['zero_shot_acc']:.3f} -> {fs['with_fv_acc']:.3f} (few-shot {fs['few_shot_acc']:.3f})")
    log(f"results in {res.path}/ (report.html) in {summary['seconds']} s")
    return summary



# ------------------------------------------------------------------------------------------------ report

ABOUT = ("Induction score: attention from a token to the token after its previous occurrence, on repeated "
         "random tokens. FV score: the causal indirect effect of a head's task-mean output, patched into "
         "label-corrupted prompts, on the correct answer (Todd et al. 2024). Ablation: the top heads of each "
         "ranking replaced by their mean output; random head sets of the same size as the baseline.")


def protocol_name(protocol: Protocol) -> str:
    """"published", "iclscope" or "custom (fields in the settings)" for the run metadata."""
    if protocol == Protocol():
        return "published"
    if protocol == Protocol.iclscope():
        return "iclscope"
    return "custom (every field in the settings' protocol block)"


def _hn(head) -> str:
    return f"L{int(head[0])}H{int(head[1])}"


def _headline_fraction(fracs) -> float | None:
    """The ablated fraction the summary speaks of: the one nearest 10 % of heads (above 0)."""
    fr = sorted(f for f in set(map(float, fracs)) if f > 0)
    return min(fr, key=lambda f: abs(f - 0.1)) if fr else None


def atlas_findings(summary: dict, abl_sum: pd.DataFrame | None) -> list[Finding]:
    """The atlas's headline results, one sentence each with its uncertainty and baseline: the best
    induction and FV head against their baselines (``top_head_evidence``), the overlap of the two top
    sets, the accuracy left when the top heads of each kind are ablated against random heads (a t
    interval over seeds), and the function vector's best layer. ``abl_sum``: ``ablation_summary`` of the
    task prompts (None without an ablation)."""
    out: list[Finding] = []
    ev = summary.get("top_head_evidence") or {}
    z = ev.get("z_threshold", 2.0)
    for kind, name, against in (("induction", "induction", "the same targets on unrepeated tokens"),
                                ("fv", "FV", "zero")):
        e = ev.get(kind)
        if not e:
            continue
        sem = e["sem"] if e["sem"] is not None and np.isfinite(e["sem"]) else None
        out.append(Finding(
            f"The top {name} head is {_hn(e['head'])}: score {e['score']:.3g}, {e['excess']:.3g} above {against}"
            + ("." if e["distinguishable"] else f"; not distinguishable from its baseline (a top score of "
               f"{summary.get('heads', 'all')} heads needs > {z:.1f} SEM)."),
            value=e["excess"], interval=None if sem is None else (e["excess"] - z * sem, e["excess"] + z * sem),
            interval_kind=f"± {z:.1f} SEM", baseline=f"{against}: {e['baseline']:.3g}",
            within_noise=not e["distinguishable"]))
    th = summary.get("top_heads") or {}
    if th:
        n, k, ov = summary.get("heads"), th["top_k"], len(th["overlap"])
        exp = k * k / n if n else None
        out.append(Finding(
            f"{ov} of the top {k} induction heads {'is' if ov == 1 else 'are'} also top {k} FV heads"
            + (f" ({', '.join(_hn(h) for h in th['overlap'])})" if ov else "")
            + f"; rank correlation of the two scores over all heads: {th['spearman_induction_fv']:.2f}.",
            value=ov, baseline=None if exp is None else f"random {k}-sets overlap by {exp:.2g} on average",
            within_noise=exp is not None and ov <= max(1.0, 2 * exp)))
    if abl_sum is not None and len(abl_sum):
        f = _headline_fraction(abl_sum.fraction)
        at = abl_sum[abl_sum.fraction == f] if f is not None else abl_sum.iloc[:0]
        base = abl_sum[abl_sum.fraction == 0]
        none = float(base.accuracy.mean()) if len(base) else None
        rnd = at[at.ranking == "random"]
        for ranking, name in (("fv", "FV"), ("induction", "induction")):
            r = at[at.ranking == ranking]
            if not len(r):
                continue
            acc, k = float(r.accuracy.iloc[0]), int(r.k.iloc[0])
            if len(rnd) and np.isfinite(rnd.ci_low.iloc[0]):
                lo, hi, rm = float(rnd.ci_low.iloc[0]), float(rnd.ci_high.iloc[0]), float(rnd.accuracy.iloc[0])
                base_txt = f"random {k} head{'' if k == 1 else 's'}: {rm:.2f} (95 % t interval {lo:.2f} to {hi:.2f}, {int(rnd.n_seeds.iloc[0])} seeds)"
                noise = lo <= acc <= hi
            elif len(rnd):
                base_txt, noise = f"random {k} heads: {float(rnd.accuracy.iloc[0]):.2f} (one seed, no interval)", True
            else:
                base_txt, noise = None, True
            out.append(Finding(
                f"Ablating the top {k} {name} head{'' if k == 1 else 's'} ({100 * f:.0f} % of heads) leaves few-shot accuracy at {acc:.2f}"
                + (f" (nothing ablated: {none:.2f})" if none is not None else "")
                + ("; within the random heads' interval." if noise else "."),
                value=acc, baseline=base_txt, within_noise=noise))
    fs = summary.get("function_vectors")
    if fs:
        out.append(Finding(
            f"Adding the function vector ({fs['heads']} heads) at layer {fs['best_layer']} moves zero-shot accuracy "
            f"from {fs['zero_shot_acc']:.2f} to {fs['with_fv_acc']:.2f} (few-shot: {fs['few_shot_acc']:.2f})"
            + ("." if fs["distinguishable"] else "; no layer's gain is distinguishable from zero."),
            value=fs["gain"], interval=(fs["gain"] - 2 * fs["gain_sem"], fs["gain"] + 2 * fs["gain_sem"]),
            interval_kind="± 2 SEM", baseline=f"zero gain; spread over tasks {fs['gain_task_std']:.2f}",
            within_noise=not fs["distinguishable"]))
    return out


def write_atlas_report(res, summary: dict, table: pd.DataFrame, abl: pd.DataFrame, abl_tl, copy_curve, fvt,
                       figs: dict, abl_protocol: dict, metadata: dict) -> Path:
    """The atlas's report.html: the findings first, then the scores (scatter, heat maps), the top heads,
    the ablation study, the function vectors and every head's scores."""
    from ...report.figures.atlas import ablation_wide

    is_copy = abl.task.str.startswith("copy:")
    abl_sum = ablation_summary(abl[~is_copy]) if len(abl) else None
    th = summary["top_heads"]
    top = pd.DataFrame([{"rank": i + 1, "top induction": _hn(a), "top FV": _hn(b)}
                        for i, (a, b) in enumerate(zip(th["induction"], th["fv"]))])
    fs = summary["function_vectors"]
    tasks_note = ("Scoring and evaluation tasks are disjoint." if summary.get("disjoint_tasks") else
                  "Scoring and evaluation tasks overlap (fewer than 4 tasks, or chosen so).")
    return write_report(res.file("report.html"), f"Head atlas: {summary['model']}", [
        {"heading": "Induction and FV heads", "text": ABOUT + " " + tasks_note, "figure": figs["scatter"]},
        {"heading": "Every head's scores", "figure": figs.get("scores") or figs["induction"],
         "caption": "Induction, FV and previous-token scores of every head (layer x head)."},
        {"heading": "Top heads", "text": f"The top {th['top_k']} heads by each score (2 % of heads, at least 3); "
         "the summary says whether the best of each clears its baseline.", "table": top},
        {"heading": "Ablation study", "figure": figs["ablation"],
         "text": f"Random heads: mean over seeds with a {abl_protocol['interval']}. " + " ".join(abl_protocol["notes"]),
         "table": None if abl_sum is None else ablation_wide(abl_sum)},
        *([{"heading": "Ablation study: token-loss difference (ablated at every position)",
            "table": ablation_wide(ablation_summary(abl_tl, "difference"), "difference")}] if abl_tl is not None else []),
        *([{"heading": "Ablation study: copying prompts (fresh mapping, repeated query)",
            "table": copy_curve.reset_index()}] if copy_curve is not None else []),
        {"heading": "Function vectors",
         "text": f"The FV added to zero-shot prompts at the final position; {fs['layer_convention']}; accuracy by "
                 f"layer, mean over tasks. {fs['verdict'][:1].upper() + fs['verdict'][1:]}.",
         "table": fvt.groupby("layer")[["zero_shot_acc", "with_fv_acc", "few_shot_acc"]].mean().reset_index()},
        {"heading": "All heads", "table": table},
    ], findings=atlas_findings(summary, abl_sum), metadata=metadata)
