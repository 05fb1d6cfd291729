"""Token sequences the head interface and the demo need (the full data module lives in iclscope.data)."""

from __future__ import annotations

import torch


def repeated_tokens(batch: int, half: int, vocab_size: int, generator: torch.Generator,
                    bos_id: int | None = None) -> torch.Tensor:
    """[BOS?, r_1..r_half, r_1..r_half]: (batch, half*2 (+1 with BOS)) int64; r drawn without repeats
    within a half, never equal to BOS."""
    pool = vocab_size - (1 if bos_id is not None else 0)
    scores = torch.rand(batch, pool, generator=generator)
    r = scores.argsort(-1)[:, :half] if pool >= half else torch.randint(0, pool, (batch, half), generator=generator)
    if bos_id is not None:
        r = r + (r >= bos_id).long()  # skip the BOS id
    seq = torch.cat([r, r], 1)
    if bos_id is not None:
        seq = torch.cat([torch.full((batch, 1), bos_id, dtype=torch.long), seq], 1)
    return seq
