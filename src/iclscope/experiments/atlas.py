"""The head atlas: score every head as an induction head and as a function-vector (FV) head, ablate the
top heads of each kind, and build function vectors (Yin & Steinhardt 2025; Todd et al. 2024).

Results folder (an ``iclscope.report.ResultsDir``: a non-empty folder iclscope did not make is refused
untouched; each stage's table is written atomically as soon as it is done and reused on a rerun when the
settings it depends on are the same, so a killed run loses at most the stage it was in; the top-level
tables are rebuilt from the stages on every run; see ``run_atlas`` for the stage keys):

    heads.csv            layer, head, induction, induction_segments, prev_token, duplicate, fv, fv_task_std
    fv_per_task.csv      task, layer, head, score, sem
    ablation.csv         ranking, fraction, k, seed, task, accuracy
    function_vectors.csv task, layer, zero_shot_acc, with_fv_acc, few_shot_acc
    *.png, report.html

Task sets. Scoring tasks and evaluation tasks are kept disjoint: the FV scores come from the first half
of the tasks (``score_tasks``), the ablation study evaluates on the other half; with fewer than 4 tasks
every task is used for both, and the report says so.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import Ablate, AddVector
from ..data.synthetic import random_segment_repeats, repeated_random_tokens
from ..errors import IclscopeError
from ..evaluate import icl_accuracy
from ..report import ResultsDir, write_report
from ..report.figures import ablation_panel, head_heatmap, save_figure, short_name
from ..scores.attention import duplicate_token_scores, induction_scores, prev_token_scores
from ..scores.fv import fv_prompts, fv_scores
from ..tasks.core import Task, TokenTask, build_prompts, build_token_prompts, load_tasks
from ..tasks.synthetic import synthetic_token_tasks

FRACTIONS = (0.0, 0.01, 0.03, 0.05, 0.07, 0.09, 0.15, 0.20)


# ----------------------------------------------------------------------------------------------------
# Tasks for a model
# ----------------------------------------------------------------------------------------------------


def token_layout(model) -> dict:
    """Special ids for token tasks on ``model``: the testbed's (SEP 0, BOS 1, words from 2) when the model
    was trained by iclscope on token tasks, else ids picked from the model's own vocabulary."""
    meta = getattr(model, "meta", {}) or {}
    if "token_layout" in meta:
        return dict(meta["token_layout"])
    V = model.vocab_size
    n_words = min(64, max(8, (V - 4) // 2))
    bos = model.bos_token_id
    sep = 0 if bos != 0 else 1
    offset = 2 if V > 2 + n_words else 0
    return {"sep_id": sep, "bos_id": bos, "pad_id": sep, "word_offset": offset, "n_words": n_words}


def default_tasks(model, tasks_dir: str | Path | None = None, n_tasks: int = 8, seed: int = 0) -> dict[str, Any]:
    """Word tasks from ``tasks_dir`` (Todd format) if given, else the built-in synthetic token tasks."""
    if tasks_dir is not None:
        tasks = load_tasks(tasks_dir)
        if model.tokenizer is None and any(isinstance(t, Task) for t in tasks.values()):
            raise IclscopeError(f"{tasks_dir} holds word tasks, but the model has no tokenizer; leave --tasks out "
                                f"to use the built-in synthetic token tasks")
        return tasks
    lay = token_layout(model)
    return {t.name: t for t in synthetic_token_tasks(lay.get("n_tasks", n_tasks), lay["n_words"],
                                                     seed=lay.get("task_seed", seed), word_offset=lay["word_offset"])}


def build_eval_prompts(model, task, k: int, n: int, seed: int):
    if isinstance(task, TokenTask):
        lay = token_layout(model)
        return build_token_prompts(task, k=k, n=n, seed=seed, sep_id=lay["sep_id"], bos_id=lay["bos_id"],
                                   pad_id=lay["pad_id"])
    return build_prompts(task, model.tokenizer, k=k, n=n, seed=seed)


def copy_prompts(model, n: int, seed: int) -> dict:
    """For a model trained by iclscope on the token mixture: prompts of a fresh random mapping whose query
    repeats a demonstration ("copy:fresh_repeat"), answerable only by copying (the induction route),
    beside the task prompts with novel queries (the FV route). Other models: none."""
    lay = (getattr(model, "meta", {}) or {}).get("token_layout")
    if not lay or "k" not in lay:
        return {}
    from ..data.mixture import MixtureConfig, MixtureData
    data = MixtureData(MixtureConfig(n_words=lay["n_words"], n_tasks=lay["n_tasks"], task_seed=lay["task_seed"],
                                     k=lay["k"]))
    batch = data.condition("fresh_repeat", n, torch.Generator().manual_seed(seed))
    return {"copy:fresh_repeat": batch.to_prompt_batch("copy:fresh_repeat")}


def _fv_kwargs(model, tasks) -> dict:
    if any(isinstance(t, TokenTask) for t in tasks.values()):
        lay = token_layout(model)
        return {"sep_id": lay["sep_id"], "bos_id": lay["bos_id"], "pad_id": lay["pad_id"]}
    return {}


def split_tasks(tasks: dict) -> tuple[dict, dict, bool]:
    """(scoring tasks, evaluation tasks, disjoint?)."""
    names = sorted(tasks)
    if len(names) < 4:
        return tasks, tasks, False
    half = len(names) // 2
    return {n: tasks[n] for n in names[:half]}, {n: tasks[n] for n in names[half:]}, True


# ----------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------


def attention_table(model, n: int = 200, half: int = 50, seed: int = 0, batch_size: int = 16) -> pd.DataFrame:
    """Induction, previous-token and duplicate-token scores of every head on [BOS, r1..rL, r1..rL] built
    from token ids (never decoded and re-tokenised), plus induction on sequences whose repeated segment
    has random length and position (a purely positional head scores high only on the former)."""
    g = torch.Generator().manual_seed(seed)
    bos = model.bos_token_id
    lay = token_layout(model) if model.tokenizer is None else None
    lo = lay["word_offset"] if lay else 0
    V = model.vocab_size
    half = min(half, (V - lo - 1) // 1)
    if model.n_ctx is not None:  # [BOS] + 2 * half tokens, and the segment sequences (one longer), must fit
        half = min(half, (model.n_ctx - 1 - (bos is not None)) // 2)
    sums = {k: torch.zeros(model.n_layers, model.n_heads) for k in ("induction", "prev_token", "duplicate",
                                                                     "induction_segments")}
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        toks = repeated_random_tokens(b, half, V, g, bos_id=bos, min_token=lo).to(model.device)
        first = 2 if bos is not None else 1
        sums["induction"] += induction_scores(model, toks) * b
        sums["prev_token"] += prev_token_scores(model, toks, first=first) * b
        sums["duplicate"] += duplicate_token_scores(model, toks) * b
        seg = random_segment_repeats(b, toks.shape[1], V, g, bos_id=bos, min_token=lo).to(model.device)
        sums["induction_segments"] += induction_scores(model, seg).nan_to_num(0.0) * b
        done += b
    rows = []
    for layer in range(model.n_layers):
        for h in range(model.n_heads):
            rows.append({"layer": layer, "head": h, **{k: float(v[layer, h] / n) for k, v in sums.items()}})
    return pd.DataFrame(rows)


ATTENTION_N, ATTENTION_HALF = 200, 50  # repeated-token sequences and half length of the attention scores
FV_METHOD = "exact"  # ``fv_scores`` (exact patching of the final token)


def attention_key(seed: int) -> dict:
    """What the attention scores depend on (besides the model): the stage key of "attention"."""
    return {"n": ATTENTION_N, "half": ATTENTION_HALF, "seed": int(seed)}


def fv_key(task: str, k: int, n_clean: int, n_corrupt: int, seed: int) -> dict:
    """What one task's FV scores depend on (besides the model): the stage key of "fv-<task>"."""
    return {"task": str(task), "k": int(k), "n_clean": int(n_clean), "n_corrupt": int(n_corrupt),
            "seed": int(seed), "method": FV_METHOD}


def fv_stage_name(task: str) -> str:
    return f"fv-{task}"


def _read_fv(stage) -> pd.DataFrame:
    return pd.read_csv(stage.file("fv.csv"), dtype={"task": str})


def score_heads(model, tasks: dict, res: ResultsDir, k: int = 10, n_clean: int = 100, n_corrupt: int = 25,
                seed: int = 0, log=print) -> tuple[pd.DataFrame, Any]:
    """heads.csv (attention scores + FV scores over ``tasks``) and fv_per_task.csv in ``res``.

    Stages (each reused when it finished before with exactly its key, else (re)computed; one line each
    to ``log``): "attention" (key ``attention_key(seed)``: attention.csv) and, per task, "fv-<task>"
    (key ``fv_key(...)``: fv.csv with task, layer, head, score, sem). A killed run keeps every stage
    finished before the kill. heads.csv and fv_per_task.csv are rebuilt from the stages on every run.
    Returns (heads table, per-task FV table)."""
    st = res.stage("attention", attention_key(seed))
    log("  " + st.describe())
    if st.done:
        table = st.read_table("attention.csv")
    else:
        t0 = time.time()
        table = attention_table(model, n=ATTENTION_N, half=ATTENTION_HALF, seed=seed)
        st.write_table("attention.csv", table)
        st.finish()
        table = st.read_table("attention.csv")  # what a rerun reads back: the same numbers either way
        log(f"  induction / previous-token / duplicate scores: {time.time() - t0:.1f} s")
    per_task = []
    for name, task in tasks.items():  # one task at a time: finished tasks stay written
        s = res.stage(fv_stage_name(name), fv_key(name, k, n_clean, n_corrupt, seed))
        log("  " + s.describe())
        if s.done:
            per_task.append(_read_fv(s))
            continue
        t1 = time.time()
        pairs = fv_prompts(model, [task], k=k, n_clean=n_clean, n_corrupt=n_corrupt, seed=seed,
                           **_fv_kwargs(model, {name: task}))
        r = fv_scores(model, pairs, progress=False)
        df = r.to_frame()
        df = df[df.task != "mean"].reset_index(drop=True)
        df["task"] = df.task.astype(str)
        s.write_table("fv.csv", df)
        s.finish()
        per_task.append(_read_fv(s))  # what a rerun reads back: the same numbers either way
        log(f"  FV scores, task {name}: {time.time() - t1:.1f} s, best head "
            f"{tuple(int(v) for v in df.loc[df.score.idxmax(), ['layer', 'head']])} ({df.score.max():.4f})")
    if not per_task:
        raise IclscopeError("no tasks to score")
    long = pd.concat(per_task, ignore_index=True)
    res.write_table("fv_per_task.csv", long)
    wide = long.pivot_table(index=["layer", "head"], columns="task", values="score")
    table = table.copy()
    table["fv"] = wide.mean(axis=1).to_numpy()
    table["fv_task_std"] = wide.std(axis=1, ddof=1).fillna(0).to_numpy()
    res.write_table("heads.csv", table)
    return table, long


def _grid(table: pd.DataFrame, col: str, model) -> torch.Tensor:
    g = torch.full((model.n_layers, model.n_heads), float("nan"))
    g[torch.tensor(table.layer.to_numpy()), torch.tensor(table["head"].to_numpy())] = torch.tensor(table[col].to_numpy(copy=True), dtype=torch.float32)
    return g


# ----------------------------------------------------------------------------------------------------
# Ablation study
# ----------------------------------------------------------------------------------------------------


def ranked_heads(scores: torch.Tensor, exclude: list | None = None) -> list[tuple[int, int]]:
    """Heads by descending score (NaN last), without ``exclude``."""
    H = scores.shape[1]
    order = scores.flatten().nan_to_num(float("-inf")).argsort(descending=True, stable=True).tolist()
    ex = set(map(tuple, exclude or []))
    return [(i // H, i % H) for i in order if (i // H, i % H) not in ex]


def ablation_study(model, eval_prompts: dict, table: pd.DataFrame, fractions=FRACTIONS, how: str = "mean",
                   positions: str = "final", exclusion: float = 0.02, random_seeds: int = 5, log=print) -> pd.DataFrame:
    """Few-shot accuracy with the top-k heads ablated, for k a fraction of all heads.

    Rankings: induction, fv, induction with exclusion (the top ``exclusion`` fraction by FV score dropped
    from the candidates first), fv with exclusion (likewise by induction score), and random heads over
    ``random_seeds`` seeds. Mean ablation uses the task-agnostic mean of each head's output at the final
    position over every evaluation prompt (as in the study); ``how="zero"`` zero-ablates;
    ``positions="all"`` ablates every position (with the mean over positions)."""
    n_total = model.n_layers * model.n_heads
    ind, fv = _grid(table, "induction", model), _grid(table, "fv", model)
    n_ex = max(1, round(exclusion * n_total))
    rankings = {"induction": ranked_heads(ind), "fv": ranked_heads(fv),
                "induction (excl. top FV)": ranked_heads(ind, ranked_heads(fv)[:n_ex]),
                "fv (excl. top induction)": ranked_heads(fv, ranked_heads(ind)[:n_ex])}
    all_heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    for s in range(random_seeds):
        rankings[f"random#{s}"] = random.Random(s).sample(all_heads, len(all_heads))
    pos = [-1] if positions == "final" else None
    mean = None
    if how == "mean":
        from ..models import head_means
        with torch.no_grad():
            sums, count = None, 0
            for batch in eval_prompts.values():
                inputs = {"input_ids": batch.input_ids.to(model.device), "attention_mask": batch.attention_mask.to(model.device)}
                m = head_means(model, [inputs], positions=pos)
                sums = m * len(batch) if sums is None else sums + m * len(batch)
                count += len(batch)
            mean = sums / count
    rows = []
    from tqdm.auto import tqdm
    bar = tqdm(total=len(rankings) * len(fractions), desc="ablation study", unit="setting", leave=False)
    base_acc = {}
    for name, order in rankings.items():
        for frac in fractions:
            k = int(round(frac * n_total))
            if k == 0 and name in base_acc:
                accs = base_acc[name]
            else:
                ivs = [Ablate(order[:k], how=how, mean=mean, positions=pos)] if k else []
                accs = {t: icl_accuracy(model, b, interventions=ivs)["accuracy"] for t, b in eval_prompts.items()}
                if k == 0:
                    base_acc[name] = accs
            ranking, seed = (name.split("#")[0], int(name.split("#")[1])) if "#" in name else (name, -1)
            for t, a in accs.items():
                rows.append({"ranking": ranking, "fraction": frac, "k": k, "seed": seed, "task": t, "accuracy": a})
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# Function vectors
# ----------------------------------------------------------------------------------------------------


def function_vector(model, means: torch.Tensor, heads: list) -> torch.Tensor:
    """Sum over ``heads`` of each head's mean output written into the residual stream:
    out_proj(layer, z with only head h = means[l, h]) - out_proj(layer, 0). means: (L, H, D). -> (d_model,)."""
    fv = torch.zeros(model.d_model)
    with torch.no_grad():
        for layer, h in heads:
            z = torch.zeros(model.n_heads, model.d_head, dtype=model.dtype, device=model.device)
            zero = model.out_proj(layer, z)
            z[h] = means[layer, h].to(model.device, model.dtype)
            fv += (model.out_proj(layer, z) - zero).float().cpu()
    return fv


def function_vectors(model, tasks: dict, table: pd.DataFrame, top: int | None = None, layers=None,
                     n: int = 50, k: int = 10, seed: int = 1) -> pd.DataFrame:
    """For each task and each layer in ``layers`` (default: every layer): an FV from the ``top`` FV heads
    (default 10 % of all heads, at least 3, at most 10, as Todd et al.'s 10 heads) built from the task's
    means over clean k-shot prompts, added at that layer at the final position of zero-shot prompts.
    Rows: task, layer, heads, zero_shot_acc, with_fv_acc, few_shot_acc."""
    n_total = model.n_layers * model.n_heads
    top = top or min(10, max(3, round(0.1 * n_total)))
    layers = range(model.n_layers) if layers is None else layers
    heads = ranked_heads(_grid(table, "fv", model))[:top]
    rows = []
    from ..models import head_means
    for name, task in tasks.items():
        few = build_eval_prompts(model, task, k, n, seed)
        zero = build_eval_prompts(model, task, 0, n, seed)
        with torch.no_grad():
            means = head_means(model, [{"input_ids": few.input_ids.to(model.device),
                                        "attention_mask": few.attention_mask.to(model.device)}], positions=[-1])
        vec = function_vector(model, means, heads).to(model.device, model.dtype)
        zero_acc, few_acc = icl_accuracy(model, zero)["accuracy"], icl_accuracy(model, few)["accuracy"]
        for layer in layers:
            rows.append({"task": name, "layer": layer, "heads": len(heads), "zero_shot_acc": zero_acc,
                         "with_fv_acc": icl_accuracy(model, zero, interventions=[AddVector(layer, vec, positions=[-1])])["accuracy"],
                         "few_shot_acc": few_acc})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------


def fv_summary(fvt: pd.DataFrame) -> dict:
    """The best layer for adding the FV and the accuracy change there (means over tasks)."""
    by = fvt.groupby("layer")[["zero_shot_acc", "with_fv_acc", "few_shot_acc"]].mean()
    best = int(by.with_fv_acc.idxmax())
    return {"best_layer": best, "heads": int(fvt.heads.iloc[0]), "zero_shot_acc": float(by.zero_shot_acc[best]),
            "with_fv_acc": float(by.with_fv_acc[best]), "few_shot_acc": float(by.few_shot_acc[best])}


def ablation_figure(df: pd.DataFrame, path: Path, title: str) -> Path:
    """Accuracy against fraction ablated, one line per ranking; one panel for the task prompts and, when
    present, one for the copying prompts ("copy:" tasks)."""
    import matplotlib.pyplot as plt

    groups = [("task prompts (novel queries)" if df.task.str.startswith("copy:").any() else "task prompts",
               df[~df.task.str.startswith("copy:")])]
    if df.task.str.startswith("copy:").any():
        groups.append(("fresh mapping, repeated query (copying)", df[df.task.str.startswith("copy:")]))
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    for ax, (label, part) in zip(axes[0], groups):
        ablation_panel(ax, part, f"{title}\n{label}")
    return save_figure(fig, path)


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


# ----------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------


def _load(spec, revision=None, dtype=None, device=None, device_map=None):
    from .. import load
    return load(spec, revision=revision, dtype=dtype, device=device, device_map=device_map)


def default_shots(model, k: int | None) -> int:
    """10 (the study's), or the k an iclscope token model was trained with."""
    if k is not None:
        return k
    lay = (getattr(model, "meta", {}) or {}).get("token_layout") or {}
    return int(lay.get("k", 10))


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


def folder_config(command: str, model_spec, revision, dtype, tasks_dir, tasks: dict) -> dict:
    """What defines a scores / atlas folder: the command, the model (spec, revision, dtype) and the task set.
    Everything else is a stage key (a change recomputes that stage; a change here is refused)."""
    return {"command": command, "model": str(model_spec), "revision": revision,
            "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
            "tasks": str(tasks_dir), "task_names": sorted(tasks)}


def _heatmaps(res: ResultsDir, table: pd.DataFrame, cols, title) -> dict:
    return {c: head_heatmap(table, c, res.file(f"{c}.png"), title=title(c)) for c in cols}


def run_scores(model_spec: str, out: str | Path, tasks_dir=None, revision=None, dtype=None, device=None,
               k: int | None = None, n_clean: int = 100, n_corrupt: int = 25, seed: int = 0, log=print,
               model=None) -> pd.DataFrame:
    """``iclscope scores``: heads.csv, fv_per_task.csv and a heat map per score in ``out``.

    Folder config (a change is refused): command, model, revision, dtype, tasks, task_names. Stages:
    "attention" (n, half, seed) and "fv-<task>" per task (task, k, n_clean, n_corrupt, seed, method)."""
    check_score_settings(k, n_clean, n_corrupt, seed)
    model = model or _load(model_spec, revision, dtype, device)
    k = default_shots(model, k)
    tasks = default_tasks(model, tasks_dir)
    with ResultsDir(out, folder_config("scores", model_spec, revision, dtype, tasks_dir, tasks),
                    command="scores") as res:
        table, _ = score_heads(model, tasks, res, k, n_clean, n_corrupt, seed, log)
        _heatmaps(res, table, ("induction", "prev_token", "duplicate", "fv"), lambda c: f"{model_spec}: {c} score")
        res.mark_finished()
        log(f"results in {res.path}/ (heads.csv, heat maps)")
    return table


def ranking_key(seed: int, score_tasks, k: int, n_clean: int, n_corrupt: int) -> dict:
    """The inputs of the head rankings (the attention and FV stage keys) as part of a later stage's key."""
    return {"attention": attention_key(seed),
            "fv": [fv_key(t, k, n_clean, n_corrupt, seed) for t in sorted(score_tasks)]}


def run_atlas(model_spec: str, out: str | Path, tasks_dir=None, revision=None, dtype=None, device=None,
              device_map=None, k: int | None = None, n_clean: int = 100, n_corrupt: int = 25, n_eval: int = 50,
              fractions=FRACTIONS, how: str = "mean", positions: str = "final", random_seeds: int = 5,
              seed: int = 0, log=print, model=None) -> dict:
    """``iclscope atlas``: scores, the ablation study, function vectors, figures and one HTML report.

    Folder config (a change is refused, naming the keys): command, model, revision, dtype, tasks,
    task_names. Stages, each reused when finished with the same key: "attention" (n, half, seed),
    "fv-<task>" per scoring task (task, k, n_clean, n_corrupt, seed, method), "ablation" (fractions, how,
    positions, exclusion, random_seeds, n_eval, k, eval seed, evaluation tasks, ranking inputs) and
    "function_vectors" (n, k, seed, top, evaluation tasks, ranking inputs). Every input is checked before
    the folder is opened; the finished marker is written last."""
    t0 = time.time()
    check_score_settings(k, n_clean, n_corrupt, seed)
    fractions = check_ablation_settings(fractions, how, positions, random_seeds, n_eval)
    model = model or _load(model_spec, revision, dtype, device, device_map)
    k = default_shots(model, k)
    tasks = default_tasks(model, tasks_dir)
    score_t, eval_t, disjoint = split_tasks(tasks)
    with ResultsDir(out, folder_config("atlas", model_spec, revision, dtype, tasks_dir, tasks),
                    command="atlas") as res:
        log(f"atlas of {model_spec} ({model.n_layers} layers x {model.n_heads} heads); scoring tasks: "
            f"{', '.join(score_t)}; evaluation tasks: {', '.join(eval_t)}"
            + ("" if disjoint else " (the same: < 4 tasks)"))
        return _atlas(model, model_spec, res, score_t, eval_t, disjoint, k, n_clean, n_corrupt, n_eval, fractions,
                      how, positions, random_seeds, seed, log, t0)


def _atlas(model, model_spec, res, score_t, eval_t, disjoint, k, n_clean, n_corrupt, n_eval, fractions, how,
           positions, random_seeds, seed, log, t0) -> dict:
    table, _ = score_heads(model, score_t, res, k, n_clean, n_corrupt, seed, log)
    figs = _heatmaps(res, table, ("induction", "fv", "prev_token"), lambda c: f"{c} score")
    figs["scatter"] = scatter_and_layers(table, res.file("induction_vs_fv.png"), model.n_layers)
    n_top = max(1, round(0.02 * len(table)))
    top_ind = set(ranked_heads(_grid(table, "induction", model))[:max(n_top, 3)])
    top_fv = set(ranked_heads(_grid(table, "fv", model))[:max(n_top, 3)])
    overlap = {"top_k": max(n_top, 3), "induction": sorted(top_ind), "fv": sorted(top_fv),
               "overlap": sorted(top_ind & top_fv),
               "spearman_induction_fv": float(pd.Series(table.induction).rank().corr(pd.Series(table.fv).rank()))}
    ranks = ranking_key(seed, score_t, k, n_clean, n_corrupt)
    st = res.stage("ablation", {"fractions": list(fractions), "how": how, "positions": positions, "exclusion": 0.02,
                                "random_seeds": random_seeds, "n_eval": n_eval, "k": k, "eval_seed": seed + 1,
                                "eval_tasks": sorted(eval_t), "ranking": ranks})
    log("  " + st.describe())
    if not st.done:
        eval_prompts = {n: build_eval_prompts(model, t, k, n_eval, seed + 1) for n, t in eval_t.items()}
        eval_prompts.update(copy_prompts(model, n_eval, seed + 1))
        abl = ablation_study(model, eval_prompts, table, fractions, how, positions, random_seeds=random_seeds, log=log)
        st.write_table("ablation.csv", abl)
        st.finish()
    abl = pd.read_csv(st.file("ablation.csv"), dtype={"task": str, "ranking": str})
    res.write_table("ablation.csv", abl)
    figs["ablation"] = ablation_figure(abl, res.file("ablation.png"),
                                       f"{short_name(model_spec)}: {how}-ablating the top heads ({positions} position)")
    sf = res.stage("function_vectors", {"n": n_eval, "k": k, "seed": 1, "top": None, "eval_tasks": sorted(eval_t),
                                        "ranking": ranks})
    log("  " + sf.describe())
    if not sf.done:
        sf.write_table("function_vectors.csv", function_vectors(model, eval_t, table, k=k, n=n_eval))
        sf.finish()
    fvt = pd.read_csv(sf.file("function_vectors.csv"), dtype={"task": str})
    res.write_table("function_vectors.csv", fvt)
    is_copy = abl.task.str.startswith("copy:")
    curve = abl[~is_copy].groupby(["ranking", "fraction"]).accuracy.mean().unstack(0)
    copy_curve = abl[is_copy].groupby(["ranking", "fraction"]).accuracy.mean().unstack(0) if is_copy.any() else None
    summary = {"model": str(model_spec), "heads": len(table), "top_heads": overlap,
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
        {"heading": "Top heads and their overlap", "text": json.dumps(overlap, default=str)},
        {"heading": "Ablation study", "figure": figs["ablation"], "table": curve.reset_index()},
        *([{"heading": "Ablation study: copying prompts (fresh mapping, repeated query)",
            "table": copy_curve.reset_index()}] if copy_curve is not None else []),
        {"heading": "Function vectors (added to zero-shot prompts; accuracy by layer, mean over tasks)",
         "table": fvt.groupby("layer")[["zero_shot_acc", "with_fv_acc", "few_shot_acc"]].mean().reset_index()},
        {"heading": "All heads", "table": table},
    ])
    res.mark_finished()
    log("accuracy on task prompts:\n" + curve.round(3).to_string())
    if copy_curve is not None:
        log("accuracy on copying prompts:\n" + copy_curve.round(3).to_string())
    log(f"top induction heads {sorted(top_ind)}; top FV heads {sorted(top_fv)}; overlap {sorted(top_ind & top_fv)}")
    fs = summary["function_vectors"]
    log(f"function vector ({fs['heads']} heads) at layer {fs['best_layer']}: zero-shot accuracy "
        f"{fs['zero_shot_acc']:.3f} -> {fs['with_fv_acc']:.3f} (few-shot {fs['few_shot_acc']:.3f})")
    log(f"results in {res.path}/ (report.html) in {summary['seconds']} s")
    return summary
