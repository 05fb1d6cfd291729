"""Readouts: what a model's logits or attention patterns say about the answer.

The one place for these measures. Plain functions on tensors (no model imports), so that the trainer,
the experiments and the scores read a model's output the same way. The API is stable:

    answer_rank(logits, answers)     (B,) int64   rank of the answer among the vocabulary, 0 = top
    answer_correct(logits, answers)  (B,) bool    the answer is the top-1 token
    answer_prob(logits, answers)     (B,) float32 softmax probability of the answer
    answer_loss(logits, answers)     (B,) float32 cross-entropy of the answer (reduction="mean": a scalar)
    per_member_mean(values, R)       (R, ...)     means per ensemble member of an (R*B, ...) batch
    induction_strength(rows, correct_pos, wrong_pos, valid=None, groups=None)
                                     (H,) or (groups, H): attention to the correct label minus the wrong ones
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["answer_rank", "answer_correct", "answer_prob", "answer_loss", "per_member_mean", "induction_strength"]


def answer_rank(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """(B,) int64 rank of each answer among the vocabulary: 0 = top.

    logits: (B, V) at the answer position; answers: (B,) int64 token ids. Tokens with a higher logit
    come first, and so do tied tokens with a lower id (the tie rule of ``torch.argmax``, so rank 0 is
    exactly ``answer_correct``). Compared in the logits' own dtype."""
    ans = answers.to(logits.device)
    a = logits.gather(-1, ans[:, None])  # (B, 1)
    ids = torch.arange(logits.shape[-1], device=logits.device)
    ahead = (logits > a) | ((logits == a) & (ids[None] < ans[:, None]))
    return ahead.sum(-1)


def answer_correct(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the answer is the top-1 token of logits (B, V) (``argmax``: the lowest id among tied
    maxima). Equal to ``answer_rank(...) == 0`` for finite logits, without the (B, V) comparison."""
    return logits.argmax(-1) == answers.to(logits.device)


def answer_prob(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """(B,) float32 P(answer): softmax over the vocabulary of logits (B, V), taken in float32."""
    return torch.softmax(logits.float(), -1).gather(-1, answers[:, None].to(logits.device))[:, 0]


def answer_loss(logits: torch.Tensor, answers: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """(B,) float32 cross-entropy -log P(answer) of logits (B, V), taken in float32. Differentiable.
    ``reduction="mean"`` gives the batch mean as a scalar, reduced by ``F.cross_entropy`` itself (its
    last bits can differ from ``answer_loss(...).mean()``)."""
    return F.cross_entropy(logits.float(), answers.to(logits.device), reduction=reduction)


def per_member_mean(values: torch.Tensor, R: int) -> torch.Tensor:
    """(R, ...) the mean of each ensemble member's rows.

    values: (R*B, ...) where rows r*B .. (r+1)*B - 1 belong to member r (the layout of an ensemble's
    batch, ``TinyModel`` with R seeds). R = 1 gives (1, ...)."""
    return values.reshape(R, -1, *values.shape[1:]).mean(1)


def induction_strength(pattern_rows: torch.Tensor, correct_pos: torch.Tensor, wrong_pos: torch.Tensor,
                       valid: torch.Tensor | None = None, groups: int | None = None) -> torch.Tensor:
    """How much more each head attends to the correct label than to the wrong ones.

    pattern_rows: (B, H, T) each head's attention row at the query (keys on the last axis).
    correct_pos: (B,) int64 key position of the correct label.
    wrong_pos: (B, P) int64 key positions of the wrong labels; their attention is averaged.
    Positions index T as Python does (a negative one counts from the end): to skip sequences without a
    correct label in context, pass positions clamped to >= 0 and ``valid``.
    valid: (B,) bool, the sequences to average over (None: all); a member with none valid gives 0.
    groups: None gives (H,), the mean over the batch; R gives (R, H), the mean of each ensemble member's
        rows (``per_member_mean`` layout).

    Per sequence the strength is attention(correct) - mean_j attention(wrong_j), in [-1, 1]; an ideal
    label-induction pattern of strength s (s on the correct label, 1-s on the one wrong label) gives 2s - 1.
    The training lab's metric passes clamped positions, all wrong labels, ``valid = correct_pos >= 0`` and
    ``groups = R``; ``experiments.lab.additivity`` passes the raw positions of the first wrong label only.
    """
    B, H, _ = pattern_rows.shape
    rows = torch.arange(B, device=pattern_rows.device)
    to_correct = pattern_rows[rows, :, correct_pos]  # (B, H)
    to_wrong = torch.stack([pattern_rows[rows, :, wrong_pos[:, j]] for j in range(wrong_pos.shape[1])]).mean(0)
    diff = to_correct - to_wrong  # (B, H)
    if valid is None:
        return diff.mean(0) if groups is None else diff.reshape(groups, -1, H).mean(1)
    w = valid.float()[:, None]  # (B, 1)
    g = 1 if groups is None else groups
    out = (diff * w).reshape(g, -1, H).sum(1) / w.reshape(g, -1).sum(1).clamp(min=1)[:, None]
    return out[0] if groups is None else out
