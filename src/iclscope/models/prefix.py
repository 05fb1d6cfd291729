"""The final-token path's data: a prompt batch's cached keys/values, and a view of it for B' rows.

``Model.prefix_cache(inputs)`` fills a ``PrefixCache`` from one full pass; ``Model.run_last_token(prefix,
rows)`` (or ``Model.run(..., prefix=PrefixRows(...))``) runs only the final token of each row against it.
Interventions at the final position are exact there: earlier positions cannot see the final token.
"""

from __future__ import annotations

import torch

from ..errors import IclscopeError


class PrefixCache:
    """Every layer's keys and values for positions 0..T-2 of a batch of B prompts, from one full pass
    (``Model.prefix_cache``), so that the final token can be re-run alone (``Model.run_last_token``).

    Attributes: kv (per layer (keys, values), the family's own layout, taken before the k/v hooks);
    last (the inputs at the final position, each (B, 1, ...)); attention_mask ((B, T) or None);
    position_ids ((B, 1) position of the final token, or None); logits ((B, vocab) final-position
    logits of the full pass); seq_len (T).
    """

    def __init__(self, kv, last: dict, attention_mask, position_ids, logits: torch.Tensor, seq_len: int):
        self.kv, self.last, self.attention_mask, self.position_ids = kv, last, attention_mask, position_ids
        self.logits, self.seq_len = logits, seq_len

    def __len__(self) -> int:
        return int(self.last["tokens"].shape[0])

    def rows(self, rows=None) -> torch.Tensor:
        """Normalise a row map (length-B' prefix rows) to an int64 tensor; None = every prompt once."""
        B = len(self)
        if rows is None:
            return torch.arange(B)
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1).cpu()
        if rows.numel() == 0:
            raise IclscopeError("run_last_token: rows is empty")
        if int(rows.min()) < 0 or int(rows.max()) >= B:
            raise IclscopeError(f"run_last_token: rows name prompts beyond the prefix cache's {B}")
        return rows


class PrefixRows:
    """A view of a PrefixCache for B' rows (row i continues prompt rows[i]); what ``_forward`` gets."""

    def __init__(self, cache: PrefixCache, rows: torch.Tensor):
        self.cache, self.rows = cache, rows
        self.same = bool((rows == rows[0]).all())  # one prompt for every row: expand (a view), no copy

    def select(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """t[rows] along the batch axis (an expanded view when every row uses one prompt)."""
        if t is None:
            return None
        if self.same:
            return t[int(self.rows[0])].unsqueeze(0).expand(len(self.rows), *t.shape[1:])
        return t.index_select(0, self.rows.to(t.device))

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.cache.kv[layer]
        return self.select(k), self.select(v)

    def __len__(self) -> int:
        return len(self.rows)


__all__ = ["PrefixCache", "PrefixRows"]
