"""The one Batch protocol: every batch kind says what the model takes and where the answers are.

A batch (``tasks.PromptBatch``, ``data.synthetic.FewShotBatch``, ``data.mixture.TokenBatch``) has
``len(batch)`` rows and ``batch.model_inputs() -> dict`` of (B, ...) tensors, the keyword inputs of
``Model.run`` (``tokens`` or ``input_ids``, optional ``attention_mask``, the tiny model's ``vectors``
and ``vector_mask``). ``Model.run`` takes a batch directly; ``chunks`` cuts one into pieces for
batched evaluation.
"""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch


@runtime_checkable
class Batch(Protocol):
    def __len__(self) -> int: ...

    def model_inputs(self) -> dict[str, torch.Tensor]: ...


def rows(batch: Batch, sl: slice, device=None) -> dict[str, torch.Tensor]:
    """``batch.model_inputs()`` for rows ``sl``, on ``device`` (default: where they are)."""
    return {k: (v[sl] if device is None else v[sl].to(device)) for k, v in batch.model_inputs().items()}


def chunks(batch: Batch, batch_size: int, device=None) -> Iterator[tuple[dict[str, torch.Tensor], slice]]:
    """(inputs, slice) for consecutive pieces of at most ``batch_size`` rows."""
    N = len(batch)
    for i in range(0, N, batch_size):
        sl = slice(i, min(N, i + batch_size))
        yield rows(batch, sl, device), sl


__all__ = ["Batch", "chunks", "rows"]
