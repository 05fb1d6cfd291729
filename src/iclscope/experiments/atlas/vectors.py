"""Function vectors: the sum of the top FV heads' mean outputs through the output projection, added to
the residual stream at each layer, and their zero-shot accuracy.

Convention (``iclscope.tasks.Protocol``; docs/protocol.md): by default, as published, each head's vector
includes the projection bias (the published code applies ``out_proj`` to each head's output alone) and
the FV is added to the OUTPUT of layer L (``resid_post``); ``fv_bias="none"`` / ``fv_layer="input"`` give
iclscope's earlier variant (no bias; the input of layer L, which is the published layer L-1)."""

from __future__ import annotations

import math

import pandas as pd
import torch

from ... import AddVector
from ...evaluate import icl_accuracy
from ...heads import ranked_heads
from ...models.base import head_means
from ...tasks.protocol import Protocol
from .scoring import score_grid
from .tasks import build_eval_prompts


def function_vector(model, means: torch.Tensor, heads: list, bias: str = "full") -> torch.Tensor:
    """Sum over ``heads`` of each head's mean output written into the residual stream. means: (L, H, D).
    -> (d_model,) float32.

    bias="full" (published): out_proj(layer, z with only head h = means[l, h]), the projection's bias b_O
    included once per head (as Todd et al.'s ``compute_function_vector``); bias="none": that minus
    out_proj(layer, 0), the head's own contribution only."""
    if bias not in ("full", "none"):
        from ...errors import IclscopeError
        raise IclscopeError(f"function_vector: bias {bias!r}: choose full or none")
    fv = torch.zeros(model.d_model)
    with torch.no_grad():
        for layer, h in heads:
            z = torch.zeros(model.n_heads, model.d_head, dtype=model.dtype, device=model.device)
            zero = model.out_proj(layer, z) if bias == "none" else 0
            z[h] = means[layer, h].to(model.device, model.dtype)
            fv += (model.out_proj(layer, z) - zero).float().cpu()
    return fv


def function_vectors(model, tasks: dict, table: pd.DataFrame, top: int | None = None, layers=None,
                     n: int = 50, k: int = 10, seed: int = 1, protocol=None) -> pd.DataFrame:
    """For each task and each layer in ``layers`` (default: every layer): an FV from the ``top`` FV heads
    (default 10 % of all heads, at least 3, at most 10, as Todd et al.'s 10 heads) built from the task's
    means over clean k-shot prompts, added at that layer (``protocol.fv_layer``: the output of block L by
    default) at the final position of zero-shot prompts.
    Rows: task, layer, site (resid_post: layer L = output of block L; resid_pre: its input), heads, n,
    zero_shot_acc, with_fv_acc, few_shot_acc."""
    proto = Protocol.make(protocol)
    n_total = model.n_layers * model.n_heads
    top = top or min(10, max(3, round(0.1 * n_total)))
    layers = range(model.n_layers) if layers is None else layers
    heads = ranked_heads(score_grid(table, "fv", model))[:top]
    rows = []
    for name, task in tasks.items():
        few = build_eval_prompts(model, task, k, n, seed, proto)
        zero = build_eval_prompts(model, task, 0, n, seed, proto)
        means = head_means(model, [{"input_ids": few.input_ids.to(model.device),
                                    "attention_mask": few.attention_mask.to(model.device)}], positions=[-1])
        vec = function_vector(model, means, heads, bias=proto.fv_bias).to(model.device, model.dtype)
        zero_acc, few_acc = icl_accuracy(model, zero)["accuracy"], icl_accuracy(model, few)["accuracy"]
        for layer in layers:
            add = AddVector(layer, vec, site=proto.fv_site, positions=[-1])
            rows.append({"task": name, "layer": layer, "site": proto.fv_site, "heads": len(heads), "n": len(zero),
                         "zero_shot_acc": zero_acc,
                         "with_fv_acc": icl_accuracy(model, zero, interventions=[add])["accuracy"],
                         "few_shot_acc": few_acc})
    return pd.DataFrame(rows)


def fv_summary(fvt: pd.DataFrame) -> dict:
    """The best layer for adding the FV and the accuracy change there (means over tasks), with its
    uncertainty: ``gain`` (with-FV minus zero-shot accuracy), ``gain_task_std`` (its spread over tasks),
    ``gain_sem`` (the larger of spread / sqrt(tasks) and the binomial standard error over prompts) and
    ``distinguishable``: False when the gain is not above the across-task spread and 2 sem (then no
    layer is "best": ``best_layer`` is still the argmax, but ``verdict`` says it is noise)."""
    by = fvt.groupby("layer")[["zero_shot_acc", "with_fv_acc", "few_shot_acc"]].mean()
    best = int(by.with_fv_acc.idxmax())
    at = fvt[fvt.layer == best]
    gains = (at.with_fv_acc - at.zero_shot_acc).to_numpy()
    n_tasks = len(gains)
    gain = float(gains.mean())
    spread = float(gains.std(ddof=1)) if n_tasks > 1 else 0.0
    n = int(at["n"].iloc[0]) if "n" in at else 50
    p0, p1 = float(at.zero_shot_acc.mean()), float(at.with_fv_acc.mean())
    binom = math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / max(1, n * n_tasks))
    sem = max(spread / math.sqrt(n_tasks) if n_tasks > 1 else 0.0, binom)
    ok = gain > 0 and gain > spread and gain > 2 * sem
    site = str(at["site"].iloc[0]) if "site" in at else "resid_pre"
    convention = "output" if site == "resid_post" else "input"
    verdict = (f"adding the FV at layer {best} ({convention} of block {best}) raises zero-shot accuracy by "
               f"{gain:.3f} +- {sem:.3f} (sem; spread over tasks {spread:.3f})" if ok else
               f"no layer's gain is distinguishable from zero (not distinguishable: the best, layer {best} ({convention} of block "
               f"{best}), gains {gain:.3f} +- {sem:.3f} (sem) with a spread over tasks of {spread:.3f})")
    return {"best_layer": best, "layer_convention": f"layer L = {convention} of block L ({site})",
            "heads": int(fvt.heads.iloc[0]), "zero_shot_acc": float(by.zero_shot_acc[best]),
            "with_fv_acc": float(by.with_fv_acc[best]), "few_shot_acc": float(by.few_shot_acc[best]),
            "gain": gain, "gain_task_std": spread, "gain_sem": sem, "distinguishable": bool(ok), "verdict": verdict}
