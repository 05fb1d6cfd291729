"""Head scores as stages: attention scores (induction, previous-token, duplicate) from token ids, and FV
scores per task; each stage keyed by the settings it depends on."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from ...data.synthetic import random_segment_repeats, repeated_random_tokens
from ...errors import IclscopeError
from ...report import ResultsDir
from ...patterns import induction_targets
from ...scores.attention import attention_scores, duplicate_token_scores, induction_scores, prev_token_scores
from ...scores.fv import fv_prompts, fv_scores
from ...tasks.core import has_tokenizer
from ...tasks.protocol import Protocol
from .tasks import _fv_kwargs, token_layout


def attention_table(model, n: int = 200, half: int = 50, seed: int = 0, batch_size: int = 16,
                    induction: str = "iclscope") -> pd.DataFrame:
    """Induction, previous-token and duplicate-token scores of every head on [BOS, r1..rL, r1..rL] built
    from token ids (never decoded and re-tokenised), plus induction on sequences whose repeated segment
    has random length and position (a purely positional head scores high only on the former).

    ``induction``: the definition of the induction columns (``"iclscope"`` or ``"head_detector"``, see
    ``iclscope.scores.attention``). Two columns carry the uncertainty: ``induction_baseline``, the same score
    with the same targets on sequences whose second half is NOT a repeat (what a head gets from position
    alone: the random baseline), and ``induction_sem``, the standard error over batches of the induction
    score minus that baseline."""
    g = torch.Generator().manual_seed(seed)
    bos = model.bos_token_id
    lay = token_layout(model) if not has_tokenizer(model.tokenizer) else None
    lo = lay["word_offset"] if lay else 0
    V = model.vocab_size
    half = min(half, (V - lo - 1) // 1)
    if model.n_ctx is not None:  # [BOS] + 2 * half tokens, and the segment sequences (one longer), must fit
        half = min(half, (model.n_ctx - 1 - (bos is not None)) // 2)
    sums = {k: torch.zeros(model.n_layers, model.n_heads) for k in ("induction", "prev_token", "duplicate",
                                                                     "induction_segments", "induction_baseline")}
    diffs = []  # per batch: induction - baseline, (n_layers, n_heads)
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        toks = repeated_random_tokens(b, half, V, g, bos_id=bos, min_token=lo).to(model.device)
        first = 2 if bos is not None else 1
        ind = induction_scores(model, toks, definition=induction)
        # the baseline: the repeated sequences' targets, scored on sequences whose second half is fresh
        fresh = repeated_random_tokens(b, half, V, g, bos_id=bos, min_token=lo).to(model.device)
        fresh[:, -half:] = torch.randint(lo, V, (b, half), generator=g).to(model.device)
        base = _baseline(model, fresh, toks, induction)
        sums["induction"] += ind * b
        sums["induction_baseline"] += base * b
        diffs.append(ind - base)
        sums["prev_token"] += prev_token_scores(model, toks, first=first) * b
        sums["duplicate"] += duplicate_token_scores(model, toks) * b
        seg = random_segment_repeats(b, toks.shape[1], V, g, bos_id=bos, min_token=lo).to(model.device)
        sums["induction_segments"] += induction_scores(model, seg, definition=induction).nan_to_num(0.0) * b
        done += b
    d = torch.stack(diffs)
    sem = d.std(0, unbiased=True) / len(diffs) ** 0.5 if len(diffs) > 1 else torch.full_like(d[0], float("nan"))
    rows = []
    for layer in range(model.n_layers):
        for h in range(model.n_heads):
            rows.append({"layer": layer, "head": h, **{k: float(v[layer, h] / n) for k, v in sums.items()},
                         "induction_sem": float(sem[layer, h])})
    return pd.DataFrame(rows)


def _baseline(model, fresh: torch.Tensor, repeated: torch.Tensor, definition: str) -> torch.Tensor:
    """The induction score's targets (taken from the repeated sequences) scored on unrepeated ones."""
    if definition == "head_detector":
        from ...scores.attention import induction_detection_pattern

        with torch.no_grad():
            _, cache = model.run(fresh, record=["pattern"])
        det = induction_detection_pattern(repeated)
        out = torch.empty(model.n_layers, model.n_heads)
        for layer in range(model.n_layers):
            pat = cache.site("pattern", layer).float()
            out[layer] = ((pat * det.to(pat.device)[:, None]).sum((-2, -1)) / pat.shape[-1]).mean(0).cpu()
        return out
    return attention_scores(model, fresh, induction_targets(repeated))


