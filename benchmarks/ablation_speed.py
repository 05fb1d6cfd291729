"""The atlas's ablation study: the full-pass evaluation it used to run (``icl_accuracy``, one full forward
pass over every prompt per (ranking, fraction) setting) vs the final-token path (one prefix pass per
task, every distinct head set as batch rows of final-token passes), for the same settings.

    .venv/bin/python benchmarks/ablation_speed.py                 # GPT-2-small-shaped model, 1 task, 20 prompts
    .venv/bin/python benchmarks/ablation_speed.py --prompts 50 --tasks 2

The model has GPT-2 small's shape (12 layers, 12 heads, d_model 768, vocab 50257, n_ctx 1024) with random
weights. ``random:gpt2`` has no vocab option (its shipped tokenizer has 4096 tokens), so the model is
built here from ``random_config`` and wrapped as an ``HFModel`` without a tokenizer; the tasks are the
built-in synthetic token tasks with 10-shot prompts. Settings: the atlas defaults (fractions 0-20 %, 4
rankings + 5 random seeds) with a random score table. The full-pass side reproduces the old loop
exactly (k = 0 computed once per ranking); the fast side computes each distinct head set once. Both give
per-prompt correctness for every setting; they must be identical.
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=1)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from iclscope import Ablate
    from iclscope.evaluate import icl_accuracy
    from iclscope.experiments.atlas.ablation import ablation_settings, final_token_accuracy, task_means
    from iclscope.experiments.atlas.tasks import FRACTIONS, build_eval_prompts, default_tasks
    from iclscope.models.hf.model import HFModel
    from iclscope.models.hf.random import random_config

    cfg = random_config("gpt2", layers=12, heads=12, d_model=768, vocab=50257, n_ctx=1024, bos_id=50256, eos_id=50256)
    torch.manual_seed(0)
    model = HFModel(AutoModelForCausalLM.from_config(cfg).eval(), None, name="random gpt2-small shape")
    tasks = default_tasks(model)
    eps = {t: build_eval_prompts(model, tasks[t], args.shots, args.prompts, 1) for t in sorted(tasks)[:args.tasks]}
    g = torch.Generator().manual_seed(0)
    table = pd.DataFrame([{"layer": l, "head": h, "induction": float(torch.rand(1, generator=g)),
                           "fv": float(torch.rand(1, generator=g))} for l in range(12) for h in range(12)])
    settings, head_sets = ablation_settings(model, table, FRACTIONS, random_seeds=args.seeds)
    T = next(iter(eps.values())).input_ids.shape[1]
    print(f"model: 12 layers x 12 heads, d_model 768, vocab 50257; {len(eps)} task(s) x {args.prompts} prompts "
          f"of {T} tokens ({args.shots}-shot); {len(settings)} settings, {len(head_sets)} distinct head sets; "
          f"torch threads {torch.get_num_threads()}; load {open('/proc/loadavg').read().split()[:3]}")
    mean = task_means(model, eps, "final")

    t0 = time.perf_counter()
    ref, k0 = {}, {}
    for st in settings:  # the old loop: every (ranking, fraction) evaluated in full, k = 0 once per ranking
        key = (st.ranking, st.seed)
        if st.k == 0 and key in k0:
            ref[(key, st.fraction)] = k0[key]
            continue
        ivs = [Ablate(list(st.heads), how="mean", mean=mean, positions=[-1])] if st.k else []
        out = {t: icl_accuracy(model, b, interventions=ivs)["correct"] for t, b in eps.items()}
        ref[(key, st.fraction)] = out
        if st.k == 0:
            k0[key] = out
    t_full = time.perf_counter() - t0

    t0 = time.perf_counter()
    fast = {t: final_token_accuracy(model, b, head_sets, "mean", mean)["correct"] for t, b in eps.items()}
    t_fast = time.perf_counter() - t0

    index = {hs: i for i, hs in enumerate(head_sets)}
    same = all(torch.equal(ref[((st.ranking, st.seed), st.fraction)][t], fast[t][index[st.heads]])
               for st in settings for t in eps)
    acc_full = sum(float(ref[((st.ranking, st.seed), st.fraction)][t].float().mean()) for st in settings for t in eps)
    acc_fast = sum(float(fast[t][index[st.heads]].float().mean()) for st in settings for t in eps)
    print(f"full passes (old):   {t_full:8.1f} s")
    print(f"final-token path:    {t_fast:8.1f} s")
    print(f"ratio:               {t_full / t_fast:8.1f}x")
    print(f"per-prompt correctness identical in every setting: {same} "
          f"(summed accuracy {acc_full:.4f} vs {acc_fast:.4f})")
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}; cpus {os.cpu_count()}")


if __name__ == "__main__":
    main()
