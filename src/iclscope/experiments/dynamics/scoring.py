"""What one checkpoint scores: every head's induction, previous-token, duplicate and FV scores (exactly
those of ``iclscope atlas``, FV over the scoring half of the tasks) and first-token few-shot accuracy on
the evaluation half (plus copying prompts for testbed models), written into the checkpoint's own results
folder (a ``ResultsDir``). One model in memory at a time.

Reuse by key. The checkpoint folder's stages are those of the atlas ("attention", "fv-<task>") plus
"accuracy" (key: n_eval, k, eval seed, evaluation tasks), each reused when it finished with the same key.
The whole checkpoint is skipped without loading the model when its folder finished with the same
``checkpoint_key`` (recorded in its finished marker); done.json is the record the command reads."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from ... import store
from ...report import ResultsDir
from ...report.results import FINISHED
from ..atlas import build_eval_prompts, copy_prompts, default_shots, default_tasks, score_heads, split_tasks
from .checkpoints import Checkpoint
from .reuse import find_reusable, reuse_accuracy, reuse_scores


def _arch_of(model) -> dict:
    return {"family": model.family, "n_layers": model.n_layers, "n_heads": model.n_heads, "d_model": model.d_model}


def checkpoint_key(ck: Checkpoint, tasks_dir=None, k: int | None = None, n_clean: int = 100, n_corrupt: int = 25,
                   n_eval: int = 50, seed: int = 0, dtype=None) -> dict:
    """Everything one checkpoint's results depend on (the settings as given, before model defaults)."""
    return json.loads(store.dumps_json({
        "model": ck.spec, "revision": ck.revision, "tasks": str(tasks_dir), "k": k, "n_clean": n_clean,
        "n_corrupt": n_corrupt, "n_eval": n_eval, "seed": seed,
        "dtype": None if dtype is None else str(dtype).replace("torch.", "")}))


def finished_record(folder: str | Path, key: dict) -> dict | None:
    """The done.json record of a checkpoint folder that finished with exactly ``key``, else None."""
    try:
        fin = json.loads((Path(folder) / FINISHED).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(fin, dict) or fin.get("key") != key or not isinstance(fin.get("record"), dict):
        return None
    return fin["record"]


def score_checkpoint(ck: Checkpoint, folder: str | Path, tasks_dir=None, k: int | None = None, n_clean: int = 100,
                     n_corrupt: int = 25, n_eval: int = 50, seed: int = 0, reuse: Sequence[Path] = (),
                     dtype=None, device=None, log=print) -> dict:
    """Scores and accuracy of one checkpoint into ``folder``; returns its done.json record. A folder that
    finished with the same settings is read, not recomputed (the model is not even loaded)."""
    folder = Path(folder)
    key = checkpoint_key(ck, tasks_dir, k, n_clean, n_corrupt, n_eval, seed, dtype)
    rec = finished_record(folder, key)
    if rec is not None:
        return rec
    t0 = time.time()
    from ... import load

    model = load(ck.spec, revision=ck.revision, dtype=dtype, device=device)
    try:
        k = default_shots(model, k)
        tasks = default_tasks(model, tasks_dir)
        score_t, eval_t, disjoint = split_tasks(tasks)
        cfg = {"command": "dynamics-checkpoint", "model": ck.spec, "revision": ck.revision, "dtype": key["dtype"],
               "tasks": str(tasks_dir), "task_names": sorted(tasks), "score_tasks": sorted(score_t),
               "eval_tasks": sorted(eval_t)}
        with ResultsDir(folder, cfg, command="dynamics-checkpoint") as res:
            src = find_reusable(reuse, cfg, k=k, n_clean=n_clean, n_corrupt=n_corrupt, seed=seed) if reuse else None
            if src:
                reuse_scores(src, res, sorted(score_t), k=k, n_clean=n_clean, n_corrupt=n_corrupt, seed=seed)
                log(f"  scores reused from {src['path']} ({src['command']})")
            score_heads(model, score_t, res, k, n_clean, n_corrupt, seed, log=lambda *a: None)
            st = res.stage("accuracy", {"n_eval": n_eval, "k": k, "eval_seed": seed + 1, "eval_tasks": sorted(eval_t)})
            if not st.done:
                acc = reuse_accuracy(src, n_eval, k=k, seed=seed, eval_tasks=sorted(eval_t))
                if acc is None:
                    from ...evaluate import icl_accuracy
                    prompts = {n: build_eval_prompts(model, t, k, n_eval, seed + 1) for n, t in eval_t.items()}
                    prompts.update(copy_prompts(model, n_eval, seed + 1))
                    acc = pd.DataFrame([{"task": n, "accuracy": icl_accuracy(model, b)["accuracy"]}
                                        for n, b in prompts.items()])
                st.write_table("accuracy.csv", acc)
                st.finish()
            res.write_table("accuracy.csv", pd.read_csv(st.file("accuracy.csv"), dtype={"task": str}))
            record = {"name": ck.name, "model": ck.spec, "revision": ck.revision, "step": ck.step,
                      "sequences": ck.sequences, "tokens": ck.tokens, "arch": _arch_of(model),
                      "disjoint_tasks": disjoint, "reused_from": str(src["path"]) if src else None,
                      "seconds": round(time.time() - t0, 2)}
            res.write_json("done.json", record)
            res.mark_finished({"key": key, "record": record})  # written last: the checkpoint is complete
    finally:
        del model
        gc.collect()
    return json.loads(store.dumps_json(record))
