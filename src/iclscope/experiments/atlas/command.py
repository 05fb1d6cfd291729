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
from ...report import ResultsDir, write_report
from ...report.figures import head_heatmap, save_figure, short_name
from .ablation import DEFAULT_MEASURES, ablation_figure, ablation_study, ablation_summary, check_measures
from .scoring import score_grid, attention_key, fv_key, score_heads
from ...tasks.protocol import Protocol
from .tasks import FRACTIONS, build_eval_prompts, copy_prompts, default_shots, default_tasks, split_tasks
from .vectors import function_vectors, fv_summary


def scatter_and_layers(table: pd.DataFrame, path: Path, n_layers: int) -> Path:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    sc = a.scatter(table.induction, table.fv, c=table.layer / max(n_layers - 1, 1), cmap="viridis", s=18)
    a.set_xlabel("induction score")
    a.set_ylabel("FV score")
    a.set_title("every head (colour: relative depth)", fontsize=10)
    fig.colorbar(sc, ax=a, label="relative depth")
    depth = table.groupby("layer")[["induction", "fv"]].mean()
    rel = depth.index.to_numpy() / max(n_layers - 1, 1)
    for col in ("induction", "fv"):
        v = depth[col].to_numpy()
        b.plot(rel, v / (np.nanmax(np.abs(v)) or 1), marker="o", label=f"{col} (layer mean, scaled to max 1)")
    b.set_xlabel("relative depth")
    b.set_title("where each kind sits", fontsize=10)
    b.legend(fontsize=8)
    return save_figure(fig, path)


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
    figs["scatter"] = scatter_and_layers(table, res.file("induction_vs_fv.png"), model.n_layers)
    n_top = max(1, round(0.02 * len(table)))
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
                                       f"{short_name(model_spec)}: {how}-ablating the top heads ({positions} position)",
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
    write_report(res.file("report.html"), f"Head atlas: {model_spec}", [
        {"heading": "What ran", "text": __doc__},
        {"heading": "Scores", "text": "Induction: attention to the token after the previous occurrence of the current "
         "token on repeated random tokens. FV: the causal indirect effect of a head's task-mean output on "
         "label-corrupted prompts (Todd et al.).", "figure": figs["induction"]},
        {"figure": figs["fv"]}, {"figure": figs["scatter"]},
        {"heading": "Top heads and their overlap", "text": json.dumps(overlap, default=str) + "\n\n"
         + summary["top_head_evidence"]["verdict"]},
        {"heading": "Ablation study", "figure": figs["ablation"],
         "text": f"Random heads: mean over seeds with a {abl_protocol['interval']}. " + " ".join(abl_protocol["notes"]),
         "table": ablation_summary(abl[~is_copy])},
        *([{"heading": "Ablation study: token-loss difference (ablated at every position)",
            "table": ablation_summary(abl_tl, "difference")}] if abl_tl is not None else []),
        *([{"heading": "Ablation study: copying prompts (fresh mapping, repeated query)",
            "table": copy_curve.reset_index()}] if copy_curve is not None else []),
        {"heading": f"Function vectors (added to zero-shot prompts at the final position; "
                    f"{summary['function_vectors']['layer_convention']}; accuracy by layer, mean over tasks). "
                    f"{summary['function_vectors']['verdict']}",
         "table": fvt.groupby("layer")[["zero_shot_acc", "with_fv_acc", "few_shot_acc"]].mean().reset_index()},
        {"heading": "All heads", "table": table},
    ])
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

