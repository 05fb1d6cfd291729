"""Function vectors: the sum of the top FV heads' mean outputs through the output projection, added to
the residual stream at each layer, and their zero-shot accuracy."""

from __future__ import annotations


import pandas as pd
import torch

from ... import AddVector
from ...evaluate import icl_accuracy
from ...heads import ranked_heads
from .scoring import score_grid
from .tasks import build_eval_prompts


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
    heads = ranked_heads(score_grid(table, "fv", model))[:top]
    rows = []
    from ...models import head_means
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


def fv_summary(fvt: pd.DataFrame) -> dict:
    """The best layer for adding the FV and the accuracy change there (means over tasks)."""
    by = fvt.groupby("layer")[["zero_shot_acc", "with_fv_acc", "few_shot_acc"]].mean()
    best = int(by.with_fv_acc.idxmax())
    return {"best_layer": best, "heads": int(fvt.heads.iloc[0]), "zero_shot_acc": float(by.zero_shot_acc[best]),
            "with_fv_acc": float(by.with_fv_acc[best]), "few_shot_acc": float(by.few_shot_acc[best])}

