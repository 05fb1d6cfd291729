"""The ablation study: mean-ablate the top heads of each ranking (with exclusion) and random heads, and
measure few-shot accuracy on the evaluation tasks."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import torch

from ... import Ablate
from ...evaluate import icl_accuracy
from ...heads import ranked_heads
from ...report.figures import ablation_panel, save_figure
from .scoring import score_grid
from .tasks import FRACTIONS


def ablation_study(model, eval_prompts: dict, table: pd.DataFrame, fractions=FRACTIONS, how: str = "mean",
                   positions: str = "final", exclusion: float = 0.02, random_seeds: int = 5, log=print) -> pd.DataFrame:
    """Few-shot accuracy with the top-k heads ablated, for k a fraction of all heads.

    Rankings: induction, fv, induction with exclusion (the top ``exclusion`` fraction by FV score dropped
    from the candidates first), fv with exclusion (likewise by induction score), and random heads over
    ``random_seeds`` seeds. Mean ablation uses the task-agnostic mean of each head's output at the final
    position over every evaluation prompt (as in the study); ``how="zero"`` zero-ablates;
    ``positions="all"`` ablates every position (with the mean over positions)."""
    n_total = model.n_layers * model.n_heads
    ind, fv = score_grid(table, "induction", model), score_grid(table, "fv", model)
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
        from ...models import head_means
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

