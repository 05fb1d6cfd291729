"""Heads as (layer, head) pairs: checking a list against a model, every head, and rankings by a score.

Everything outside ``models/`` names heads this way; these are the one implementation of the lists
and rankings the scorers, the ablation study, the comparison and the training lab's clamps use.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .errors import IclscopeError
from .sites import Head


def all_heads(model) -> list[Head]:
    """Every head of ``model`` (anything with n_layers, n_heads), layer by layer."""
    return [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]


def check_layer(layer, model, what: str) -> int:
    """``layer`` as an int in range for ``model``; an IclscopeError naming ``what`` otherwise."""
    try:
        layer = int(layer)
    except (TypeError, ValueError):
        raise IclscopeError(f"{what}: a layer is an integer, got {layer!r}") from None
    if not 0 <= layer < model.n_layers:
        raise IclscopeError(f"{what}: layer {layer} is out of range: the model has {model.n_layers} layers "
                            f"(0..{model.n_layers - 1})")
    return layer


def check_heads(heads: Iterable | None, model, what: str, empty_ok: bool = True) -> list[Head]:
    """``heads`` as a list of (layer, head) int pairs in range for ``model``; an IclscopeError naming
    ``what`` and the culprit otherwise."""
    if heads is None:
        raise IclscopeError(f"{what} needs heads=[(layer, head), ...]")
    out = []
    for lh in heads:
        try:
            layer, head = (int(v) for v in lh)
        except (TypeError, ValueError):
            raise IclscopeError(f"{what}: a head is a (layer, head) pair, got {lh!r}") from None
        check_layer(layer, model, what)
        if not 0 <= head < model.n_heads:
            raise IclscopeError(f"{what}: head {head} is out of range: the model has {model.n_heads} heads "
                                f"per layer (0..{model.n_heads - 1})")
        out.append((layer, head))
    if not out and not empty_ok:
        raise IclscopeError(f"{what}: the list of heads is empty")
    return out


def ranked_heads(scores: torch.Tensor, exclude: Sequence[Head] | None = None) -> list[Head]:
    """Every head by decreasing score (ties: lower layer, then lower head first), without ``exclude``.

    scores: (n_layers, n_heads); NaN ranks last."""
    H = scores.shape[1]
    order = scores.detach().flatten().nan_to_num(float("-inf")).argsort(descending=True, stable=True).tolist()
    skip = {tuple(map(int, h)) for h in (exclude or [])}
    return [(i // H, i % H) for i in order if (i // H, i % H) not in skip]


def top_heads(scores: torch.Tensor, k: int, exclude: Sequence[Head] | None = None) -> list[Head]:
    """The ``k`` highest-scoring heads (see ``ranked_heads``). scores: (n_layers, n_heads)."""
    if k < 0:
        raise IclscopeError(f"top_heads: k must be >= 0, got {k}")
    return ranked_heads(scores, exclude)[:k]


__all__ = ["all_heads", "check_heads", "check_layer", "ranked_heads", "top_heads"]
