"""What one checkpoint scores: every head's induction, previous-token, duplicate and FV scores (exactly
those of ``iclscope atlas``, FV over the scoring half of the tasks) and first-token few-shot accuracy on
the evaluation half (plus copying prompts for testbed models), written into the checkpoint's folder.
One model in memory at a time; a folder finished with done.json is read, never recomputed."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from ...report import ResultsDir
from ..atlas import build_eval_prompts, copy_prompts, default_shots, default_tasks, score_heads, split_tasks
from .checkpoints import Checkpoint
from .reuse import find_reusable, reuse_accuracy, reuse_scores


def _arch_of(model) -> dict:
    return {"family": model.family, "n_layers": model.n_layers, "n_heads": model.n_heads, "d_model": model.d_model}


def score_checkpoint(ck: Checkpoint, folder: str | Path, tasks_dir=None, k: int | None = None, n_clean: int = 100,
                     n_corrupt: int = 25, n_eval: int = 50, seed: int = 0, reuse: Sequence[Path] = (),
                     dtype=None, device=None, log=print) -> dict:
    """Scores and accuracy of one checkpoint into ``folder``; returns its done.json record. A folder that
    is already done is read, not recomputed."""
    folder = Path(folder)
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    from ... import load

    model = load(ck.spec, revision=ck.revision, dtype=dtype, device=device)
    try:
        k = default_shots(model, k)
        tasks = default_tasks(model, tasks_dir)
        score_t, eval_t, disjoint = split_tasks(tasks)
        cfg = {"command": "dynamics-checkpoint", "model": ck.spec, "revision": ck.revision, "tasks": str(tasks_dir),
               "task_names": sorted(tasks), "score_tasks": sorted(score_t), "eval_tasks": sorted(eval_t), "k": k,
               "n_clean": n_clean, "n_corrupt": n_corrupt, "n_eval": n_eval, "seed": seed}
        res = ResultsDir(folder, cfg)
        src = find_reusable(reuse, cfg) if reuse else None
        if src and not (res.has("heads.csv") and res.has("fv_per_task.csv")):
            reuse_scores(src, res, sorted(score_t))
            log(f"  scores reused from {src['path']} ({src['command']})")
        score_heads(model, score_t, res, k, n_clean, n_corrupt, seed, log=lambda *a: None)
        if not res.has("accuracy.csv"):
            acc = reuse_accuracy(src, n_eval)
            if acc is None:
                from ...evaluate import icl_accuracy
                prompts = {n: build_eval_prompts(model, t, k, n_eval, seed + 1) for n, t in eval_t.items()}
                prompts.update(copy_prompts(model, n_eval, seed + 1))
                acc = pd.DataFrame([{"task": n, "accuracy": icl_accuracy(model, b)["accuracy"]}
                                    for n, b in prompts.items()])
            res.write_table("accuracy.csv", acc)
        record = {"name": ck.name, "model": ck.spec, "revision": ck.revision, "step": ck.step,
                  "sequences": ck.sequences, "tokens": ck.tokens, "arch": _arch_of(model),
                  "disjoint_tasks": disjoint, "reused_from": str(src["path"]) if src else None,
                  "seconds": round(time.time() - t0, 2)}
    finally:
        del model
        gc.collect()
    tmp = done.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(done)  # written last: a folder without done.json is unfinished
    return record
