"""Tasks and prompts for a model: which tasks (word tasks from a folder, else synthetic token tasks),
the shots, the evaluation and copying prompts, and the split into scoring and evaluation tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import IclscopeError
from ...tasks.core import Task, TokenTask, build_prompts, build_token_prompts, has_tokenizer, load_tasks
from ...tasks.protocol import Protocol
from ...tasks.synthetic import synthetic_token_tasks


FRACTIONS = (0.0, 0.01, 0.03, 0.05, 0.07, 0.09, 0.15, 0.20)


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
        if not has_tokenizer(model.tokenizer) and any(isinstance(t, Task) for t in tasks.values()):
            raise IclscopeError(f"{tasks_dir} holds word tasks, but the model has no tokenizer; leave --tasks out "
                                f"to use the built-in synthetic token tasks")
        return tasks
    lay = token_layout(model)
    return {t.name: t for t in synthetic_token_tasks(lay.get("n_tasks", n_tasks), lay["n_words"],
                                                     seed=lay.get("task_seed", seed), word_offset=lay["word_offset"])}


def build_eval_prompts(model, task, k: int, n: int, seed: int, protocol=None):
    """n k-shot prompts of ``task`` for ``model``; word tasks start with one BOS as ``protocol.bos`` says
    (default: the published protocol; the model's BOS id for tokenizers without a BOS token)."""
    if isinstance(task, TokenTask):
        lay = token_layout(model)
        return build_token_prompts(task, k=k, n=n, seed=seed, sep_id=lay["sep_id"], bos_id=lay["bos_id"],
                                   pad_id=lay["pad_id"])
    proto = Protocol.make(protocol)
    return build_prompts(task, model.tokenizer, k=k, n=n, seed=seed, add_bos=proto.add_bos,
                         bos_id=model.bos_token_id)


def copy_prompts(model, n: int, seed: int) -> dict:
    """For a model trained by iclscope on the token mixture: prompts of a fresh random mapping whose query
    repeats a demonstration ("copy:fresh_repeat"), answerable only by copying (the induction route),
    beside the task prompts with novel queries (the FV route). Other models: none."""
    lay = (getattr(model, "meta", {}) or {}).get("token_layout")
    if not lay or "k" not in lay:
        return {}
    from ...data.mixture import MixtureConfig, MixtureData
    data = MixtureData(MixtureConfig(n_words=lay["n_words"], n_tasks=lay["n_tasks"], task_seed=lay["task_seed"],
                                     k=lay["k"]))
    batch = data.condition("fresh_repeat", n, torch.Generator().manual_seed(seed))
    return {"copy:fresh_repeat": batch.to_prompt_batch("copy:fresh_repeat")}


def _fv_kwargs(model, tasks) -> dict:
    if any(isinstance(t, TokenTask) for t in tasks.values()):
        lay = token_layout(model)
        return {"sep_id": lay["sep_id"], "bos_id": lay["bos_id"], "pad_id": lay["pad_id"]}
    return {}


def _names(what: str, given, tasks: dict) -> list[str] | None:
    if given is None:
        return None
    names = [given] if isinstance(given, str) else list(given)
    if not names or not all(isinstance(n, str) for n in names):
        raise IclscopeError(f"{what}: give a non-empty list of task names, got {given!r}")
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise IclscopeError(f"{what}: unknown task(s) {', '.join(unknown)} (known: {', '.join(sorted(tasks))})")
    return sorted(dict.fromkeys(names))


def split_tasks(tasks: dict, score_tasks=None, eval_tasks=None) -> tuple[dict, dict, bool]:
    """(scoring tasks, evaluation tasks, disjoint?).

    Default: the alphabetical first half of the names scores, the second half evaluates (every task does
    both with fewer than 4). ``score_tasks`` / ``eval_tasks``: lists of names chosen by the user; when only
    one is given the other is the rest (or the same list when nothing is left). Unknown names are refused
    in one line naming them."""
    s, e = _names("score_tasks", score_tasks, tasks), _names("eval_tasks", eval_tasks, tasks)
    if s is None and e is None:
        names = sorted(tasks)
        if len(names) < 4:
            return tasks, tasks, False
        half = len(names) // 2
        return {n: tasks[n] for n in names[:half]}, {n: tasks[n] for n in names[half:]}, True
    if s is None:
        s = [n for n in sorted(tasks) if n not in e] or e
    if e is None:
        e = [n for n in sorted(tasks) if n not in s] or s
    return {n: tasks[n] for n in s}, {n: tasks[n] for n in e}, not (set(s) & set(e))


def default_shots(model, k: int | None) -> int:
    """10 (the study's), or the k an iclscope token model was trained with."""
    if k is not None:
        return k
    lay = (getattr(model, "meta", {}) or {}).get("token_layout") or {}
    return int(lay.get("k", 10))

