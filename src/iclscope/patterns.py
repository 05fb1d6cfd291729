"""Ideal attention patterns and the token bookkeeping they need.

Shapes: B batch, T sequence length. A pattern is row-stochastic over keys: pattern[..., q, k] is the
attention paid by query position q to key position k, with k <= q (causal).
"""

from __future__ import annotations

import torch


def previous_token_pattern(T: int, device=None, strength: float = 1.0) -> torch.Tensor:
    """The ideal previous-token pattern.

    Returns (T, T): row i puts `strength` on i-1 and spreads 1-strength evenly over the other causal
    positions 0..i; row 0 attends to itself.
    """
    targets = torch.arange(T, device=device) - 1
    targets[0] = 0
    return targeted_pattern(targets, T, strength)


def targeted_pattern(targets: torch.Tensor, T: int, strength: float = 1.0) -> torch.Tensor:
    """Rows that put `strength` on a target key and spread the rest over the other causal keys.

    targets: (..., T) int64, the key position for each query row (-1: no target; that row is uniform).
    Returns (..., T, T) float32.
    """
    q = torch.arange(T, device=targets.device)
    causal = (q[None, :] <= q[:, None]).float()  # (T, T) [query, key]
    n_causal = causal.sum(-1)  # (T,)
    has = targets >= 0
    onehot = torch.nn.functional.one_hot(targets.clamp(min=0), T).float() * has[..., None]
    others = (causal - onehot).clamp(min=0)
    n_others = (n_causal - has.float()).clamp(min=1)
    rest = (1.0 - strength) * others / n_others[..., None]
    # rows with a target: strength on it, rest over the others; a row whose only causal key is its
    # target puts everything there. Rows without a target: uniform over the causal keys.
    alone = has & (n_causal - 1 == 0)
    pattern = torch.where(has[..., None], strength * onehot + rest, causal / n_causal[:, None])
    return torch.where(alone[..., None], onehot, pattern)


def induction_targets(tokens: torch.Tensor) -> torch.Tensor:
    """Where an ideal induction head attends.

    tokens: (B, T) int64. Returns (B, T) int64: for query position i, j+1 where j < i is the most
    recent earlier position holding the same token as position i; -1 where the token has not occurred
    before, or where j+1 == i (the token right before: attending to itself is not induction).
    """
    B, T = tokens.shape
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, Tq, Tk)
    earlier = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril(-1)
    match = same & earlier
    pos = torch.arange(T, device=tokens.device)
    last = torch.where(match, pos[None, None, :], torch.full_like(pos, -1)[None, None, :]).amax(-1)
    target = torch.where(last >= 0, last + 1, last)
    return torch.where(target == pos[None, :], torch.full_like(target, -1), target)
