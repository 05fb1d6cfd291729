"""Attention-pattern scores: how much each head attends where an ideal head of a kind would.

All heads come from one forward pass per batch (patterns recorded for every layer). A score is the
mean, over the query positions that *have* a target (target >= 0), of the attention paid to the target
key; positions without one (a first occurrence, BOS) are not counted.

- induction: target = the position right after the previous occurrence of the query's token
  (``iclscope.patterns.induction_targets``);
- previous-token: target = the position before the query (from position ``first`` on, so that BOS or
  a first token can be skipped);
- duplicate-token: target = the previous occurrence of the query's token itself.

``induction_scores(..., definition="head_detector")`` is TransformerLens's head_detector definition
instead (docs/protocol.md): per sequence, the attention summed over EVERY (query i, key j) with
``ids[j-1] == ids[i]``, ``1 <= j <= i`` (every earlier duplicate + 1, not only the most recent), divided
by the sequence length T, then averaged over sequences. On [BOS, r, r] (T = 1 + 2 half, distinct r) it
equals iclscope's score times half / T.

Token identity comes from ``ids`` (B, T), which defaults to the token ids; for vector-input models pass
the ids of the vectors (e.g. exemplar indices).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import IclscopeError
from ..patterns import induction_targets


def attention_scores(model, inputs: Any, targets: torch.Tensor, layers=None, groups: int = 1) -> torch.Tensor:
    """Mean attention from each query position to its target key.

    inputs: anything ``model.run`` takes, batch B, length T. targets: (B, T) int64, -1 = not counted.
    groups: split the batch into this many equal groups of rows scored separately (the members of an
    ensemble model).
    Returns (n_layers, n_heads) float32, or (groups, n_layers, n_heads) when groups > 1 (NaN for layers
    not requested, or where no query counts).
    """
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    with torch.no_grad():
        _, cache = model.run(inputs, record=["pattern"], layers=layers)
    out = torch.full((groups, model.n_layers, model.n_heads), float("nan"))
    valid = (targets >= 0).view(groups, -1, targets.shape[-1])  # (G, B/G, T)
    n = valid.sum((1, 2)).float()  # (G,)
    idx = targets.clamp(min=0)
    for layer in layers:
        pat = cache.site("pattern", layer).float()  # (B, H, T, T)
        at = pat.gather(-1, idx.to(pat.device)[:, None, :, None].expand(-1, pat.shape[1], -1, 1))[..., 0]  # (B, H, T)
        at = at.view(groups, -1, *at.shape[1:])  # (G, B/G, H, T)
        total = (at * valid.to(pat.device)[:, :, None]).sum((1, 3)).cpu()  # (G, H)
        out[:, layer] = torch.where(n[:, None] > 0, total / n.clamp(min=1)[:, None], torch.tensor(float("nan")))
    return out if groups > 1 else out[0]


def prev_token_targets(B: int, T: int, first: int = 1) -> torch.Tensor:
    """(B, T): i-1 for query positions i >= max(first, 1), else -1."""
    t = torch.arange(T) - 1
    t[: max(first, 1)] = -1
    return t.expand(B, T).clone()


def duplicate_targets(ids: torch.Tensor) -> torch.Tensor:
    """(B, T): the most recent earlier position holding the same id, or -1."""
    B, T = ids.shape
    same = (ids[:, :, None] == ids[:, None, :]) & torch.ones(T, T, dtype=torch.bool, device=ids.device).tril(-1)
    pos = torch.arange(T, device=ids.device)
    return torch.where(same, pos, torch.full_like(pos, -1)).amax(-1)


def _ids(inputs, ids):
    if ids is not None:
        return ids
    if isinstance(inputs, torch.Tensor):
        return inputs
    return inputs["tokens"] if isinstance(inputs, dict) else inputs.tokens


INDUCTION_DEFINITIONS = ("iclscope", "head_detector")


def induction_scores(model, inputs, ids: torch.Tensor | None = None, layers=None,
                     definition: str = "iclscope") -> torch.Tensor:
    """(n_layers, n_heads): attention to the token after the previous occurrence of the current token.

    definition: ``"iclscope"`` (mean over the query positions that have a target of the attention on the
    token after the most recent previous occurrence) or ``"head_detector"`` (TransformerLens: summed
    attention on every earlier duplicate + 1 over all rows, divided by T; see the module docstring)."""
    if definition == "iclscope":
        return attention_scores(model, inputs, induction_targets(_ids(inputs, ids)), layers)
    if definition == "head_detector":
        return head_detector_induction_scores(model, inputs, ids, layers)
    raise IclscopeError(f"induction definition {definition!r}: choose from {', '.join(INDUCTION_DEFINITIONS)}")


def induction_detection_pattern(ids: torch.Tensor) -> torch.Tensor:
    """(B, T, T) float: 1 at (query i, key j) when ``ids[j-1] == ids[i]`` and ``1 <= j <= i`` (TransformerLens's
    induction detection pattern: the duplicate-token pattern shifted one key to the right, lower-triangular)."""
    B, T = ids.shape
    dup = (ids[:, :, None] == ids[:, None, :]) & torch.ones(T, T, dtype=torch.bool, device=ids.device).tril(-1)
    det = torch.zeros(B, T, T, dtype=torch.bool, device=ids.device)
    det[:, :, 1:] = dup[:, :, :-1]  # key j is marked when key j-1 is an earlier duplicate of query i
    return (det & torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()).float()


def head_detector_induction_scores(model, inputs, ids: torch.Tensor | None = None, layers=None) -> torch.Tensor:
    """(n_layers, n_heads): TransformerLens head_detector's induction score, averaged over the batch (NaN for
    layers not requested). Sequences are taken as unpadded (every position counts in T)."""
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    tok = _ids(inputs, ids)
    with torch.no_grad():
        _, cache = model.run(inputs, record=["pattern"], layers=layers)
    det = induction_detection_pattern(tok)  # (B, T, T)
    out = torch.full((model.n_layers, model.n_heads), float("nan"))
    for layer in layers:
        pat = cache.site("pattern", layer).float()  # (B, H, T, T)
        per_seq = (pat * det.to(pat.device)[:, None]).sum((-2, -1)) / pat.shape[-1]  # (B, H)
        out[layer] = per_seq.mean(0).cpu()
    return out


def prev_token_scores(model, inputs, first: int = 1, layers=None) -> torch.Tensor:
    """(n_layers, n_heads): attention to the previous position, from position ``first`` on."""
    B, T = _ids(inputs, None).shape
    return attention_scores(model, inputs, prev_token_targets(B, T, first), layers)


def duplicate_token_scores(model, inputs, ids: torch.Tensor | None = None, layers=None) -> torch.Tensor:
    """(n_layers, n_heads): attention to the previous occurrence of the current token."""
    return attention_scores(model, inputs, duplicate_targets(_ids(inputs, ids)), layers)