ATTENTION_N, ATTENTION_HALF = 200, 50  # repeated-token sequences and half length of the attention scores


FV_METHOD = "exact"  # ``fv_scores`` (exact patching of the final token)


def attention_key(seed: int, protocol=None) -> dict:
    """What the attention scores depend on (besides the model): the stage key of "attention"."""
    return {"n": ATTENTION_N, "half": ATTENTION_HALF, "seed": int(seed),
            "induction": Protocol.make(protocol).induction, "columns": "baseline+sem"}


def fv_key(task: str, k: int, n_clean: int, n_corrupt: int, seed: int, protocol=None) -> dict:
    """What one task's FV scores depend on (besides the model): the stage key of "fv-<task>"."""
    p = Protocol.make(protocol)
    return {"task": str(task), "k": int(k), "n_clean": int(n_clean), "n_corrupt": int(n_corrupt),
            "seed": int(seed), "method": FV_METHOD,
            "protocol": {f: getattr(p, f) for f in ("bos", "corrupt", "corrupt_prompts", "test_fraction")}}


def fv_stage_name(task: str) -> str:
    return f"fv-{task}"


def _read_fv(stage) -> pd.DataFrame:
    return pd.read_csv(stage.file("fv.csv"), dtype={"task": str})


def score_heads(model, tasks: dict, res: ResultsDir, k: int = 10, n_clean: int = 100, n_corrupt: int = 25,
                seed: int = 0, log=print, protocol=None) -> tuple[pd.DataFrame, Any]:
    """heads.csv (attention scores + FV scores over ``tasks``) and fv_per_task.csv in ``res``.

    Stages (each reused when it finished before with exactly its key, else (re)computed; one line each
    to ``log``): "attention" (key ``attention_key(seed)``: attention.csv) and, per task, "fv-<task>"
    (key ``fv_key(...)``: fv.csv with task, layer, head, score, sem). A killed run keeps every stage
    finished before the kill. heads.csv and fv_per_task.csv are rebuilt from the stages on every run.
    ``protocol``: an ``iclscope.tasks.Protocol`` (default the published one). heads.csv gains ``fv_sem``: the
    standard error of a head's FV score (the larger of the spread over tasks / sqrt(tasks) and the
    prompts' standard error carried through the mean over tasks).
    Returns (heads table, per-task FV table)."""
    protocol = Protocol.make(protocol)
    st = res.stage("attention", attention_key(seed, protocol))
    log("  " + st.describe())
    if st.done:
        table = st.read_table("attention.csv")
    else:
        t0 = time.time()
        table = attention_table(model, n=ATTENTION_N, half=ATTENTION_HALF, seed=seed, induction=protocol.induction)
        st.write_table("attention.csv", table)
        st.finish()
        table = st.read_table("attention.csv")  # what a rerun reads back: the same numbers either way
        log(f"  induction / previous-token / duplicate scores: {time.time() - t0:.1f} s")
    per_task = []
    for name, task in tasks.items():  # one task at a time: finished tasks stay written
        s = res.stage(fv_stage_name(name), fv_key(name, k, n_clean, n_corrupt, seed, protocol))
        log("  " + s.describe())
        if s.done:
            per_task.append(_read_fv(s))
            continue
        t1 = time.time()
        pairs = fv_prompts(model, [task], k=k, n_clean=n_clean, n_corrupt=n_corrupt, seed=seed, protocol=protocol,
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
    sem_wide = long.pivot_table(index=["layer", "head"], columns="task", values="sem")
    n_tasks = wide.shape[1]
    prompt_sem = np.sqrt((sem_wide ** 2).sum(axis=1)) / n_tasks
    task_sem = wide.std(axis=1, ddof=1) / np.sqrt(n_tasks) if n_tasks > 1 else prompt_sem * 0
    table["fv_sem"] = np.fmax(prompt_sem.to_numpy(), task_sem.fillna(0).to_numpy())
    res.write_table("heads.csv", table)
    return table, long


def score_grid(table: pd.DataFrame, col: str, model) -> torch.Tensor:
    g = torch.full((model.n_layers, model.n_heads), float("nan"))
    g[torch.tensor(table.layer.to_numpy()), torch.tensor(table["head"].to_numpy())] = torch.tensor(table[col].to_numpy(copy=True), dtype=torch.float32)
    return g

